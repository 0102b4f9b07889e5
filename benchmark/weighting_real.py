"""What loss weighting does to what a real model learns: LongAlign's claim on SmolLM2-135M-Instruct, on a CPU.

The sibling of `weighting_effect.py` (whose tiny random model never learned its long-input tasks, BENCHMARKS.md §10)
with a real, pretrained model as the base. The mix (`_real_weighting_tasks.py`, made in code from the Python
documentation) has two long-input / short-output tasks (find the asked fact among three in a 0.5k-1.5k-token document;
answers of 1-7 tokens) and two short-input / long-output tasks (continue a documentation passage, count from A to B;
answers of ~70-240 tokens), so the long-input tasks hold a few percent of the target tokens, as in LongAlign's data.

Only the upper `--trainable-layers` decoder layers train (all their weights; the rest of the model, embeddings and
tied head included, stays frozen), through `LongAlignSFTTrainer`: pack + token and pack + sequence (and naive + token,
the paper's reference, with `--modes`) fine-tune a fresh copy of the base for the same steps over the same training
set; the two packed modes train on the very same packs in the same order, so only the weighting differs and the script
compares them seed by seed. A seed sets the data order and the packs; the base is the same pretrained model.

On the held-out split, per task: the mean loss over the answer tokens (the reply and its end-of-turn token) and the
teacher-forced exact match of the whole answer (equal to greedy decoding's). The frozen lower layers compute the same
thing in every model, so the held-out inputs of the first trainable layer are computed once, with the base, and each
model is scored from there (the script checks on one held-out row that this equals the full forward).

The decision rule was fixed before the first comparison (see `verdict`).

    longalign model fetch --out models/smollm2-135m-instruct        # once: the model, offline
    python benchmark/weighting_real.py --model models/smollm2-135m-instruct
    python benchmark/weighting_real.py --quick                       # a smoke test: the tiny model, seconds
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import numpy as np
from _lengths import print_header, print_table
from _real_weighting_tasks import LONG_INPUT_TASKS, TASKS, MixSizes, make_mix
from weighting_effect import RunSettings, _spread, fit, paired_differences, tokenize

MODES = {
    "naive + token": ("naive", "token"),
    "pack + token": ("pack", "token"),
    "pack + sequence": ("pack", "sequence"),
}
BASE = "base (before fine-tuning)"


def load_model(path: str | None, seed: int, trainable_layers: int):
    """The base model (`path`, fp32; `None`: the tiny Llama of `longalign_hf.tiny`) with only its upper
    `trainable_layers` decoder layers trainable; and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if path is None:
        from longalign_hf.tiny import build_byte_tokenizer, build_tiny_model

        tokenizer = build_byte_tokenizer()
        model = build_tiny_model(tokenizer, seed=seed, hidden_size=32, num_layers=3, max_position_embeddings=8192)
        model.config._attn_implementation = "sdpa"
    else:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    layers = model.model.layers
    if not 0 < trainable_layers <= len(layers):
        raise ValueError(f"--trainable-layers {trainable_layers}: the model has {len(layers)} decoder layers")
    model.requires_grad_(False)
    layers[len(layers) - trainable_layers :].requires_grad_(True)
    return model, tokenizer


def upper_layer_inputs(model, heldout_set, trainable_layers: int) -> list:
    """Per held-out row, the hidden states that enter the first trainable layer (the frozen layers' output)."""
    import torch

    first = len(model.model.layers) - trainable_layers
    with torch.no_grad():
        return [
            model.model(input_ids=torch.tensor([row["input_ids"]]), output_hidden_states=True).hidden_states[first]
            for row in heldout_set
        ]


def upper_logits(model, hidden, trainable_layers: int):
    """The model's logits from `hidden`, the input of its first trainable layer: only the upper layers run."""
    inner = model.model
    every_layer = inner.layers
    inner.layers = every_layer[len(every_layer) - trainable_layers :]
    try:
        return model(inputs_embeds=hidden, use_cache=False).logits
    finally:
        inner.layers = every_layer


