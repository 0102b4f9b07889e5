"""Step time and resident memory per process of each training engine the recipes ship, on 2 CPU processes.

Each engine runs `accelerate launch --config_file <the recipe's accelerate config> --num_processes 2
--mixed_precision no` (the shipped file cut to 2 CPU processes; FSDP2 and DeepSpeed over gloo) on a worker that loads
a saved model with `from_pretrained` (as the recipe does: under ZeRO-3 partitioned as it loads, under FSDP2 with
`fsdp_cpu_ram_efficient_loading`) and trains `LongAlignSFTTrainer` with packing, sequence weighting, AdamW, fp32 and
activation checkpointing (the recipes' settings) for `--steps` optimizer steps on rows of exactly `--max-length`
tokens (8 samples per row, one row per process per step). Engines: DDP (`ddp.yaml`), FSDP2 full shard (`fsdp2.yaml`),
FSDP2 with parameter offload (`fsdp2.yaml`, `fsdp_offload_params: true`), ZeRO-2 (`zero3.yaml` at stage 2), ZeRO-3
(`zero3.yaml`) and ZeRO-3 with parameter and optimizer offload (`zero3_offload.yaml`).

Per process, the largest of the two is reported: the resident memory (RSS) above the process's own after its imports,
after the last step (what it keeps between steps, once glibc has returned its free blocks: `malloc_trim`) and at its
peak (`ru_maxrss`); the median step time after the first; the machine's load (1-minute average) when training ended,
since other work on the machine slows the steps.
Next to them, the bytes of parameters, gradients and optimizer state each engine should hold per process, fp32 with
AdamW (4 + 4 + 8 bytes per parameter), divided as the engine shards them (ZeRO-2: gradients and optimizer; ZeRO-3 and
FSDP2: all three), and how much of that offload moves to CPU memory.

    python benchmark/engines.py                  # hidden 512, 8 layers, 32k vocabulary, 4,096-token rows, 3 steps
    python benchmark/engines.py --quick          # a smoke test: a small model, 512-token rows, 2 steps
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _lengths import free_port, print_header, rss_bytes

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIGS = ROOT / "recipes" / "accelerate"
PROCESSES = 2
SAMPLES_PER_ROW = 8


def _fsdp2_offload(config: dict) -> None:
    config["fsdp_config"]["fsdp_offload_params"] = True


def _zero2(config: dict) -> None:
    config["deepspeed_config"].update(zero_stage=2, zero3_init_flag=False, zero3_save_16bit_model=False)


# name -> (shipped accelerate config, change to it, which of the model states it shards, which it offloads)
ENGINES = {
    "DDP": ("ddp.yaml", None, (), ()),
    "FSDP2": ("fsdp2.yaml", None, ("params", "grads", "optimizer"), ()),
    "FSDP2 + offload": ("fsdp2.yaml", _fsdp2_offload, ("params", "grads", "optimizer"), ("params", "grads", "optimizer")),
    "ZeRO-2": ("zero3.yaml", _zero2, ("grads", "optimizer"), ()),
    "ZeRO-3": ("zero3.yaml", None, ("params", "grads", "optimizer"), ()),
    "ZeRO-3 + offload": ("zero3_offload.yaml", None, ("params", "grads", "optimizer"), ("params", "grads", "optimizer")),
}  # fmt: skip
BYTES_PER_PARAMETER = {"params": 4, "grads": 4, "optimizer": 8}  # fp32 weights and gradients, AdamW's two moments


def expected_model_state_bytes(engine: str, parameters: int, processes: int = PROCESSES) -> tuple[int, int]:
    """Parameter + gradient + optimizer bytes one process holds under `engine` (fp32, AdamW), and how many of them
    offload keeps in CPU memory instead of the accelerator's."""
    _, _, sharded, offloaded = ENGINES[engine]
    held = {
        state: size * parameters // (processes if state in sharded else 1)
        for state, size in BYTES_PER_PARAMETER.items()
    }
    return sum(held.values()), sum(held[state] for state in offloaded)


