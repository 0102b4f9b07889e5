"""Peak memory of the training loss (forward + backward) at long context: our chunked path vs full logits.

"The loss" is everything after the last hidden state: the LM head projection, the log-probabilities of the labels,
LongAlign's per-sample weighting and the backward pass into the hidden states and the head. Ours is what
`LongAlignSFTTrainer` runs: TRL's chunked log-probabilities (`trl.kernels.ChunkedLogProbFunction`, the fused LM head:
tiles of 4096 tokens x 32768 vocabulary entries) followed by `weighted_nll_sum`. The reference builds the full
`[tokens, vocab]` logits, takes `log_softmax` in fp32 and gathers, as a plain PyTorch / transformers loss does.

On the CPU (default) each measurement runs in a fresh process and reports its peak resident memory (`ru_maxrss`)
above the memory held once the inputs exist, in fp32 with a tiny hidden size: it counts the loss's own tensors.
Full logits at 32k+ tokens and a 128k vocabulary need tens of GiB: sizes whose estimate does not fit in
`--memory-limit-gib` are not run, and the table extrapolates them linearly in tokens from the largest size that ran
(marked `~`). `--jobs N` runs N measurements at a time (each still in its own process, with its own peak; their
memory adds up, so keep the default 1 for sizes near the limit).

`--device cuda` measures on the GPU what training allocates there: bf16 hidden states and head of Llama-3-8B's
hidden size (4096), the peak of `torch.cuda.max_memory_allocated` above the inputs, in one process (the peak
statistics are reset per measurement). A full-logits size that runs out of GPU memory is extrapolated like a
skipped one. Without a CUDA device it prints that it skipped and exits 0.

    python benchmark/loss_memory.py                  # 4k / 8k / 32k / 64k tokens, 128k vocabulary, hidden size 64
    python benchmark/loss_memory.py --device cuda    # the same on the GPU: bf16, hidden size 4096
    python benchmark/loss_memory.py --quick          # a smoke test (small sizes)
    python benchmark/loss_memory.py --quick --jobs 2 # the same, two measurements at a time
    python benchmark/loss_memory.py --chart loss_memory.png

`--chart PATH` (default: no chart) writes a PNG of the table: peak memory of ours (chunked) and of full logits per
token count, on a log scale, each bar labelled with the table's figure (GiB, or MiB when every figure is under 1 GiB);
extrapolated full-logits figures are hatched and marked `~`, and ours carry the table's ours / full ratio.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import resource
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from _charts import command_line, grouped_bars, legend, machine, new_figure, save
from _lengths import print_header, print_table, rss_bytes

TARGET_RATIO_AT_32K = 0.10


def _measure(path: str, tokens: int, vocab: int, hidden: int, device: str = "cpu") -> int:
    """Peak memory (bytes) of one loss forward + backward, above the memory of its inputs."""
    import torch

    from longalign_hf.training.loss import weighted_nll_sum

    cuda = device == "cuda"
    torch.set_num_threads(2)
    dtype = torch.bfloat16 if cuda else torch.float32  # training's dtype on a GPU; fp32 on the CPU
    generator = torch.Generator(device).manual_seed(0)
    with torch.device(device):
        hidden_states = torch.randn(tokens, hidden, generator=generator, dtype=dtype, requires_grad=True)
        head = torch.randn(vocab, hidden, generator=generator, dtype=dtype).mul_(0.02).requires_grad_()
        labels = torch.randint(0, vocab, (tokens,), generator=generator)
        sample_ids = torch.arange(tokens + 1).div(512, rounding_mode="floor")[None]  # samples of 512 tokens
        num_targets = torch.bincount(sample_ids[0, 1:])
        mask = torch.ones(1, tokens, dtype=torch.bool)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = rss_bytes()

    if path == "chunked":
        from trl.kernels import ChunkedLogProbFunction

        log_probs = ChunkedLogProbFunction.apply(hidden_states, head, None, labels, 1.0, 32768, None, 1.0, ())[0]
    else:
        logits = (hidden_states @ head.T).float()
        log_probs = torch.log_softmax(logits, dim=-1).gather(-1, labels[:, None])[:, 0]
    loss = weighted_nll_sum(log_probs[None], mask, sample_ids, num_targets, "sequence") / num_targets.numel()
    loss.backward()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return max(peak - baseline, 0)


def _measure_cuda(path: str, tokens: int, vocab: int, hidden: int) -> int | None:
    """`_measure` on the GPU, in this process; `None` when it runs out of GPU memory."""
    import gc

    import torch

    try:
        return _measure(path, tokens, vocab, hidden, "cuda")
    except torch.cuda.OutOfMemoryError:
        pass
    gc.collect()  # here, once the error and the frames it held are gone
    torch.cuda.empty_cache()
    return None


def _full_logits_estimate(tokens: int, vocab: int, device: str = "cpu") -> int:
    # CPU: logits, their log_softmax and the gradient of each, four fp32 [tokens, vocab] tensors at the peak. GPU:
    # bf16 logits and their gradient, plus the fp32 upcast, its log_softmax and their gradients.
    return (2 * 2 + 3 * 4 if device == "cuda" else 4 * 4) * tokens * vocab


def _measure_in_a_process(path: str, tokens: int, vocab: int, hidden: int) -> int:
    """`_measure` on the CPU in a fresh process, whose peak resident memory is the measurement's alone."""
    command = [sys.executable, __file__, "--worker", path, str(tokens), str(vocab), str(hidden)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])["peak_bytes"]


