"""Per-rank peak memory and step time of LongAlign training with Ulysses sequence parallelism: sp_size 1 vs 2.

Each (sp_size, row length) runs in fresh processes: `LongAlignSFTTrainer` with packing and sequence weighting trains
`--steps` optimizer steps on packed rows of exactly `length` tokens (samples of ~length/8 tokens, one pack per step).
sp_size 1 is one process without DeepSpeed; sp_size S > 1 is S processes under DeepSpeed ZeRO-1 with
`ParallelismConfig(sp_size=S, sp_backend="deepspeed")` (the trainer's per-rank slices of each row and the real
`UlyssesSPAttentionHF`; gloo on a CPU). The model is a small Llama shape (hidden 256, 4 layers, 8 heads, 4 key/value
heads, byte vocabulary). Activation checkpointing is off by default, so that the forward keeps every activation; the
recipes turn it on (`--activation-checkpointing on`), which keeps only each layer's input (also split by SP).

Memory, the largest rank's: (1) activations: the bytes of the tensors autograd keeps from a step's forward for its
backward (each storage once, weights included), what SP divides; (2) on a CPU, the peak resident memory of the
process (`ru_maxrss`) above its resident memory just before training, which also counts what does not scale with the
row (TRL's fused LM head allocates 4096 x 32768 fp32 tiles whatever the vocabulary, DeepSpeed's engine and its
shared-memory collectives, allocator caching); on a GPU, `torch.cuda.max_memory_allocated` above the allocation
before training. Step time: the median of the steps after the first (each process runs one thread).

Measurements run one at a time; `--jobs N` runs N at once (each in processes of its own, so the memory columns hold,
but the step times then share the CPU: for a smoke test).

    python benchmark/sequence_parallel.py --steps 2            # 16k / 32k / 64k tokens, sp_size 1 and 2, on the CPU
    python benchmark/sequence_parallel.py --quick              # a smoke test (2k tokens)
    python benchmark/sequence_parallel.py --steps 2 --chart sequence_parallel.png

`--chart PATH` (default: no chart) writes a PNG of the table's memory columns: activations per rank and peak above
start, one bar per sp_size for each row length, labelled with the table's MiB and ratio to sp_size 1. Step times stay
in the table only: on one CPU they are not a speed-up figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from _charts import command_line, grouped_bars, legend, machine, new_figure, save
from _lengths import free_port, print_header, rss_bytes

HIDDEN, LAYERS, HEADS, KV_HEADS = 256, 4, 8, 4


def _worker(length: int, sp_size: int, steps: int, checkpointing: bool, output: str) -> None:
    """One measurement, in this process (one rank of `sp_size`)."""
    import datasets
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback

    from longalign_hf import LongAlignConfig, LongAlignSFTTrainer
    from longalign_hf.tiny import build_byte_tokenizer
    from longalign_hf.training.distributed import run_then_exit

    tokenizer = build_byte_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=length,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    ))  # fmt: skip
    model.config._attn_implementation = "sdpa"
    generator = torch.Generator().manual_seed(0)
    sample = length // 8
    rows = []
    for _ in range(8 * steps):
        ids = torch.randint(3, 200, (sample,), generator=generator).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * (sample // 2) + ids[sample // 2 :]})
    parallel = {}
    if sp_size > 1:
        from accelerate.parallelism_config import ParallelismConfig
        from accelerate.utils import DeepSpeedSequenceParallelConfig

        parallel = {
            "deepspeed": {"zero_optimization": {"stage": 1}, "train_micro_batch_size_per_gpu": "auto",
                          "gradient_accumulation_steps": "auto", "train_batch_size": "auto"},
            "parallelism_config": ParallelismConfig(
                sp_size=sp_size, sp_backend="deepspeed",
                sp_handler=DeepSpeedSequenceParallelConfig(sp_attn_implementation="sdpa"),
            ),
        }  # fmt: skip
    args = LongAlignConfig(
        output_dir=os.path.join(os.path.dirname(output), "trainer"), batching="pack", loss_weighting="sequence", max_length=length,
        per_device_train_batch_size=1, max_steps=steps, activation_checkpointing=checkpointing, bf16=False,
        report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0, **parallel,
    )  # fmt: skip
    cuda = torch.cuda.is_available()

    class _Timer(TrainerCallback):
        def __init__(self):
            self.times, self.start = [], None

        def on_step_begin(self, *args, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            self.times.append(time.perf_counter() - self.start)

    timer = _Timer()
    saved_bytes: list[int] = []

    def counting_saved_tensors(compute_loss):
        """`compute_loss` that also records the bytes of the tensors autograd keeps for the backward (each storage
        once): the activation memory of this rank's forward."""

        def wrapped(*args, **kwargs):
            storages: dict[int, int] = {}

            def pack(tensor):
                storage = tensor.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
                return tensor

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                result = compute_loss(*args, **kwargs)
            saved_bytes.append(sum(storages.values()))
            return result

        return wrapped

    def main():
        trainer = LongAlignSFTTrainer(
            model=model, args=args, train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer,
            callbacks=[timer],
        )  # fmt: skip
        trainer.compute_loss = counting_saved_tensors(trainer.compute_loss)
        baseline = torch.cuda.memory_allocated() if cuda else rss_bytes()
        trainer.train()
        peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        result = {
            "peak_bytes": peak - baseline,
            "saved_bytes": max(saved_bytes),
            "step_seconds": statistics.median(timer.times[1:] or timer.times),
        }
        rank = int(os.environ.get("RANK", "0"))
        with open(f"{output}.{rank}.json", "w") as handle:
            json.dump(result, handle)

    run_then_exit(main)


