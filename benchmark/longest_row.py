"""The longest packed row that trains one optimizer step on one GPU: a Llama-3.1-8B-shaped model, LoRA, checkpointing.

A model of Llama-3.1-8B's shape (hidden 4096, 32 layers, 32 query / 8 KV heads, MLP 14336, vocabulary 128256; random
weights in bf16; plain RoPE at theta 500,000, since Llama-3's frequency scaling changes neither memory nor time) with
LoRA adapters (rank 16 on every linear layer but the LM head) trains one optimizer step of `LongAlignSFTTrainer`
(`batching="pack"`, activation checkpointing, the chunked loss, the attention `choose_attention()` picks) on one packed
row of L random tokens, for L = 16k, 32k, 64k, ... doubling until the GPU runs out of memory
(`torch.cuda.OutOfMemoryError` is caught and the memory freed), `--max-length` is passed, or the next length would
not end within `--time-budget` (its step time predicted from the last two). It prints, per length, whether the step
trained, its seconds and the peak GPU memory (`torch.cuda.max_memory_allocated`), and the longest row that trained.

The row is cut into samples of at most `--sample-length` tokens (default 65,536, LongAlign's longest sample). The
memory of a step does not depend on the cut (the varlen / per-sample attention kernels hold O(L) memory), only its
attention time does, so the default finds the same longest row as one sample per row (`--sample-length 0`) in much
less time. Anchor: ALST (Arctic Long Sequence Training) reports 500k tokens for an 8B model on one H100 with
activation checkpoints offloaded to the CPU and tiled MLP and loss; this is the plain recipe without those.

Without a CUDA device it prints that it skipped and exits 0. `--device cpu --quick` runs the same code with a tiny
model on the CPU, 64 to 256 tokens (the test suite's smoke test; no memory figures there).

    python benchmark/longest_row.py
    python benchmark/longest_row.py --sample-length 0 --time-budget 600
"""

from __future__ import annotations

import os

# Before torch touches the GPU: growable segments waste less memory to fragmentation near the limit.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import argparse  # noqa: E402
import gc  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _lengths import print_header, print_table  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig, PrinterCallback  # noqa: E402

from longalign_hf import LongAlignConfig, LongAlignSFTTrainer  # noqa: E402
from longalign_hf.tiny import build_byte_tokenizer, tiny_config  # noqa: E402
from longalign_hf.training.attention import choose_attention  # noqa: E402

LORA_RANK = 16


def model_config(size: str, max_length: int):
    """`8b`: Llama-3.1-8B's shape; `tiny`: the CPU smoke-test model."""
    if size == "tiny":
        return tiny_config(build_byte_tokenizer(), max_position_embeddings=max_length)
    return LlamaConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=max(131072, max_length),
        rope_theta=500_000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )


def build_model(config, attention: str, device: torch.device):
    """Random weights (seed 0; bf16 on a GPU) with LoRA adapters on every linear layer but the LM head."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with device:
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attention, dtype=dtype)
    lora = LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def row_dataset(length: int, sample_length: int, vocab_size: int) -> datasets.Dataset:
    """One row's worth of random tokens, cut into samples of at most `sample_length` (0: one sample), all targets."""
    ids = np.random.default_rng(0).integers(3, vocab_size, length)
    cuts = np.arange(sample_length, length, sample_length) if sample_length else []
    samples = [part.tolist() for part in np.split(ids, cuts)]
    return datasets.Dataset.from_dict({"input_ids": samples, "labels": samples})


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's out-of-memory error, also where a library reports it as a plain RuntimeError (cuBLAS, NCCL)."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and ("out of memory" in str(error) or "ALLOC_FAILED" in str(error))


def train_one_step(model, tokenizer, length: int, args: argparse.Namespace) -> tuple[float, int | None]:
    """One optimizer step on one packed row of `length` tokens: `(seconds, peak bytes or None on the CPU)`."""
    cuda = args.device == "cuda"
    dataset = row_dataset(length, args.sample_length, model.config.vocab_size)
    with tempfile.TemporaryDirectory() as tmp:
        config = LongAlignConfig(
            output_dir=tmp, batching="pack", loss_weighting="sequence", max_length=length,
            per_device_train_batch_size=1, max_steps=1, learning_rate=1e-4, bf16=cuda, use_cpu=not cuda,
            activation_checkpointing=True, save_strategy="no", logging_steps=1, report_to="none", disable_tqdm=True,
            seed=0,
        )  # fmt: skip
        trainer = LongAlignSFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        trainer.train()
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    return seconds, torch.cuda.max_memory_allocated() if cuda else None