def run(
    token_counts: list[int], vocab: int, hidden: int, memory_limit_gib: float, device: str = "cpu", jobs: int = 1
) -> list[dict]:
    results = [{"tokens": tokens, "full_oom": False} for tokens in token_counts]
    measurements = []  # (row, path), in the order they run
    for row in results:
        for path in ("chunked", "full"):
            if path == "full" and _full_logits_estimate(row["tokens"], vocab, device) > memory_limit_gib * 2**30:
                row[path], row[f"{path}_measured"] = None, False
            else:
                measurements.append((row, path))
    if device == "cuda":
        for row, path in measurements:
            row[path] = _measure_cuda(path, row["tokens"], vocab, hidden)
            row["full_oom"] |= path == "full" and row[path] is None
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            peaks = list(pool.map(lambda item: _measure_in_a_process(item[1], item[0]["tokens"], vocab, hidden),
                                  measurements))  # fmt: skip
        for (row, path), peak in zip(measurements, peaks):
            row[path] = peak
    for row, path in measurements:
        row[f"{path}_measured"] = row[path] is not None
    measured = [row for row in results if row["full_measured"]]
    for row in results:
        if not row["full_measured"] and measured:
            basis = measured[-1]
            row["full"] = basis["full"] * row["tokens"] / basis["tokens"]
    return results