def evaluate(model, heldout_set, hidden_inputs: list, tasks: list[str], trainable_layers: int) -> dict:
    """Per task: mean loss over its answer tokens, teacher-forced exact match and token accuracy of the answers."""
    import torch

    model.eval()
    sums = {task: np.zeros(4) for task in dict.fromkeys(tasks)}  # loss sum, tokens, exact answers, correct tokens
    with torch.no_grad():
        for row, hidden, task in zip(heldout_set, hidden_inputs, tasks):
            targets = torch.tensor(row["labels"][1:])
            logits = upper_logits(model, hidden, trainable_layers)[0, :-1].float()
            mask = targets != -100
            losses = torch.nn.functional.cross_entropy(logits[mask], targets[mask], reduction="none")
            correct = logits[mask].argmax(-1) == targets[mask]
            sums[task] += [losses.sum().item(), mask.sum().item(), bool(correct.all()), correct.sum().item()]
    return {
        task: {"answer_loss": s[0] / s[1], "exact_match": s[2] / tasks.count(task), "token_accuracy": s[3] / s[1]}
        for task, s in sums.items()
    }


def check_upper_logits(model, heldout_set, hidden_inputs: list, trainable_layers: int) -> float:
    """Largest difference between the logits from the cached layer inputs and the full forward, on the shortest row."""
    import torch

    index = min(range(len(heldout_set)), key=lambda i: len(heldout_set[i]["input_ids"]))
    with torch.no_grad():
        full = model(input_ids=torch.tensor([heldout_set[index]["input_ids"]])).logits
        upper = upper_logits(model, hidden_inputs[index], trainable_layers)
    difference = (full - upper).abs().max().item()
    if difference > 1e-3:
        raise RuntimeError(f"scoring from the cached layer inputs differs from the full forward by {difference}")
    return difference


def verdict(differences: dict[str, list[float]]) -> tuple[str, str]:
    """The outcome of pack + sequence against pack + token, by a rule fixed before the first comparison.

    `differences[task]` holds answer loss (pack + sequence minus pack + token) per seed.
    - "confirmed": every long-input task's answer loss is lower with sequence weighting in every seed, and no
      short-input task's is higher in every seed;
    - "confirmed at a cost": long-input tasks lower in every seed, some short-input task higher in every seed;
    - "refuted": every long-input task's answer loss is higher with sequence weighting in every seed;
    - "no effect": anything else (the differences change sign from seed to seed or from task to task).
    """
    long_tasks = [task for task in differences if task in LONG_INPUT_TASKS]
    short_worse = [task for task in differences if task not in LONG_INPUT_TASKS and min(differences[task]) > 0]
    if long_tasks and all(max(differences[task]) < 0 for task in long_tasks):
        outcome = "confirmed at a cost" if short_worse else "confirmed"
    elif long_tasks and all(min(differences[task]) > 0 for task in long_tasks):
        outcome = "refuted"
    else:
        outcome = "no effect"
    short = f"short-input tasks worse in every seed: {', '.join(short_worse)}" if short_worse else "short-input tasks"
    short += "" if short_worse else " not worse in every seed"
    long_signs = "; ".join(f"{task} {', '.join(f'{d:+.3f}' for d in differences[task])}" for task in long_tasks)
    return outcome, f"{outcome} (long-input answer loss per seed: {long_signs}; {short})"