def _measure(length: int, sp_size: int, steps: int, checkpointing: bool) -> dict:
    import torch

    with tempfile.TemporaryDirectory() as folder:
        output = os.path.join(folder, "result")
        worker = [
            os.path.abspath(__file__),
            "--worker",
            str(length),
            str(sp_size),
            str(steps),
            str(int(checkpointing)),
        ]
        worker.append(output)
        if sp_size == 1:
            command = [sys.executable, *worker]
        else:
            command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(sp_size)]
            command += ["--master_port", str(free_port()), *worker]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        if not torch.cuda.is_available():
            env.setdefault("DS_ACCELERATOR", "cpu")
        completed = subprocess.run(command, capture_output=True, text=True, env=env)
        if completed.returncode != 0:
            raise RuntimeError(f"sp_size={sp_size}, {length} tokens failed:\n{completed.stderr[-3000:]}")
        ranks = []
        for rank in range(sp_size):
            with open(f"{output}.{rank}.json") as handle:
                ranks.append(json.load(handle))
    return {key: max(rank[key] for rank in ranks) for key in ("saved_bytes", "peak_bytes", "step_seconds")}


def _cell(measured: dict, base: dict | None, key: str) -> str:
    """MiB, and the ratio to sp_size 1."""
    ratio = f"{measured[key] / base[key]:.2f}" if base else "-"
    return f"{measured[key] / 2**20:,.0f} | {ratio}"