def chart(results: list[dict], path: str, command: str, setting: str, cuda: bool = False):
    """Draw the table: peak memory of ours and of full logits per token count (log scale); returns the figure.

    `setting` says what was measured (vocabulary, hidden size, dtype), for the title.
    """
    peaks = [row[key] for row in results for key in ("chunked", "full") if row[key] is not None]
    unit, scale, digits = ("GiB", 2**30, 2) if max(peaks) >= 2**30 else ("MiB", 2**20, 0)
    ours = [row["chunked"] / scale for row in results]
    full = [None if row["full"] is None else row["full"] / scale for row in results]
    labels = {
        "ours (chunked)": [
            f"{value:,.{digits}f}" + ("" if row["full"] is None else f"\n{row['chunked'] / row['full']:.3f}x full")
            for value, row in zip(ours, results)
        ],
        "full logits": [
            "" if value is None else f"{'' if row['full_measured'] else '~'}{value:,.{digits}f}"
            for value, row in zip(full, results)
        ],
    }
    figure, (axes,) = new_figure(width=10.5, height=5.2)
    groups = [f"{row['tokens']:,}" for row in results]
    bars = grouped_bars(axes, groups, {"ours (chunked)": ours, "full logits": full}, labels, log=True)
    for bar, row in zip(bars["full logits"], results):
        if not row["full_measured"]:
            bar.set_hatch("//")
            bar.set_alpha(0.45)
    from matplotlib.patches import Patch

    handles, names = axes.get_legend_handles_labels()
    if not all(row["full_measured"] for row in results):
        handles.append(Patch(facecolor=bars["full logits"].patches[0].get_facecolor(), alpha=0.45, hatch="//"))
        names.append("~ full logits, extrapolated\nlinearly in tokens (not run)")
    legend(axes, handles, names)
    target = any(row["tokens"] == 32768 for row in results)
    axes.set_xlabel(
        "tokens in the batch" + (f" (target: ours / full <= {TARGET_RATIO_AT_32K} at 32,768)" if target else "")
    )
    axes.set_ylabel(f"peak memory above the inputs ({unit}, log scale)")
    title = f"Peak memory of the loss, forward + backward: our chunked loss vs full logits\n{setting}, {machine(cuda)}"
    save(figure, path, title, command)
    return figure


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the loss runs")
    parser.add_argument("--tokens", default="4096,8192,32768,65536", help="comma-separated token counts")
    parser.add_argument("--vocab", type=int, default=128256, help="vocabulary size (Llama-3's by default)")
    parser.add_argument(
        "--hidden", type=int, help="hidden size (default 64 on the CPU: the loss, not the model, is measured; 4096 "
        "on a GPU)"
    )  # fmt: skip
    parser.add_argument(
        "--memory-limit-gib", type=float, help="skip full-logits runs estimated above this (default 10; on a GPU, "
        "its memory)"
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--jobs", type=int, default=1, help="measurements at a time on the CPU (default 1)")
    parser.add_argument("--chart", metavar="PATH", help="also draw the table as a PNG chart at PATH (default: none)")
    parser.add_argument("--worker", nargs=4, metavar=("PATH", "TOKENS", "VOCAB", "HIDDEN"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        path, tokens, vocab, hidden = args.worker
        print(json.dumps({"peak_bytes": _measure(path, int(tokens), int(vocab), int(hidden))}))
        return []
    argv = sys.argv[1:] if argv is None else argv
    print_header("benchmark/loss_memory.py", argv)
    cuda = args.device == "cuda"
    if cuda:  # on the CPU, only the measuring processes need torch
        import torch

        if not torch.cuda.is_available():
            print("No CUDA device: skipped (`--device cuda` needs a GPU; without it the loss is measured on the CPU).")
            return []
    if args.quick:
        args.tokens, args.vocab = "256,1024", 8192
    if args.hidden is None:
        args.hidden = 4096 if cuda else 64
    if args.memory_limit_gib is None:
        args.memory_limit_gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else 10.0
    token_counts = [int(value) for value in args.tokens.split(",")]
    results = run(token_counts, args.vocab, args.hidden, args.memory_limit_gib, args.device, args.jobs)
    rows = []
    for row in results:
        full = "-" if row["full"] is None else f"{'' if row['full_measured'] else '~'}{row['full'] / 2**30:.2f}"
        ratio = "-" if row["full"] is None else f"{row['chunked'] / row['full']:.3f}"
        target = f"<= {TARGET_RATIO_AT_32K}" if row["tokens"] == 32768 else ""
        status = (
            ("PASS" if row["chunked"] / row["full"] <= TARGET_RATIO_AT_32K else "FAIL")
            if target and row["full"]
            else ""
        )
        rows.append([f"{row['tokens']:,}", f"{row['chunked'] / 2**30:.2f}", full, ratio, target, status])
    where = (
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}, bf16"
        if cuda
        else f"CPU, torch {importlib.metadata.version('torch')}, fp32"
    )
    print(
        f"\nLoss forward + backward, vocabulary {args.vocab:,}, hidden size {args.hidden}, {where} (GiB of peak "
        "memory)\n"
    )
    print_table(["tokens", "ours (chunked)", "full logits", "ours / full", "target", "status"], rows)
    print("\n~ = extrapolated linearly in tokens from the largest full-logits size that ran")
    if any(row["full_oom"] for row in results):
        print("(full logits ran out of GPU memory at the sizes marked ~ that were tried)")
    if args.chart:
        setting = f"vocabulary {args.vocab:,}, hidden size {args.hidden}, {'bf16' if cuda else 'fp32'}"
        chart(results, args.chart, command_line("loss_memory.py", argv), setting, cuda)
    return results


if __name__ == "__main__":
    main()