def run(path: str | None, seeds: list[int], modes: list[str], sizes: MixSizes, settings: dict) -> dict:
    """Make the mix; score the base; for every seed fine-tune and score every mode from a fresh copy of the base."""
    trainable = settings["trainable_layers"]
    base, tokenizer = load_model(path, 0, trainable)
    train_records, heldout_records = make_mix(sizes, seed=0)
    train_set = tokenize(train_records, tokenizer, settings["max_length"])
    heldout_set = tokenize(heldout_records, tokenizer, settings["max_length"])
    heldout_tasks = [record["task"] for record in heldout_records]
    start = time.perf_counter()
    hidden_inputs = upper_layer_inputs(base, heldout_set, trainable)
    check = check_upper_logits(base, heldout_set, hidden_inputs, trainable)
    metrics = evaluate(base, heldout_set, hidden_inputs, heldout_tasks, trainable)
    runs = [{"mode": BASE, "seed": None, "seconds": time.perf_counter() - start, "tokens": 0, "tasks": metrics}]
    lengths = [len(ids) for ids in train_set["input_ids"]]
    targets = {task: 0 for task in TASKS}
    for record, labels in zip(train_records, train_set["labels"]):
        targets[record["task"]] += sum(label != -100 for label in labels)
    del base
    fit_settings = RunSettings(
        max_length=settings["max_length"], learning_rate=settings["learning_rate"]
    )  # what fit reads
    for seed in seeds:
        for mode in modes:
            batching, weighting = MODES[mode]
            model, _ = load_model(path, 0, trainable)
            accumulation = 1 if batching == "pack" else settings["naive_samples_per_step"]
            run_stats = fit(model, train_set, tokenizer, fit_settings, seed, batching, weighting,
                            max_steps=settings["steps"], gradient_accumulation_steps=accumulation)  # fmt: skip
            metrics = evaluate(model, heldout_set, hidden_inputs, heldout_tasks, trainable)
            runs.append({"mode": mode, "seed": seed, **run_stats, "tasks": metrics})
            print(f"# {mode}, seed {seed}: {run_stats['seconds']:.0f} s, {run_stats['tokens']} tokens, " + ", ".join(
                f"{task} {m['answer_loss']:.3f} / {m['exact_match']:.2f}" for task, m in metrics.items()
            ), flush=True)  # fmt: skip
    return {
        "model": path or "tiny (longalign_hf.tiny)", "sizes": sizes.__dict__, "settings": settings, "seeds": seeds,
        "modes": modes, "tasks": list(TASKS), "train_samples": len(train_records), "train_tokens": sum(lengths),
        "target_tokens": targets, "heldout_samples": len(heldout_records), "cached_scoring_difference": check,
        "runs": runs,
    }  # fmt: skip


def print_report(results: dict) -> None:
    """The per-task table, the per-mode table and the paired comparison of pack + sequence with pack + token."""
    runs, seeds, settings = results["runs"], results["seeds"], results["settings"]
    share = sum(results["target_tokens"][t] for t in LONG_INPUT_TASKS) / sum(results["target_tokens"].values())
    print(
        f"\nTraining set: {results['train_samples']} samples, {results['train_tokens']:,} tokens; the long-input tasks"
        f" hold {share:.1%} of the target tokens. Held-out split ({results['heldout_samples']} samples): answer loss"
        " (nats per answer token) and teacher-forced exact match, mean (min-max) over seeds"
        f" {', '.join(map(str, seeds))}\n"
    )
    rows = []
    for task in results["tasks"]:
        kind = "long input" if task in LONG_INPUT_TASKS else "short input"
        for mode in [BASE, *results["modes"]]:
            tasks = [r["tasks"][task] for r in runs if r["mode"] == mode]
            rows.append([
                task, kind, mode, _spread([t["answer_loss"] for t in tasks], 3),
                _spread([t["exact_match"] for t in tasks], 2), _spread([t["token_accuracy"] for t in tasks], 3),
            ])  # fmt: skip
    print_table(["task", "kind", "mode", "answer loss", "exact match", "token accuracy"], rows)
    print(
        f"\nFine-tuning: {settings['steps']} optimizer steps per run, a step = 1 pack of {settings['max_length']}"
        " tokens"
        f" (pack) or {settings['naive_samples_per_step']} samples (naive); the upper {settings['trainable_layers']}"
        f" layers train, AdamW lr {settings['learning_rate']}, cosine\n"
    )
    rows = []
    for mode in results["modes"]:
        mode_runs = [r for r in runs if r["mode"] == mode]
        rows.append(
            [mode, _spread([r["seconds"] for r in mode_runs], 0), f"{np.mean([r['tokens'] for r in mode_runs]):,.0f}"]
        )
    print_table(["mode", "wall seconds per run (fine-tuning)", "tokens trained"], rows)
    if {"pack + token", "pack + sequence"} <= set(results["modes"]):
        differences = paired_differences(results, "pack + sequence", "pack + token")
        exact = paired_differences(results, "pack + sequence", "pack + token", "exact_match")
        print(
            "\npack + sequence minus pack + token, seed by seed (answer loss: negative = sequence weighting better)\n"
        )
        print_table(
            ["task", "kind", "answer loss per seed", "mean", "exact match, mean"],
            [[task, "long input" if task in LONG_INPUT_TASKS else "short input",
              ", ".join(f"{d:+.3f}" for d in diffs), f"{np.mean(diffs):+.3f}", f"{np.mean(exact[task]):+.2f}"]
             for task, diffs in differences.items()],
        )  # fmt: skip
        results["verdict"] = verdict(differences)[1]
        print(f"\nThe paper's claim: {results['verdict']}")


