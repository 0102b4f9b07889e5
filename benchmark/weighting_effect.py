"""What loss weighting does to what a model learns: LongAlign's claim in miniature, on a CPU.

The paper's argument: with packing and a token-mean loss, samples with long outputs dominate the gradient, so
long-input / short-output tasks are under-trained; weighting every sample equally (`loss_weighting="sequence"`)
recovers them while short-task ability holds. Here the tiny Llama of `longalign_hf.tiny` fine-tunes on a mix made in
code (`_weighting_tasks.py`) of two long-input / short-output tasks (which letter of a 512-1,536-letter text is the most
frequent, or missing: 2 target tokens) and two short-input / long-output tasks (sort letters, count from a to b:
65-257 target tokens). Under token weighting the long-input tasks hold about 1% of the target tokens; under sequence
weighting, half of the samples.

The initialisation of a seed is a base model: the tiny Llama pretrained for `--pretrain-steps` with a plain
language-modelling loss on unlabelled letter texts (no questions, no answers), as LongAlign fine-tunes base models that
already read long inputs. Every mode fine-tunes a fresh copy of that base for the same number of optimizer steps over
the same training set through `LongAlignSFTTrainer`: naive + token, pack + token, pack + sequence, sort + sequence.
Packing puts `--packs-per-step` packs of at most `--max-length` tokens in a step; naive and sorted batching take one
sample per micro-step and as many micro-steps as the packs of a step hold samples on average. The training set is
larger than what the steps consume in any mode (about 90% of it), so no mode repeats a sample. Pack + token and
pack + sequence train on the very same packs in the same order (the packing plan and its schedule depend only on the
lengths and the seed): only the weighting differs, so the script compares them seed by seed.

On the held-out split, per task: the mean loss over all answer tokens (the reply and its end-of-turn token) and the
exact match of the whole answer under teacher forcing (every answer token is the argmax given the reference before it),
which equals greedy decoding's exact match: greedy reproduces the answer, end token included, if and only if every
teacher-forced argmax is right. The verdict's rule was fixed before the first comparison (see `verdict`).

    python benchmark/weighting_effect.py                    # 3 seeds x 4 modes, ~15 minutes on 2 CPU cores
    python benchmark/weighting_effect.py --quick            # a smoke test: tiny data, 3 steps, 1 seed
    python benchmark/weighting_effect.py --out results.json --chart weighting_effect.png

`--chart PATH` (default: none) draws the per-task table as a PNG: answer loss and exact match per mode and task (mean,
whiskers min-max over seeds), chance on the 10-letter tasks; the base model's losses (5-10x) are in the title only.

The sizes were calibrated on whether anything is learned at all, with one mode (naive + token, seed 0) on each family
of tasks alone (once on the whole mix), never on a comparison of modes; BENCHMARKS.md lists the calibration runs. The
tasks outside the default mix (`--tasks lookup,needle,reverse`) are the ones that calibration found the tiny model does
not learn in the budget. With the defaults the long-input tasks too stayed at chance in every mode (BENCHMARKS.md §10):
in this budget the miniature cannot show whether sequence weighting recovers them.

This project's `"token"` weighting is the exact token mean over the whole optimizer step (`sum_i L_i / sum_i N_i`
over every micro-step), not the reference code's mean of per-pack token means, so naive + token and pack + token
optimise the same objective for the same samples and differ only in which samples share a step.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np
from _charts import command_line, grouped_bars, legend, machine, new_figure, save
from _lengths import print_header, print_table
from _weighting_tasks import CALIBRATION_TASKS, LONG_INPUT_TASKS, TASKS, MixSizes, make_mix, pretraining_texts

MODES = {
    "naive + token": ("naive", "token"),
    "pack + token": ("pack", "token"),
    "pack + sequence": ("pack", "sequence"),
    "sort + sequence": ("sort", "sequence"),
}
BASE = "base (before fine-tuning)"
# The answer of majority and absent is one of 10 letters, then the end token: chance is ln(10) / 2 nats per answer
# token and an exact match of 0.10.
CHANCE = {"tasks": ("majority", "absent"), "answer_loss": float(np.log(10) / 2), "exact_match": 0.10}


@dataclass(frozen=True)
class RunSettings:
    """Model and optimisation settings shared by every mode (see `main`'s flags for their meaning)."""

    steps: int = 300
    pretrain_steps: int = 150
    max_length: int = 2048
    packs_per_step: int = 1
    learning_rate: float = 1e-2
    hidden_size: int = 64
    num_layers: int = 2


def tokenize(records: list[dict], tokenizer, max_length: int):
    """The records' conversations as `input_ids` / `labels` (assistant tokens only), as the trainer prepares them."""
    import datasets

    from longalign_hf.data.sft_data import prepare_sft_dataset

    conversations = datasets.Dataset.from_list([{"messages": record["messages"]} for record in records])
    tokenized, report = prepare_sft_dataset(conversations, tokenizer, max_length)
    if len(tokenized) != len(records):
        raise RuntimeError(f"{len(records) - len(tokenized)} samples were dropped while tokenizing: {report}")
    return tokenized.select_columns(["input_ids", "labels"])


def language_modelling_set(texts: list[str], tokenizer):
    """Plain texts as `input_ids` with every token a target: the base model's pretraining data."""
    import datasets

    rows = [[tokenizer.bos_token_id, *tokenizer.encode(text, add_special_tokens=False)] for text in texts]
    return datasets.Dataset.from_dict({"input_ids": rows, "labels": rows})


def samples_per_step(lengths: list[int], max_length: int, packs_per_step: int) -> int:
    """Samples per optimizer step of naive and sorted batching: those of `packs_per_step` packs on average."""
    from longalign_hf import plan_packs

    packs = plan_packs(lengths, max_length, "bfd")
    return max(1, round(packs_per_step * len(lengths) / len(packs)))


def fit(model, dataset, tokenizer, settings: RunSettings, seed: int, batching: str, weighting: str, **sizes) -> dict:
    """Train `model` in place with `LongAlignSFTTrainer` for `sizes["max_steps"]` steps; seconds, tokens and losses."""
    from transformers.trainer_callback import PrinterCallback

    from longalign_hf import LongAlignConfig, LongAlignSFTTrainer

    with tempfile.TemporaryDirectory() as output_dir:
        args = LongAlignConfig(
            output_dir=output_dir, max_length=settings.max_length, batching=batching, loss_weighting=weighting,
            per_device_train_batch_size=1, learning_rate=settings.learning_rate, lr_scheduler_type="cosine",
            warmup_steps=0.03, adam_beta2=0.95, weight_decay=0.0, activation_checkpointing=False,
            save_strategy="no", logging_steps=max(sizes["max_steps"] // 5, 1), report_to="none", disable_tqdm=True,
            seed=seed, **sizes,
        )  # fmt: skip
        trainer = LongAlignSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)  # the per-step log lines; the script prints its own summary
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    if trainer.state.global_step != sizes["max_steps"]:
        raise RuntimeError(f"{batching} + {weighting} took {trainer.state.global_step} of {sizes['max_steps']} steps")
    history = trainer.state.log_history
    return {
        "seconds": seconds,
        "tokens": max(int(entry.get("num_tokens", 0)) for entry in history),
        "train_loss": [entry["loss"] for entry in history if "loss" in entry],
    }


def tiny_model(tokenizer, seed: int, settings: RunSettings, state: dict | None = None):
    """A fresh tiny Llama: random weights of `seed`, or `state` (the base model's weights) loaded into it."""
    from longalign_hf.tiny import build_tiny_model

    model = build_tiny_model(
        tokenizer, seed=seed, hidden_size=settings.hidden_size, num_layers=settings.num_layers,
        max_position_embeddings=settings.max_length,
    )  # fmt: skip
    model.config._attn_implementation = "sdpa"
    if state is not None:
        model.load_state_dict(state)
    return model


def base_model(tokenizer, seed: int, settings: RunSettings, texts: list[str]):
    """The initialisation of every mode for `seed`: the tiny Llama pretrained on `texts` (0 steps: random weights)."""
    model = tiny_model(tokenizer, seed, settings)
    if settings.pretrain_steps:
        fit(model, language_modelling_set(texts, tokenizer), tokenizer, settings, seed, "pack", "token",
            max_steps=settings.pretrain_steps, gradient_accumulation_steps=settings.packs_per_step)  # fmt: skip
    return model


def evaluate(model, heldout_set, tasks: list[str]) -> dict[str, dict[str, float]]:
    """Per task: mean loss over its answer tokens, teacher-forced exact match and token accuracy of the answers."""
    import torch

    model.eval()
    sums = {task: np.zeros(4) for task in dict.fromkeys(tasks)}  # loss sum, tokens, exact answers, correct tokens
    with torch.no_grad():
        for row, task in zip(heldout_set, tasks):
            input_ids = torch.tensor([row["input_ids"]])
            targets = torch.tensor(row["labels"][1:])
            logits = model(input_ids=input_ids).logits[0, :-1].float()
            mask = targets != -100
            losses = torch.nn.functional.cross_entropy(logits[mask], targets[mask], reduction="none")
            correct = logits[mask].argmax(-1) == targets[mask]
            sums[task] += [losses.sum().item(), mask.sum().item(), bool(correct.all()), correct.sum().item()]
    return {
        task: {"answer_loss": s[0] / s[1], "exact_match": s[2] / tasks.count(task), "token_accuracy": s[3] / s[1]}
        for task, s in sums.items()
    }


def run(seeds: list[int], modes: list[str], sizes: MixSizes, settings: RunSettings, tasks: tuple = TASKS) -> dict:
    """Make the mix, then for every seed build the base model, evaluate it, and fine-tune + evaluate every mode."""
    from longalign_hf.tiny import build_byte_tokenizer

    tokenizer = build_byte_tokenizer()
    train_records, heldout_records = make_mix(sizes, seed=0, tasks=tasks)
    train_set = tokenize(train_records, tokenizer, settings.max_length)
    heldout_set = tokenize(heldout_records, tokenizer, settings.max_length)
    heldout_tasks = [record["task"] for record in heldout_records]
    lengths = [len(ids) for ids in train_set["input_ids"]]
    step_samples = samples_per_step(lengths, settings.max_length, settings.packs_per_step)
    # Four texts per pretraining pack, more than a pack of the default sizes holds (about two): no text repeats.
    texts = pretraining_texts(settings.pretrain_steps * settings.packs_per_step * 4, sizes, seed=1)
    runs = []
    for seed in seeds:
        start = time.perf_counter()
        base = base_model(tokenizer, seed, settings, texts)
        metrics = evaluate(base, heldout_set, heldout_tasks)
        # Every mode starts from a fresh model loaded with these weights: a `copy.deepcopy` of a model that went
        # through TRL's trainer would keep forwarding through the original (TRL's fused LM head captures its
        # bound `forward`), so evaluation would score the base model.
        state = {name: tensor.detach().clone() for name, tensor in base.state_dict().items()}
        runs.append(
            {"mode": BASE, "seed": seed, "seconds": time.perf_counter() - start, "tokens": 0, "tasks": metrics}
        )
        for mode in modes:
            batching, weighting = MODES[mode]
            model = tiny_model(tokenizer, seed, settings, state)
            accumulation = settings.packs_per_step if batching == "pack" else step_samples
            run_stats = fit(model, train_set, tokenizer, settings, seed, batching, weighting,
                            max_steps=settings.steps, gradient_accumulation_steps=accumulation)  # fmt: skip
            metrics = evaluate(model, heldout_set, heldout_tasks)
            runs.append({"mode": mode, "seed": seed, **run_stats, "tasks": metrics})
            print(f"# {mode}, seed {seed}: {run_stats['seconds']:.0f} s, " + ", ".join(
                f"{task} {m['answer_loss']:.3f} / {m['exact_match']:.2f}" for task, m in metrics.items()
            ), flush=True)  # fmt: skip
    return {
        "sizes": asdict(sizes), "settings": asdict(settings), "seeds": seeds, "modes": modes, "tasks": list(tasks),
        "samples_per_step": {"pack": f"{settings.packs_per_step} pack(s)", "naive/sort": step_samples},
        "train_samples": len(train_records), "train_tokens": sum(lengths), "heldout_samples": len(heldout_records),
        "runs": runs,
    }  # fmt: skip


def _spread(values: list[float], digits: int) -> str:
    mean, low, high = np.mean(values), min(values), max(values)
    return f"{mean:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def paired_differences(results: dict, better: str, baseline: str, metric: str = "answer_loss") -> dict[str, list]:
    """Per task, `metric` of `better` minus that of `baseline`, seed by seed (same initialisation, same data)."""
    tasks = {(r["mode"], r["seed"]): r["tasks"] for r in results["runs"]}
    return {
        task: [tasks[(better, s)][task][metric] - tasks[(baseline, s)][task][metric] for s in results["seeds"]]
        for task in results["tasks"]
    }


def verdict(differences: dict[str, list[float]]) -> tuple[bool, str]:
    """Whether pack + sequence beats pack + token in the paper's direction, by a rule fixed before the first comparison.

    Two halves, both needed: every long-input task's answer loss is lower with sequence weighting in every seed, and no
    short-input task's is higher in every seed (a loss that is higher in every seed is not "within noise").
    """
    long_tasks = [task for task in differences if task in LONG_INPUT_TASKS]
    long_better = bool(long_tasks) and all(max(differences[task]) < 0 for task in long_tasks)
    short_worse = [task for task in differences if task not in LONG_INPUT_TASKS and min(differences[task]) > 0]
    halves = [
        "long-input tasks " + ("better in every seed" if long_better else "NOT better in every seed"),
        "short-input tasks " + (f"worse in every seed: {', '.join(short_worse)}" if short_worse else "within noise"),
    ]
    reproduced = long_better and not short_worse
    return reproduced, ("reproduced" if reproduced else "not reproduced") + f" ({'; '.join(halves)})"


def print_report(results: dict) -> None:
    """The per-task table, the per-mode table and the paired comparison of pack + sequence with pack + token."""
    runs, seeds = results["runs"], results["seeds"]
    modes = [BASE, *results["modes"]]
    print(
        f"\nHeld-out split ({results['heldout_samples']} samples); answer loss (nats per answer token) and teacher-forced"
        f" exact match: mean (min-max) over seeds {', '.join(map(str, seeds))}\n"
    )
    rows = []
    for task in results["tasks"]:
        kind = "long input" if task in LONG_INPUT_TASKS else "short input"
        for mode in modes:
            tasks = [r["tasks"][task] for r in runs if r["mode"] == mode]
            rows.append([
                task, kind, mode, _spread([t["answer_loss"] for t in tasks], 3),
                _spread([t["exact_match"] for t in tasks], 2), _spread([t["token_accuracy"] for t in tasks], 3),
            ])  # fmt: skip
    print_table(["task", "kind", "mode", "answer loss", "exact match", "token accuracy"], rows)
    print(
        "\nChance on the long-input tasks (the answer is one of 10 letters): answer loss ln(10) / 2 = 1.151, exact match"
        f" 0.10. Base model: {_spread([r['seconds'] for r in runs if r['mode'] == BASE], 0)} s per seed (pretraining and"
        f" its evaluation). Fine-tuning: {results['settings']['steps']} optimizer steps per run, a step = "
        f"{results['samples_per_step']['pack']} (pack) or {results['samples_per_step']['naive/sort']} samples "
        "(naive, sort)\n"
    )
    rows = []
    for mode in results["modes"]:
        mode_runs = [r for r in runs if r["mode"] == mode]
        tokens = [r["tokens"] for r in mode_runs]
        rows.append([mode, _spread([r["seconds"] for r in mode_runs], 0), f"{np.mean(tokens):,.0f}"])
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
        print(f"\nPaper's direction: {results['verdict']}")


def chart(results: dict, path: str, command: str):
    """Draw the per-task table's answer loss and exact match, a bar per fine-tuned mode and task; return the figure."""
    runs, tasks, seeds, settings = results["runs"], results["tasks"], results["seeds"], results["settings"]
    figure, panels = new_figure(panels=2, width=7.4, height=5.2)
    columns = (("answer_loss", "answer loss (nats per answer token)", 3), ("exact_match", "exact match (0-1)", 2))
    for axes, (metric, label, digits) in zip(panels, columns):
        values = {mode: [[r["tasks"][task][metric] for r in runs if r["mode"] == mode] for task in tasks]
                  for mode in results["modes"]}  # fmt: skip
        groups = [f"{task}\n({'long' if task in LONG_INPUT_TASKS else 'short'} input)" for task in tasks]
        series = {mode: [float(np.mean(v)) for v in per_task] for mode, per_task in values.items()}
        labels = {mode: [f"{mean:.{digits}f}" for mean in means] for mode, means in series.items()}
        spread = {mode: [(min(v), max(v)) for v in per_task] for mode, per_task in values.items()}
        grouped_bars(axes, groups, series, labels, spread if len(seeds) > 1 else None, label_rotation=90)
        chance = [index for index, task in enumerate(tasks) if task in CHANCE["tasks"]]
        for index in chance:
            axes.hlines(CHANCE[metric], index - 0.45, index + 0.45, colors="0.2", linestyles="--",
                        label="chance" if index == chance[0] else None)  # fmt: skip
        axes.set(ylabel=label, xlabel="held-out task" + ("; whiskers: min-max over seeds" if len(seeds) > 1 else ""))
    panels[1].set(ylim=(0, 1.25), yticks=[0, 0.2, 0.4, 0.6, 0.8, 1.0])
    handles, names = panels[0].get_legend_handles_labels()
    chance = (f"chance on {', '.join(task for task in tasks if task in CHANCE['tasks'])}:\nloss "
              f"{CHANCE['answer_loss']:.3f}, exact match {CHANCE['exact_match']:.2f}")  # fmt: skip
    legend(panels[1], handles, [chance if name == "chance" else name for name in names], title="mode")
    base = [r["tasks"][task]["answer_loss"] for r in runs if r["mode"] == BASE for task in tasks]
    title = (
        f"Loss weighting's effect on a tiny Llama (hidden {settings['hidden_size']}, {settings['num_layers']} "
        "layers): held-out answer loss and teacher-forced exact match, "
        + (f"mean over seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}")
        + f"\n{settings['steps']} fine-tuning steps per mode; {machine()}; base model (not drawn): answer loss "
        f"{min(base):.2f}-{max(base):.2f}"
    )
    save(figure, path, title, command)
    return figure


def _range(text: str) -> tuple[int, int]:
    low, high = (int(value) for value in text.split("-"))
    return low, high


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = RunSettings()
    parser.add_argument(
        "--seeds", default="0,1,2", help="comma-separated seeds: initialisation, pretraining and fine-tuning order"
    )
    parser.add_argument("--steps", type=int, default=defaults.steps, help="fine-tuning optimizer steps of every mode")
    parser.add_argument(
        "--pretrain-steps", type=int, default=defaults.pretrain_steps, help="base model's steps (0: random weights)"
    )
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from: {', '.join(MODES)}")
    parser.add_argument("--packs-per-step", type=int, default=defaults.packs_per_step, help="packs per optimizer step")
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--hidden-size", type=int, default=defaults.hidden_size, help="of the tiny Llama")
    parser.add_argument("--layers", type=int, default=defaults.num_layers, help="of the tiny Llama")
    parser.add_argument(
        "--tasks", default=",".join(TASKS), help=f"comma-separated, from: {', '.join(TASKS + CALIBRATION_TASKS)}"
    )
    parser.add_argument("--context-tokens", default="512-1536", help="range of the long-input tasks' contexts")
    parser.add_argument("--answer-tokens", default="64-256", help="range of the short-input tasks' answers")
    parser.add_argument("--train-per-task", type=int, default=MixSizes.train_per_task, help="training samples")
    parser.add_argument("--max-length", type=int, default=defaults.max_length, help="tokens per pack")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared machine)")
    parser.add_argument("--quick", action="store_true", help="a smoke test: tiny data, 3 steps, seed 0")
    parser.add_argument("--out", help="write the results (settings, every run, the verdict) to this JSON file")
    parser.add_argument("--chart", metavar="PATH", help="also draw the per-task table as a PNG chart at PATH")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    print_header("benchmark/weighting_effect.py", argv)
    modes = [mode.strip() for mode in args.modes.split(",")]
    tasks = tuple(task.strip() for task in args.tasks.split(","))
    unknown = [mode for mode in modes if mode not in MODES] + [
        task for task in tasks if task not in TASKS + CALIBRATION_TASKS
    ]
    if unknown:
        parser.error(
            f"unknown mode(s) or task(s) {unknown}; modes: {', '.join(MODES)}; tasks: {', '.join(TASKS + CALIBRATION_TASKS)}"
        )
    sizes = MixSizes(
        context_tokens=_range(args.context_tokens),
        answer_tokens=_range(args.answer_tokens),
        train_per_task=args.train_per_task,
    )
    settings = RunSettings(
        steps=args.steps, pretrain_steps=args.pretrain_steps, max_length=args.max_length, packs_per_step=args.packs_per_step,
        learning_rate=args.learning_rate,
        hidden_size=args.hidden_size, num_layers=args.layers,
    )  # fmt: skip
    seeds = [int(seed) for seed in args.seeds.split(",")]
    if args.quick:
        sizes = MixSizes(context_tokens=(64, 160), answer_tokens=(8, 24), train_per_task=8, heldout_per_task=2)
        settings = RunSettings(steps=3, pretrain_steps=3, max_length=512, hidden_size=32)
        seeds = [0]
    logging.getLogger("longalign_hf").setLevel(logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results = run(seeds, modes, sizes, settings, tasks)
    results["wall_seconds"] = time.perf_counter() - start
    print_report(results)
    print(f"\nWall time of the whole command: {results['wall_seconds'] / 60:.1f} min")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    if args.chart:
        chart(results, args.chart, command_line("weighting_effect.py", argv))
    return results


if __name__ == "__main__":
    main()