def accelerate_config(engine: str, folder: Path) -> Path:
    """The shipped accelerate config of `engine`, changed as the engine needs, written into `folder`."""
    name, change, _, _ = ENGINES[engine]
    config = yaml.safe_load((ACCELERATE_CONFIGS / name).read_text())
    config.update(num_processes=PROCESSES, mixed_precision="no")
    if change is not None:
        change(config)
    path = folder / f"{engine.replace(' + ', '_').replace('-', '').lower()}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def save_model(folder: Path, hidden: int, layers: int, vocab: int, max_length: int) -> int:
    """A Llama-shaped model and the byte tokenizer, saved into `folder`; returns the parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from longalign_hf.tiny import build_byte_tokenizer

    tokenizer = build_byte_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=max(vocab, len(tokenizer)), hidden_size=hidden, intermediate_size=hidden * 11 // 4,
        num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=max(hidden // 256, 1),
        max_position_embeddings=max_length, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    ))  # fmt: skip
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(parameter.numel() for parameter in model.parameters())


def _worker(model_folder: str, max_length: int, steps: int, output: str) -> None:
    """One engine's measurement, in this process (one of the launch's)."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from longalign_hf import LongAlignConfig, LongAlignSFTTrainer
    from longalign_hf.training.distributed import run_then_exit
    from longalign_hf.training.engines import describe_engine

    baseline = rss_bytes()
    sample = max_length // SAMPLES_PER_ROW
    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(SAMPLES_PER_ROW * PROCESSES * steps):
        ids = torch.randint(3, 200, (sample,), generator=generator).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * (sample // 2) + ids[sample // 2 :]})
    args = LongAlignConfig(
        output_dir=os.path.join(os.path.dirname(output), "trainer"), batching="pack", loss_weighting="sequence",
        max_length=max_length, per_device_train_batch_size=1, max_steps=steps, optim="adamw_torch",
        learning_rate=1e-4, activation_checkpointing=True, bf16=False, report_to="none", save_strategy="no",
        logging_steps=1, disable_tqdm=True, seed=0,
    )  # fmt: skip

    class _Measure(TrainerCallback):
        def __init__(self):
            self.times, self.start, self.resident = [], None, 0

        def on_step_begin(self, *args, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.start)
            # glibc keeps freed blocks of up to 32 MiB in its heap: hand them back, so that what stays is what lives.
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            self.resident = rss_bytes()

    def main():
        tokenizer = AutoTokenizer.from_pretrained(model_folder)
        model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32, attn_implementation="sdpa")
        measure = _Measure()
        trainer = LongAlignSFTTrainer(
            model=model, args=args, train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer,
            callbacks=[measure],
        )  # fmt: skip
        trainer.train()
        result = {
            "engine": describe_engine(trainer.accelerator),
            "resident_bytes": measure.resident - baseline,
            "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline,
            "step_seconds": statistics.median(measure.times[1:] or measure.times),
            "load": os.getloadavg()[0],
        }
        with open(f"{output}.{trainer.accelerator.process_index}.json", "w") as handle:
            json.dump(result, handle)

    run_then_exit(main)


def measure(engine: str, model_folder: Path, max_length: int, steps: int, timeout: float) -> dict:
    """Launch `engine` on 2 CPU processes; the largest process's figures and the engine the trainer named."""
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        output = folder / "result"
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config(engine, folder)),
            "--num_processes", str(PROCESSES), "--mixed_precision", "no", "--main_process_port", str(free_port()),
            os.path.abspath(__file__), "--worker", str(model_folder), str(max_length), str(steps), str(output),
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false"}
        completed = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=timeout, start_new_session=True
        )
        if completed.returncode != 0:
            raise RuntimeError(f"{engine} failed (exit {completed.returncode}):\n{completed.stderr[-4000:]}")
        ranks = [json.loads((folder / f"result.{rank}.json").read_text()) for rank in range(PROCESSES)]
    figures = {
        key: max(rank[key] for rank in ranks) for key in ("resident_bytes", "peak_bytes", "step_seconds", "load")
    }
    return {**figures, "described": ranks[0]["engine"]}


def _mib(count: int) -> str:
    return f"{count / 2**20:,.0f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000, help="vocabulary rows (the byte tokenizer uses the first)")
    parser.add_argument("--max-length", type=int, default=4096, help="tokens per packed row")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--engines", nargs="+", choices=list(ENGINES), default=list(ENGINES))
    parser.add_argument("--timeout", type=float, default=900, help="seconds one engine's launch may take")
    parser.add_argument(
        "--quick", action="store_true", help="hidden 128, 2 layers, 1k vocabulary, 512 tokens, 2 steps"
    )
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.worker:
        model_folder, max_length, steps, output = options.worker
        _worker(model_folder, int(max_length), int(steps), output)
        return
    if options.quick:
        options.hidden, options.layers, options.vocab, options.max_length, options.steps = 128, 2, 1024, 512, 2
    print_header("benchmark/engines.py", sys.argv[1:] if argv is None else argv)
    results = []
    with tempfile.TemporaryDirectory() as model_folder:
        parameters = save_model(Path(model_folder), options.hidden, options.layers, options.vocab, options.max_length)
        print(
            f"Model: Llama shape, hidden {options.hidden}, {options.layers} layers, vocabulary {options.vocab:,} "
            f"(untied), {parameters / 1e6:.1f}M parameters, fp32, AdamW; {PROCESSES} CPU processes (gloo, one thread "
            f"each), rows of {options.max_length:,} tokens ({SAMPLES_PER_ROW} samples), activation checkpointing on, "
            f"{options.steps} steps"
        )
        print(
            "| engine | expected params + grads + optimizer per process (MiB) | of which offloaded to CPU (MiB) "
            "| RSS after the last step (MiB) | peak RSS (MiB) | step (s) | load |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for engine in options.engines:
            started = time.perf_counter()
            measured = measure(engine, Path(model_folder), options.max_length, options.steps, options.timeout)
            expected, offloaded = expected_model_state_bytes(engine, parameters)
            print(
                f"| {engine} | {_mib(expected)} | {_mib(offloaded)} | {_mib(measured['resident_bytes'])} "
                f"| {_mib(measured['peak_bytes'])} | {measured['step_seconds']:.2f} | {measured['load']:.1f} |",
                flush=True,
            )
            results.append({
                "engine": engine, "parameters": parameters, "expected_bytes": expected, "offloaded_bytes": offloaded,
                "launch_seconds": time.perf_counter() - started, **measured,
            })  # fmt: skip
    print("Engines as the trainer named them:")
    for result in results:
        print(f"  {result['engine']}: {result['described']}")
    if options.json:
        with open(options.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