def _range(text: str) -> tuple[int, int]:
    low, high = (int(value) for value in text.split("-"))
    return low, high


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default="models/smollm2-135m-instruct",
        help="the base model folder (`longalign model fetch --out models/smollm2-135m-instruct` writes it) or Hub id",
    )  # fmt: skip
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds: data order and packs")
    parser.add_argument(
        "--modes", default="pack + token,pack + sequence", help=f"comma-separated, from: {', '.join(MODES)}"
    )
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps of every mode")
    parser.add_argument("--max-length", type=int, default=1536, help="tokens per pack (a step is one pack)")
    parser.add_argument("--naive-samples-per-step", type=int, default=6, help="naive batching: samples per step")
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--trainable-layers", type=int, default=4, help="upper decoder layers that train")
    parser.add_argument("--context-chars", default="2200-4400", help="long-input documents (~4.4 characters a token)")
    parser.add_argument("--answer-chars", default="500-1000", help="short-input answers")
    parser.add_argument("--train-per-task", type=int, default=MixSizes.train_per_task)
    parser.add_argument("--heldout-per-task", type=int, default=MixSizes.heldout_per_task)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke test: the tiny model, tiny data, 2 steps, seed 0"
    )
    parser.add_argument("--out", help="write the results (settings, every run, the verdict) to this JSON file")
    args = parser.parse_args(argv)
    print_header("benchmark/weighting_real.py", sys.argv[1:] if argv is None else argv)
    modes = [mode.strip() for mode in args.modes.split(",")]
    if any(mode not in MODES for mode in modes):
        parser.error(f"unknown mode in {modes}; choose from: {', '.join(MODES)}")
    sizes = MixSizes(
        context_chars=_range(args.context_chars), answer_chars=_range(args.answer_chars),
        train_per_task=args.train_per_task, heldout_per_task=args.heldout_per_task,
    )  # fmt: skip
    settings = {
        "steps": args.steps, "max_length": args.max_length, "naive_samples_per_step": args.naive_samples_per_step,
        "learning_rate": args.learning_rate, "trainable_layers": args.trainable_layers,
    }  # fmt: skip
    seeds, path = [int(seed) for seed in args.seeds.split(",")], args.model
    if args.quick:
        sizes = MixSizes(context_chars=(300, 600), answer_chars=(64, 160), train_per_task=6, heldout_per_task=2)
        settings.update(steps=2, max_length=1024, trainable_layers=2, learning_rate=1e-2)
        seeds, path = [0], None
    logging.getLogger("longalign_hf").setLevel(logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results = run(path, seeds, modes, sizes, settings)
    results["wall_seconds"] = time.perf_counter() - start
    print_report(results)
    print(f"\nWall time of the whole command: {results['wall_seconds'] / 60:.1f} min")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
