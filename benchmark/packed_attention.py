"""Attention cost of one packed row: `sdpa_packed` (SDPA per sample) vs SDPA under a block-diagonal mask.

A pack of `--tokens` tokens holds k samples of equal length. Plain `sdpa` (and eager) attend over the whole row under
a block-diagonal causal mask, which costs O(L^2) whatever k; `sdpa_packed` cuts the row at `cu_seq_lens` and runs
causal SDPA on each sample, O(sum of l_i^2). The table gives forward + backward time of the attention alone (median of
`--repeats` after one warm-up), for `--heads` query heads and `--kv-heads` key/value heads of `--head-dim`.

    python benchmark/packed_attention.py            # 4096-token pack, k = 1 .. 1024
    python benchmark/packed_attention.py --quick    # a smoke test
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from types import SimpleNamespace

import torch
from _lengths import print_header, print_table
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from longalign_hf.training.packed_attention import packed_sdpa_attention_forward


def block_diagonal_causal_mask(sizes: list[int]) -> torch.Tensor:
    """`[1, 1, L, L]` boolean mask: token i sees token j when both are in the same sample and j <= i."""
    sample = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    causal = torch.ones(len(sample), len(sample), dtype=torch.bool).tril()
    return (causal & (sample[:, None] == sample[None, :]))[None, None]


def time_attention(attention, query, key, value, repeats: int) -> float:
    """Median seconds of forward + backward of `attention(query, key, value)`."""
    times = []
    for _ in range(repeats + 1):  # the first call is a warm-up
        q, k, v = (tensor.detach().requires_grad_() for tensor in (query, key, value))
        started = time.perf_counter()
        attention(q, k, v).sum().backward()
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def measure(tokens: int, samples: int, heads: int, kv_heads: int, head_dim: int, repeats: int) -> dict:
    """Seconds of both attentions over one pack of `tokens` tokens cut into `samples` samples of equal length."""
    sizes = [tokens // samples] * samples
    sizes[-1] += tokens - sum(sizes)
    cu_seq_lens = torch.tensor([0, *torch.tensor(sizes).cumsum(0).tolist()], dtype=torch.int32)
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(1, heads, tokens, head_dim, generator=generator)
    key, value = (torch.randn(1, kv_heads, tokens, head_dim, generator=generator) for _ in range(2))
    module = SimpleNamespace(is_causal=True, num_key_value_groups=heads // kv_heads, training=True)
    mask = block_diagonal_causal_mask(sizes)

    def packed(q, k, v):
        return packed_sdpa_attention_forward(module, q, k, v, None, cu_seq_lens_q=cu_seq_lens)[0]

    def masked(q, k, v):
        return sdpa_attention_forward(module, q, k, v, mask)[0]

    return {
        "samples": samples,
        "sample_tokens": sizes[0],
        "packed": time_attention(packed, query, key, value, repeats),
        "masked": time_attention(masked, query, key, value, repeats),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096, help="tokens in the pack")
    parser.add_argument("--samples", default="1,4,16,64,256,1024", help="comma-separated samples per pack")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--quick", action="store_true", help="a 512-token pack, k = 1, 8, 64, one repeat")
    args = parser.parse_args(argv)
    print_header("benchmark/packed_attention.py", sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.tokens, args.samples, args.repeats = 512, "1,8,64", 1
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        results = [
            measure(args.tokens, int(k), args.heads, args.kv_heads, args.head_dim, args.repeats)
            for k in args.samples.split(",")
        ]
    finally:
        torch.set_num_threads(threads)
    print(
        f"\nAttention forward + backward of one {args.tokens:,}-token pack (fp32, CPU, {args.threads} thread(s); "
        f"{args.heads} query / {args.kv_heads} key-value heads of {args.head_dim}); ms, median of {args.repeats}\n"
    )
    print_table(
        ["samples / pack", "tokens / sample", "sdpa_packed", "sdpa + block-diagonal mask", "mask / packed"],
        [
            [
                str(r["samples"]), str(r["sample_tokens"]), f"{r['packed'] * 1e3:.1f}", f"{r['masked'] * 1e3:.1f}",
                f"{r['masked'] / r['packed']:.2f}x",
            ]
            for r in results
        ],
    )  # fmt: skip
    return results


if __name__ == "__main__":
    main()