def release_memory() -> None:
    """Free what a finished or failed step left behind (call outside the `except` block that caught its error)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _predicted_seconds(trained: list[dict]) -> float:
    """The next doubling's step time: the last one's times the last growth, between linear (2x) and quadratic (4x)."""
    growth = trained[-1]["seconds"] / trained[-2]["seconds"] if len(trained) > 1 else 4.0
    return trained[-1]["seconds"] * min(max(growth, 2.0), 4.0)


def search(
    train: Callable[[int], tuple[float, int | None]],
    start: int,
    max_length: int,
    time_budget: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> list[dict]:
    """Train at `start`, `2 start`, ... tokens until `train` runs out of memory or fails, `max_length` is passed, or
    the next length is predicted to overrun `time_budget` seconds; one dict per length tried (or not tried)."""
    rows, length, started = [], start, clock()
    while length <= max_length:
        trained = [row for row in rows if row["status"] == "trained"]
        if time_budget is not None and trained:
            predicted, left = _predicted_seconds(trained), time_budget - (clock() - started)
            if predicted > left:
                rows.append(
                    {"length": length, "status": f"not tried: ~{predicted:.0f} s predicted, {left:.0f} s left"}
                )
                break
        failure = None
        try:
            seconds, peak = train(length)
        except Exception as error:  # noqa: BLE001  (any failure ends the search and is reported)
            failure = "out of memory" if is_out_of_memory(error) else f"failed: {type(error).__name__}: {error}"
        release_memory()
        if failure is not None:
            rows.append({"length": length, "status": failure.splitlines()[0][:200]})
            break
        rows.append({"length": length, "status": "trained", "seconds": seconds, "peak_bytes": peak})
        print(f"# {length:,} tokens: trained in {seconds:.1f} s, peak {_gib(peak)} GiB", flush=True)
        length *= 2
    return rows


def _gib(peak: int | None) -> str:
    return "n/a" if peak is None else f"{peak / 2**30:.1f}"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--start", type=int, default=16384, help="first row length (tokens), doubled each time")
    parser.add_argument("--max-length", type=int, default=2**21, help="stop after this row length")
    parser.add_argument("--sample-length", type=int, default=65536, help="longest sample in the row (0: one sample)")
    parser.add_argument("--time-budget", type=float, help="seconds: lengths predicted to end later are not tried")
    parser.add_argument("--quick", action="store_true", help="tiny model, 64 to 256 tokens: a smoke test")
    args = parser.parse_args(argv)
    print_header("benchmark/longest_row.py", sys.argv[1:] if argv is None else argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("No CUDA device: skipped (this benchmark needs a GPU; `--device cpu --quick` runs its smoke test).")
        return []
    size = "tiny" if args.quick else "8b"
    if args.quick:
        args.start, args.max_length, args.sample_length = 64, 256, min(args.sample_length, 128)
    device = torch.device(args.device)
    attention, reason = choose_attention()
    print(f"# attention: {attention} ({reason})")
    started = time.perf_counter()
    model = build_model(model_config(size, args.max_length), attention, device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    print(f"# model built in {time.perf_counter() - started:.0f} s", flush=True)
    tokenizer = build_byte_tokenizer()
    budget = None if args.time_budget is None else args.time_budget - (time.perf_counter() - started)
    rows = search(lambda length: train_one_step(model, tokenizer, length, args), args.start, args.max_length, budget)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    memory = (
        f", {torch.cuda.get_device_properties(device).total_memory / 2**30:.0f} GiB" if device.type == "cuda" else ""
    )
    trained = [row for row in rows if row["status"] == "trained"]
    longest = f"{trained[-1]['length']:,} tokens" if trained else "none"
    print(
        f"\nOne optimizer step per row length on {device_name}{memory}, torch {torch.__version__}: {size} model "
        f"({total / 1e9:.2f}B parameters, {trainable / 1e6:.1f}M trainable: LoRA rank {LORA_RANK}), activation "
        f"checkpointing, attention {attention}, samples of at most "
        f"{f'{args.sample_length:,} tokens' if args.sample_length else 'the whole row'}. Longest row that trained: "
        f"{longest}\n"
    )
    table = [
        [f"{row['length']:,}", row["status"], f"{row['seconds']:.1f}" if "seconds" in row else "",
         _gib(row["peak_bytes"]) if "peak_bytes" in row else ""]
        for row in rows
    ]  # fmt: skip
    print_table(["row tokens", "result", "step seconds", "peak GiB"], table)
    if any(row["status"].startswith("failed") for row in rows):
        sys.exit(1)
    return rows


if __name__ == "__main__":
    main()