def chart(results: list[dict], path: str, command: str, steps: int, checkpointing: bool, cuda: bool = False):
    """Draw the table's memory columns, MiB per rank of each (row length, sp_size), in 2 panels; return the figure."""
    lengths = list(dict.fromkeys(r["length"] for r in results))
    sizes = list(dict.fromkeys(r["sp_size"] for r in results))
    cell = {(r["length"], r["sp_size"]): r for r in results}
    figure, panels = new_figure(panels=2, width=6.6, height=5.0)
    columns = (("saved_bytes", "activations per rank (MiB)"), ("peak_bytes", "peak RSS above start (MiB)"))
    for axes, (key, label) in zip(panels, columns):
        series, labels = {}, {}
        for size in sizes:
            rows = [cell.get((length, size)) for length in lengths]
            series[f"sp_size {size}"] = [r and r[key] / 2**20 for r in rows]
            labels[f"sp_size {size}"] = [
                "" if r is None else f"{r[key] / 2**20:,.0f}" + (
                    f"\n{r[key] / cell[(length, 1)][key]:.2f}x" if size != 1 and (length, 1) in cell else ""
                )
                for r, length in zip(rows, lengths)
            ]  # fmt: skip
        grouped_bars(axes, [f"{length:,}" for length in lengths], series, labels)
        axes.set_title(label, fontsize=10)
        axes.set_ylabel("MiB, of the largest rank")
        axes.set_xlabel("tokens per row (each rank holds tokens / sp_size)")
    legend(panels[-1], title="Nx: vs sp_size 1")
    title = (
        f"Memory per rank with DeepSpeed Ulysses sequence parallelism, sp_size {' vs '.join(map(str, sizes))}\n"
        f"Llama shape (hidden {HIDDEN}, {LAYERS} layers, {HEADS} heads), fp32, packed rows, {steps} steps, activation "
        f"checkpointing {'on' if checkpointing else 'off'}; {machine(cuda)}"
    )
    save(figure, path, title, command)
    return figure


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[16384, 32768, 65536])
    parser.add_argument("--sp-sizes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2k tokens, 2 steps: a smoke test")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--chart", metavar="PATH", help="also draw the memory columns as a PNG chart at PATH")
    parser.add_argument(
        "--activation-checkpointing", choices=["on", "off"], default="off",
        help="recompute each layer in the backward, as the recipes do (default off: every activation is kept, so the "
        "activation column is the whole forward's)",
    )  # fmt: skip
    parser.add_argument("--jobs", type=int, default=1, help="measurements at once (default 1: step times hold)")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.worker:
        length, sp_size, steps, checkpointing, output = options.worker
        _worker(int(length), int(sp_size), int(steps), checkpointing == "1", output)
        return []
    if options.quick:
        options.lengths, options.steps = [2048], 2
    checkpointing = options.activation_checkpointing == "on"
    argv = sys.argv[1:] if argv is None else argv
    print_header("benchmark/sequence_parallel.py", argv)
    print(
        f"Model: Llama shape, hidden {HIDDEN}, {LAYERS} layers, {HEADS} heads ({KV_HEADS} kv), fp32, packed rows; "
        f"activation checkpointing {options.activation_checkpointing}; {options.steps} steps"
    )
    print(
        "| tokens per row | sp_size | tokens per rank | activations per rank (MiB) | vs sp_size 1 "
        "| peak RSS above start (MiB) | vs sp_size 1 | step (s) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    results = []
    with ThreadPoolExecutor(max_workers=options.jobs) as pool:
        for length in options.lengths:
            base = None
            sizes = options.sp_sizes
            # Each row is printed as soon as it and the rows above it are measured.
            measurements = pool.map(_measure, [length] * len(sizes), sizes, [options.steps] * len(sizes),
                                    [checkpointing] * len(sizes))  # fmt: skip
            for sp_size, measured in zip(options.sp_sizes, measurements):
                base = measured if sp_size == 1 else base
                saved, peak = (_cell(measured, base, key) for key in ("saved_bytes", "peak_bytes"))
                print(
                    f"| {length:,} | {sp_size} | {length // sp_size:,} | {saved} | {peak} "
                    f"| {measured['step_seconds']:.2f} |",
                    flush=True,
                )
                results.append({"length": length, "sp_size": sp_size, **measured})
    if options.json:
        with open(options.json, "w") as handle:
            json.dump(results, handle, indent=2)
    if options.chart:
        import torch

        chart(results, options.chart, command_line("sequence_parallel.py", argv), options.steps, checkpointing,
              torch.cuda.is_available())  # fmt: skip
    return results


if __name__ == "__main__":
    main()
