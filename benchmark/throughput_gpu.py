"""Training throughput and MFU on one CUDA GPU: naive batching, sorted batching and packing, per attention backend.

A real-sized model with random weights (default `1b`: TinyLlama's shape, hidden 2048, 22 layers, 32 query / 4 KV
heads, MLP 5632, vocabulary 32000, ~1.1B parameters) trains in bf16 on random tokens whose lengths follow
`long_tailed_lengths` (one long sample in ten, spread over max_length/8 .. max_length), one epoch per mode, for each
attention backend that can run: `varlen_packed` (PyTorch's varlen FlashAttention kernel, what `choose_attention()`
picks on a GPU without flash-attn), `sdpa_packed` (SDPA per sample) and `flash_attention_2` when flash-attn is
installed. The modes: naive, sort, and packing with token and with sequence loss weighting (the weighting costs the
same; both are shown because both are offered). Every mode first trains a few warm-up steps that are not timed. The
table gives tokens/s (real tokens, no padding), samples/s, each mode over naive batching, peak GPU memory and MFU;
on an H100 it also checks the targets of issue 13 (packing >= 2x naive tokens/s, MFU >= 45%).

MFU = model FLOPs / (seconds x the device's dense bf16 peak). Model FLOPs of a trained sample of L tokens are
`6 N L + 6 n_layers h L^2`: N counts the parameters used as matrices (all but the input embedding, unless it is tied
to the LM head), 6 = forward + backward; causal attention does `QK^T` and `AV` over L^2 / 2 pairs at 2h FLOPs each
per layer (forward), x3 with the backward. Recomputation under activation checkpointing is not counted (that would be
hardware FLOPs utilization). The peak comes from `--peak-tflops` or the device name (table `PEAK_BF16_TFLOPS`; a MIG
slice reports its whole GPU's name, so pass `--peak-tflops` there); unknown devices print n/a.

Naive and sorted batching train `--batch-size` samples per step (padded), packing one pack of `--max-length` tokens.
On one GPU with batch size 1 they do the same work: their difference in the paper comes from 8 devices waiting for
the slowest (see `benchmark/efficiency.py`); a larger `--batch-size` shows what padding costs them.

Each run prints a progress line as it ends, so a run stopped early still shows what it measured; `--time-budget`
skips the runs that would not end within it (the table says so).

Without a CUDA device it prints that it skipped and exits 0. `--device cpu --quick` runs the same code with a tiny
model on the CPU (the test suite's smoke test; MFU is n/a there, and `varlen_packed` runs as `sdpa_packed`).

    python benchmark/throughput_gpu.py
    python benchmark/throughput_gpu.py --attention varlen_packed --max-length 32768 --samples 512
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time

import datasets
import numpy as np
import torch
from _lengths import long_tailed_lengths, print_header, print_table
from transformers import AttentionInterface, AutoModelForCausalLM, LlamaConfig, PrinterCallback

from longalign_hf import LongAlignConfig, LongAlignSFTTrainer
from longalign_hf.tiny import build_byte_tokenizer, tiny_config
from longalign_hf.training.attention import flash_attn_available

# Dense (no sparsity) bf16 tensor-core peaks from the vendor data sheets, matched in order against the device name.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
)
# mode -> (batching, loss_weighting)
MODES = {
    "naive": ("naive", "sequence"),
    "sort": ("sort", "sequence"),
    "pack (token)": ("pack", "token"),
    "pack (sequence)": ("pack", "sequence"),
}
WARMUP_STEPS = 3
# Issue 13's targets, set for an H100: packing at least 2x naive batching's tokens/s, and MFU at least 45%.
TARGET_DEVICE, TARGET_VS_NAIVE, TARGET_MFU = "H100", 2.0, 0.45


def model_config(size: str, vocab_size: int, max_length: int):
    """`1b`: TinyLlama-1.1B's shape; `tiny`: the CPU smoke-test model."""
    if size == "tiny":
        config = tiny_config(build_byte_tokenizer(), max_position_embeddings=max_length)
        config.vocab_size = vocab_size
        return config
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        max_position_embeddings=max_length,
        rope_theta=10_000.0,
        tie_word_embeddings=False,
    )


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a device by its name (`torch.cuda.get_device_name`); `None` when unknown."""
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in device_name), None)


def matrix_parameters(model) -> int:
    """Parameters in the FLOP count: all but the input embedding (a lookup) unless it is the LM head too.

    Norm weights are counted too; they are a negligible share (about 1e-4 of a 1B model).
    """
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    return total if embedding is model.get_output_embeddings().weight else total - embedding.numel()


def model_flops(lengths: np.ndarray, config, num_matrix_parameters: int) -> float:
    """Training FLOPs of samples of `lengths` tokens (forward + backward, causal attention, no recomputation)."""
    lengths = lengths.astype(np.float64)
    attention = 6.0 * config.num_hidden_layers * config.hidden_size * float((lengths**2).sum())
    return 6.0 * num_matrix_parameters * float(lengths.sum()) + attention


def build_model(config, backend: str, device: torch.device):
    """A randomly initialised model (seed 0) on `device`, in bf16 on a GPU."""
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with device:
        return AutoModelForCausalLM.from_config(config, attn_implementation=backend, dtype=dtype)


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def random_dataset(lengths: np.ndarray, vocab_size: int, seed: int) -> datasets.Dataset:
    """Random token ids of the given lengths; every token after the first 10% is a target."""
    rng = np.random.default_rng(seed)
    input_ids = [rng.integers(3, vocab_size, int(n)).tolist() for n in lengths]
    labels = [[-100] * (len(ids) // 10) + ids[len(ids) // 10 :] for ids in input_ids]
    return datasets.Dataset.from_dict({"input_ids": input_ids, "labels": labels})


def train_epoch(model, tokenizer, dataset, mode: str, args: argparse.Namespace, output_dir: str, **limits) -> float:
    """Train `model` on `dataset` in `mode` (a key of `MODES`) and return the seconds of training (`train_runtime`)."""
    cuda = args.device == "cuda"
    batching, loss_weighting = MODES[mode]
    config = LongAlignConfig(
        output_dir=output_dir,
        batching=batching,
        loss_weighting=loss_weighting,
        max_length=args.max_length,
        per_device_train_batch_size=1 if batching == "pack" else args.batch_size,
        gradient_accumulation_steps=1,
        num_train_epochs=1,
        learning_rate=1e-5,
        bf16=cuda,
        use_cpu=not cuda,
        activation_checkpointing=args.activation_checkpointing,
        save_strategy="no",
        logging_steps=10**6,
        report_to="none",
        disable_tqdm=True,
        seed=0,
        **limits,
    )
    trainer = LongAlignSFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)  # keeps stdout to the progress lines and the table
    if cuda:
        torch.cuda.synchronize()
    return trainer.train().metrics["train_runtime"]


def runnable_attention(requested: list[str], device: torch.device) -> tuple[list[str], list[str]]:
    """The requested backends that can run on `device`, and a note for each one that cannot."""
    backends, notes = [], []
    for name in requested:
        if name.startswith("flash_attention") and not (device.type == "cuda" and flash_attn_available()):
            notes.append(f"{name}: flash-attn is not installed or the device is not a CUDA GPU")
        elif name not in AttentionInterface._global_mapping and name not in ("eager", "sdpa"):
            notes.append(f"{name}: no such attention backend is registered")
        else:
            backends.append(name)
    return backends, notes


def run(args: argparse.Namespace) -> tuple[list[dict], str, int]:
    """Every backend x mode; returns the results, the device name and the model's matrix parameter count."""
    device = torch.device(args.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = args.peak_tflops or (peak_tflops(device_name) if device.type == "cuda" else None)
    n_long = max(1, args.samples // 10)
    lengths = long_tailed_lengths(
        args.samples - n_long, n_long, seed=0, max_length=args.max_length, short_median=args.max_length / 64,
        long_min=args.max_length // 8,
    )  # fmt: skip
    dataset = random_dataset(lengths, args.vocab_size, seed=0)
    tokenizer = build_byte_tokenizer()
    config = model_config(args.size, args.vocab_size, args.max_length)
    backends, notes = runnable_attention(args.attention.split(","), device)
    for note in notes:
        print(f"# skipped {note}")
    results, num_matrix, started, longest = [], 0, time.perf_counter(), 0.0
    for backend in backends:
        for mode in MODES:
            row = {"attention": backend, "mode": mode, "samples": len(lengths), "tokens": int(lengths.sum())}
            results.append(row)
            if args.time_budget and time.perf_counter() - started + longest > args.time_budget:
                row["seconds"] = None  # the last run's length would overrun the budget
                continue
            run_started = time.perf_counter()
            # A fresh model per run: each trainer wraps the model's forward (autocast) and may switch its attention.
            with tempfile.TemporaryDirectory() as tmp:
                train_epoch(build_model(config, backend, device), tokenizer, dataset, mode, args, tmp,
                            max_steps=WARMUP_STEPS)  # fmt: skip
                _release(device)
                model = build_model(config, backend, device)
                num_matrix = matrix_parameters(model)
                seconds = train_epoch(model, tokenizer, dataset, mode, args, tmp)
            row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
            del model
            _release(device)
            flops = model_flops(lengths, config, num_matrix)
            row["seconds"], row["mfu"] = seconds, flops / (seconds * peak * 1e12) if peak else None
            longest = max(longest, time.perf_counter() - run_started)
            print(f"# {backend} {mode}: {seconds:.1f} s, {row['tokens'] / seconds:,.0f} tokens/s, MFU {_mfu(row)}")
    return _with_ratios(results), device_name, num_matrix


def _with_ratios(results: list[dict]) -> list[dict]:
    for result in results:
        naive = next(r for r in results if r["attention"] == result["attention"] and r["mode"] == "naive")
        measured = result["seconds"] is not None and naive["seconds"] is not None
        result["vs_naive"] = naive["seconds"] / result["seconds"] if measured else None
    return results


def _mfu(result: dict) -> str:
    return "n/a" if result.get("mfu") is None else f"{result['mfu']:.1%}"


def _target(result: dict, device_name: str) -> tuple[str, str]:
    """The target and PASS/FAIL cells of a packing row on the target device; empty elsewhere."""
    if TARGET_DEVICE not in device_name or not result["mode"].startswith("pack") or result["vs_naive"] is None:
        return "", ""
    passed = result["vs_naive"] >= TARGET_VS_NAIVE and result["mfu"] is not None and result["mfu"] >= TARGET_MFU
    return f">= {TARGET_VS_NAIVE:.0f}x, MFU >= {TARGET_MFU:.0%}", "PASS" if passed else "FAIL"


def print_results(results: list[dict], device_name: str) -> None:
    """The Markdown table of `run`'s results; runs skipped for the time budget show as such."""
    rows = []
    for r in results:
        if r["seconds"] is None:
            rows.append([r["attention"], r["mode"], "not run (time budget)", *[""] * 7])
            continue
        rows.append([
            r["attention"], r["mode"], f"{r['seconds']:.1f}", f"{r['tokens'] / r['seconds']:,.0f}",
            f"{r['samples'] / r['seconds']:.2f}", "n/a" if r["vs_naive"] is None else f"{r['vs_naive']:.2f}x",
            "n/a" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}", _mfu(r), *_target(r, device_name),
        ])  # fmt: skip
    columns = ["attention", "mode", "seconds", "tokens/s", "samples/s", "vs naive", "peak GiB", "MFU", "target"]
    print_table([*columns, "status"], rows)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--size", choices=("1b", "tiny"), default="1b", help="model shape (random weights)")
    parser.add_argument(
        "--attention", default="varlen_packed,sdpa_packed,flash_attention_2", help="comma-separated backends"
    )
    parser.add_argument("--max-length", type=int, default=16384, help="longest sample and pack size")
    parser.add_argument("--samples", type=int, help="samples in the epoch, one in ten long (default 640; --quick 20)")
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--batch-size", type=int, default=1, help="samples per step for naive and sorted batching")
    parser.add_argument("--no-activation-checkpointing", dest="activation_checkpointing", action="store_false")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the device, for MFU")
    parser.add_argument("--time-budget", type=float, help="seconds: runs that would end later are not started")
    parser.add_argument("--quick", action="store_true", help="tiny model, short samples: a smoke test")
    args = parser.parse_args(argv)
    print_header("benchmark/throughput_gpu.py", sys.argv[1:] if argv is None else argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("No CUDA device: skipped (this benchmark needs a GPU; `--device cpu --quick` runs its smoke test).")
        return []
    if args.device == "cuda" and not torch.cuda.is_bf16_supported():
        print(f"{torch.cuda.get_device_name()} has no bf16 support (pre-Ampere): skipped.")
        return []
    if args.quick:
        args.size, args.max_length, args.vocab_size = "tiny", 512, 300
        args.activation_checkpointing = False
    if args.samples is None:
        args.samples = 20 if args.quick else 640
    started = time.perf_counter()
    results, device_name, num_matrix = run(args)
    print(
        f"\nOne epoch per mode on {device_name}, torch {torch.__version__}: {args.size} model "
        f"({num_matrix / 1e6:,.1f}M matrix parameters), {results[0]['samples'] if results else 0} samples "
        f"({results[0]['tokens'] if results else 0:,} tokens), max length {args.max_length:,}, batch size "
        f"{args.batch_size} (naive, sort), activation checkpointing {'on' if args.activation_checkpointing else 'off'}"
        f"; {time.perf_counter() - started:.0f} s in all\n"
    )
    print_results(results, device_name)
    return results


if __name__ == "__main__":
    main()
