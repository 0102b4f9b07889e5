"""Cost of the data side of packing: `pack_dataset` on a 100k-sample set, and collation vs. a training step.

1. `pack_dataset` on a tokenized `datasets.Dataset` of 100,000 samples with the long-tailed length mix
   (`_lengths.long_tailed_lengths`: 99,000 chat-like + 1,000 long samples, max length 65,536; int32 token ids built
   directly in Arrow), timed from planning to the packed Arrow table.
2. `LongAlignDataCollator` on one pack of the embedded default (max length 4,096) against one training step of the
   embedded default's tiny model on that pack (forward, backward and AdamW step through `LongAlignSFTTrainer`'s
   loss), and on a 65,536-token pack for scale.

    python benchmark/data_pipeline.py           # the figures
    python benchmark/data_pipeline.py --quick   # a smoke test (10k samples)
"""

from __future__ import annotations

import argparse
import sys
import time

import datasets
import numpy as np
import pyarrow as pa
import torch
from _lengths import long_tailed_lengths, print_header, print_table

from longalign_hf import LongAlignDataCollator, pack_dataset, pack_stats, plan_packs
from longalign_hf.tiny import build_byte_tokenizer, build_tiny_model
from longalign_hf.training.loss import weighted_nll_sum

COLLATION_TARGET = 0.02


def _tokenized_dataset(lengths: np.ndarray, vocab: int = 32000, seed: int = 0) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    ids = rng.integers(3, vocab, int(lengths.sum()), dtype=np.int32)
    labels = np.where(rng.random(ids.size) < 0.3, ids, -100).astype(np.int32)
    table = pa.table(
        {
            "input_ids": pa.LargeListArray.from_arrays(offsets, pa.array(ids)),
            "labels": pa.LargeListArray.from_arrays(offsets, pa.array(labels)),
            "length": pa.array(lengths),
        }
    )
    return datasets.Dataset(table)


def time_pack_dataset(num_samples: int, max_length: int = 65536) -> dict:
    lengths = long_tailed_lengths(num_samples - num_samples // 100, num_samples // 100, seed=0, max_length=max_length)
    dataset = _tokenized_dataset(lengths)
    start = time.perf_counter()
    packed = pack_dataset(dataset, max_length)
    seconds = time.perf_counter() - start
    stats = pack_stats(plan_packs(lengths, max_length), lengths, max_length)
    return {"samples": num_samples, "tokens": int(lengths.sum()), "packs": len(packed), "seconds": seconds, **stats}


def _pack_features(lengths: list[int], vocab: int) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    return [
        {"input_ids": (ids := torch.randint(3, vocab, (n,), generator=generator).tolist()), "labels": ids}
        for n in lengths
    ]


def time_collation_vs_step(repeats: int = 5) -> list[dict]:
    tokenizer = build_byte_tokenizer()
    model = build_tiny_model(tokenizer, max_position_embeddings=65536)
    model.config._attn_implementation = "sdpa"
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    collator = LongAlignDataCollator(pad_token_id=tokenizer.pad_token_id)
    rng = np.random.default_rng(0)
    results = []
    for pack_tokens, with_step in ((4096, True), (65536, False)):
        lengths = rng.integers(16, 900, 400)
        lengths = lengths[np.cumsum(lengths) <= pack_tokens].tolist()
        features = _pack_features(lengths, len(tokenizer))
        collate = []
        for _ in range(repeats):
            start = time.perf_counter()
            batch = collator(features)
            collate.append(time.perf_counter() - start)
        step = float("nan")
        if with_step:
            steps = []
            for _ in range(repeats):
                inputs = dict(batch)
                sample_ids, num_targets = inputs.pop("loss_sample_ids"), inputs.pop("loss_num_targets")
                inputs.pop("loss_sample_features")
                start = time.perf_counter()
                outputs = model(**inputs, fused_lm_head=True)
                loss = weighted_nll_sum(outputs.log_probs, outputs.label_mask, sample_ids, num_targets, "sequence")
                (loss / len(lengths)).backward()
                optimizer.step()
                optimizer.zero_grad()
                steps.append(time.perf_counter() - start)
            step = float(np.median(steps))
        results.append(
            {"tokens": sum(lengths), "samples": len(lengths), "collate": float(np.median(collate)), "step": step}
        )
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=100_000, help="samples in the data set to pack")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    args = parser.parse_args(argv)
    print_header("benchmark/data_pipeline.py", sys.argv[1:] if argv is None else argv)
    packing = time_pack_dataset(10_000 if args.quick else args.samples)
    print("\n`pack_dataset` (bfd, max length 65,536)\n")
    print_table(
        ["samples", "tokens", "packs", "fill", "seconds"],
        [[f"{packing['samples']:,}", f"{packing['tokens']:,}", f"{packing['packs']:,}", f"{packing['fill']:.5f}",
          f"{packing['seconds']:.2f}"]],
    )  # fmt: skip
    rows = []
    for result in time_collation_vs_step(2 if args.quick else 5):
        share = result["collate"] / result["step"] if result["step"] == result["step"] else None
        rows.append([
            f"{result['tokens']:,}", str(result["samples"]), f"{result['collate'] * 1000:.1f}",
            "-" if share is None else f"{result['step'] * 1000:.0f}", "-" if share is None else f"{share:.2%}",
            "" if share is None else f"< {COLLATION_TARGET:.0%}",
            "" if share is None else ("PASS" if share < COLLATION_TARGET else "FAIL"),
        ])  # fmt: skip
    print("\nCollation of one pack vs one training step of the embedded default's tiny model (median)\n")
    print_table(["pack tokens", "samples", "collate ms", "step ms", "collate / step", "target", "status"], rows)


if __name__ == "__main__":
    main()
