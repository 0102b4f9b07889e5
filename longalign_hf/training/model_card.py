"""The model card a LongAlign run leaves next to its weights: `README.md` with Hub metadata and what was done.

`LongAlignSFTTrainer.save_model` (and `create_model_card`, which `push_to_hub` and TRL's checkpoints call) writes it
on the main process. The card names the base model and the training data with its token statistics, the LongAlign
settings, the packing the run measured (fill, samples per pack, step balance), the hardware and time, the library
versions, the paper's citation and tags. It has a place (`EVALUATION_ANCHOR`) where `longalign eval ... --model
FOLDER` adds its results (`longalign_hf.evaluation.model_card`).

The card is built from a plain dict of facts (`training_card`), so what it says can be checked without training;
`collect_training_facts` gathers them from a trainer. Light at import (numpy and `huggingface_hub` load when used): the
evaluation commands import it before they know what will run.
"""

from __future__ import annotations

import datetime
import os
import platform
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from longalign_hf.data.longbench_chat.format import CITATION
from longalign_hf.public_names import hub_id, public_name
from longalign_hf.training.engines import describe_engine

CARD_NAME = "README.md"
# Evaluation sections go right above this line; a card without it gets an evaluation section at its end.
EVALUATION_ANCHOR = "<!-- longalign:evaluation -->"
PAPER_URL = "https://arxiv.org/abs/2401.18058"
_LIBRARIES = ("torch", "transformers", "trl", "datasets", "accelerate", "peft", "huggingface_hub")


def data_statistics(rows: int, tokenized) -> dict[str, Any]:
    """Token statistics of the training set as trained: `rows` read, samples kept, dropped and truncated, tokens,
    target tokens (when the set was tokenized from `messages`) and the distribution of sample lengths."""
    import numpy as np

    columns = tokenized.column_names
    table = tokenized.select_columns([c for c in ("length", "num_target_tokens", "truncated") if c in columns])
    table = table.with_format("arrow")[:]
    lengths = table["length"].to_numpy().astype(np.int64)
    return {
        "rows": rows,
        "samples": len(lengths),
        "dropped": rows - len(lengths),
        "truncated": int(table["truncated"].to_numpy().sum()) if "truncated" in columns else None,
        "tokens": int(lengths.sum()),
        "target_tokens": int(table["num_target_tokens"].to_numpy().sum()) if "num_target_tokens" in columns else None,
        "length_min": int(lengths.min()),
        "length_median": float(np.median(lengths)),
        "length_mean": float(lengths.mean()),
        "length_p90": float(np.percentile(lengths, 90)),
        "length_max": int(lengths.max()),
    }


def library_versions() -> dict[str, str]:
    """Versions of longalign-hf and the libraries a run depends on (those installed)."""
    from longalign_hf import __version__

    versions = {"longalign-hf": __version__}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _device_name(device) -> str:
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return f"CPU ({platform.machine() or 'unknown'}, {cores} cores)"
    return device.type.upper()


def _activation_checkpointing(trainer) -> str:
    """Whose activation checkpointing ran: "fsdp" (FSDP's own, which turns the trainer's off), "trainer" or "off"."""
    if getattr(trainer, "is_fsdp_enabled", False) and trainer.accelerator.state.fsdp_plugin.activation_checkpointing:
        return "fsdp"
    return "trainer" if trainer.args.activation_checkpointing else "off"


def collect_training_facts(
    trainer,
    model_name: str,
    dataset_names: Sequence[str],
    data: dict | None,
    packing: dict | None,
    tags: Sequence[str],
) -> dict[str, Any]:
    """What `training_card` needs, read from a `LongAlignSFTTrainer` (its arguments, model, accelerator and state)
    and the data and packing statistics it measured."""
    args, model = trainer.args, trainer.model
    adapter = None
    if hasattr(model, "peft_config"):
        config = next(iter(model.peft_config.values()))
        adapter = f"{config.peft_type.value if hasattr(config.peft_type, 'value') else config.peft_type}"
        if getattr(config, "r", None) is not None:
            adapter += f" (r={config.r}, alpha={config.lora_alpha})"
    summary = next((entry for entry in reversed(trainer.state.log_history) if "train_runtime" in entry), {})
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    return {
        "model_name": model_name,
        "base_model": getattr(model.config, "_name_or_path", "") or None,
        "architecture": (model.config.architectures or [type(model).__name__])[0],
        # ZeRO-3 leaves each process a shard: `ds_numel` is the whole parameter's size.
        "parameters": sum(
            getattr(parameter, "ds_numel", None) or parameter.numel() for parameter in model.parameters()
        ),
        "adapter": adapter,
        "datasets": list(dataset_names),
        "data": data,
        "settings": {
            "batching": args.batching,
            "loss_weighting": args.loss_weighting,
            "pack_planner": args.pack_planner,
            "pack_schedule": args.pack_schedule,
            "max_length": args.max_length,
            "overflow": args.overflow,
            "attention": model.config._attn_implementation,
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "num_processes": trainer.accelerator.num_processes,
            "sp_size": getattr(trainer, "_sp_size", 1),
            "learning_rate": args.learning_rate,
            "lr_scheduler_type": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
            "warmup_steps": args.warmup_steps,
            "optim": str(getattr(args.optim, "value", args.optim)),
            "adam_betas": (args.adam_beta1, args.adam_beta2),
            "weight_decay": args.weight_decay,
            "num_train_epochs": args.num_train_epochs,
            "max_steps": args.max_steps,
            "precision": precision,
            "activation_checkpointing": _activation_checkpointing(trainer),
            "seed": args.seed,
        },
        "packing": packing,
        "hardware": {
            "devices": f"{trainer.accelerator.num_processes} x {_device_name(trainer.accelerator.device)}",
            "engine": describe_engine(trainer.accelerator, getattr(trainer, "_sp_size", 1)),
        },
        "training": {
            "runtime_seconds": summary.get("train_runtime"),
            "train_loss": summary.get("train_loss"),
            "steps": trainer.state.global_step,
            "max_steps": trainer.state.max_steps,
            "epochs": trainer.state.epoch,
            "tokens": getattr(trainer, "_total_train_tokens", None),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        },
        "versions": library_versions(),
        "tags": list(dict.fromkeys(tags)),
    }


def _table(header: tuple[str, str], rows: Sequence[tuple[str, Any]]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    return "\n".join(lines + [f"| {name} | {value} |" for name, value in rows])


def _number(value: float | int | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if digits or isinstance(value, float) else f"{value:,}"


def _warmup(steps: float) -> str:
    return f"{steps:g} of the steps" if 0 < steps < 1 else f"{steps:g} steps"


def _base_sentence(facts: dict[str, Any]) -> str:
    base, size = facts["base_model"], f"{facts['architecture']}, {facts['parameters']:,} parameters"
    if base is None:
        origin = f"a {facts['architecture']} initialised at random in code ({facts['parameters']:,} parameters; no "
        origin += "pretrained base model)"
    elif hub_id(base):
        origin = f"[{base}](https://huggingface.co/{base}) ({size})"
    else:
        origin = f"the local checkpoint `{public_name(base)}` ({size})"
    if facts["adapter"]:
        lead = f"This is a {facts['adapter']} adapter on {origin}"
    else:
        lead = f"This is {origin}" if base is None else f"This is a fine-tune of {origin}"
    return (
        f"{lead}, trained with the [LongAlign]({PAPER_URL}) recipe for long-context alignment (Bai et al., 2024) by "
        f"longalign-hf {facts['versions']['longalign-hf']}."
    )


def _data_section(facts: dict[str, Any]) -> str:
    names = [f"[{name}](https://huggingface.co/datasets/{name})" if hub_id(name) else f"`{public_name(name)}`"
             for name in facts["datasets"]]  # fmt: skip
    listed = ", ".join(names) if names else "not named (pass `dataset_names` to `LongAlignSFTTrainer`)"
    data = facts["data"]
    if data is None:
        return f"## Training data\n\nData sets: {listed}. No training data set was given to the trainer."
    truncated = "-" if data["truncated"] is None else _number(data["truncated"])
    rows = [
        ("rows read", _number(data["rows"])),
        ("samples trained", _number(data["samples"])),
        ("rows dropped (bad row, over max_length, no target token)", _number(data["dropped"])),
        ("samples truncated to max_length", truncated),
        ("tokens", _number(data["tokens"])),
        ("target (assistant) tokens", _number(data["target_tokens"])),
        (
            "sample length in tokens: min / median / mean / p90 / max",
            " / ".join(
                _number(data[key])
                for key in ("length_min", "length_median", "length_mean", "length_p90", "length_max")
            ),
        ),
    ]
    return (
        f"## Training data\n\nData sets: {listed}. Token statistics of the training set as trained (after the "
        f"chat template, truncation and drops; a mixture is counted as one set):\n\n{_table(('', 'value'), rows)}"
    )


def _settings_section(facts: dict[str, Any]) -> str:
    s = facts["settings"]
    weighting = {
        "sequence": "every sample counts equally: `(1/M) * sum_i L_i / N_i` over the global batch (LongAlign)",
        "token": "every target token counts equally: `sum_i L_i / sum_i N_i` (TRL's default)",
    }[s["loss_weighting"]]
    sp_size = s.get("sp_size", 1)
    replicas = s["num_processes"] // sp_size  # the ranks of an SP group share each row
    global_batch = s["per_device_train_batch_size"] * s["gradient_accumulation_steps"] * replicas
    unit = "packs" if s["batching"] == "pack" else "samples"
    rows = [
        ("batching", f"`{s['batching']}`"),
        ("loss weighting", f"`{s['loss_weighting']}`: {weighting}"),
        ("pack planner", f"`{s['pack_planner']}`" + ("" if s["batching"] == "pack" else " (not used)")),
        ("pack schedule", f"`{s['pack_schedule']}`" + ("" if s["batching"] == "pack" else " (not used)")),
        ("max length", _number(s["max_length"])),
        ("overflow", f"`{s['overflow']}`"),
        ("attention", f"`{s['attention']}`"),
        (
            "global batch",
            f"{global_batch} {unit} ({s['per_device_train_batch_size']} per device x "
            f"{s['gradient_accumulation_steps']} accumulation steps x {replicas} data-parallel replica(s))",
        ),
        (
            "optimizer",
            f"{s['optim']}, learning rate {s['learning_rate']:g}, {s['lr_scheduler_type']} schedule, warmup "
            f"{_warmup(s['warmup_steps'])}, betas {tuple(s['adam_betas'])}, weight decay {s['weight_decay']:g}",
        ),
        ("epochs", f"{s['num_train_epochs']:g}" + (f" (max_steps {s['max_steps']})" if s["max_steps"] > 0 else "")),
        ("precision", s["precision"]),
        (
            "activation checkpointing",
            {"trainer": "on", "fsdp": "on (FSDP's own)"}.get(s["activation_checkpointing"], "off"),
        ),
        ("seed", str(s["seed"])),
    ]
    if sp_size > 1:
        rows.insert(7, ("sequence parallelism", f"DeepSpeed Ulysses, sp_size {sp_size}: each row is split into "
                        f"{_number(s['max_length'] // sp_size)} tokens per rank"))  # fmt: skip
    return f"## LongAlign settings\n\n{_table(('setting', 'value'), rows)}"


def _packing_section(facts: dict[str, Any]) -> str:
    p = facts["packing"]
    if p is None:
        return f"## Packing\n\nNo packing: `batching={facts['settings']['batching']}`."
    rows = [
        ("packs", _number(p["num_packs"])),
        ("samples", _number(p["num_samples"])),
        (
            "samples per pack: mean / min / max",
            f"{p['samples_per_pack_mean']:.2f} / {p['samples_per_pack_min']} / {p['samples_per_pack_max']}",
        ),
        ("fill (tokens / (packs x max length))", f"{p['fill']:.4f}"),
        (
            "estimated step balance (useful / held compute): balanced / random schedule",
            f"{p['step_balance']['balanced']:.3f} / {p['step_balance']['random']:.3f}",
        ),
    ]
    return f"## Packing (measured)\n\n{_table(('', 'value'), rows)}"


def _hardware_section(facts: dict[str, Any]) -> str:
    h, t = facts["hardware"], facts["training"]
    runtime = t["runtime_seconds"]
    rows = [
        ("devices", h["devices"]),
        ("engine", h["engine"]),
        (
            "training time",
            "-" if runtime is None else f"{datetime.timedelta(seconds=round(runtime))} ({runtime:.1f} s)",
        ),
        ("optimizer steps", f"{t['steps']} of {t['max_steps']}"),
        ("epochs", "-" if t["epochs"] is None else f"{t['epochs']:.2f}"),
        ("tokens trained (padding excluded)", _number(t["tokens"])),
        ("final training loss (mean over the run)", "-" if t["train_loss"] is None else f"{t['train_loss']:.4f}"),
        ("card written", t["date"]),
    ]
    return f"## Hardware and time\n\n{_table(('', 'value'), rows)}"


def training_card(facts: dict[str, Any]) -> str:
    """The model card (metadata and Markdown) of a LongAlign run, from `collect_training_facts`' dict."""
    from huggingface_hub import ModelCardData

    metadata_fields = ModelCardData(
        base_model=hub_id(facts["base_model"]),
        datasets=[name for name in facts["datasets"] if hub_id(name)] or None,
        library_name="peft" if facts["adapter"] else "transformers",
        pipeline_tag="text-generation",
        tags=facts["tags"],
    )
    versions = "\n".join(f"- {name}: {version}" for name, version in facts["versions"].items())
    sections = [
        f"# {facts['model_name']}",
        _base_sentence(facts),
        _data_section(facts),
        _settings_section(facts),
        _packing_section(facts),
        _hardware_section(facts),
        "## Evaluation\n\n`longalign eval longbench-chat --model FOLDER` and `longalign eval needle --model FOLDER` add "
        "their results here (the LongBench-Chat score also as `model-index` metadata); a rerun replaces its section."
        f"\n\n{EVALUATION_ANCHOR}",
        f"## Framework versions\n\n{versions}",
        f"## Citation\n\n```bibtex\n{CITATION.strip()}\n```",
    ]
    return f"---\n{metadata_fields.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"


def write_card(folder: str | os.PathLike, content: str) -> Path:
    """Write `content` to `folder/README.md` atomically (a crash leaves the old card or the new one, and a
    `README.md` that is a link, as in the Hub cache, is replaced rather than written through)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CARD_NAME
    descriptor, temporary = tempfile.mkstemp(prefix=".README.", suffix=".md.tmp", dir=folder)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as handle:
            handle.write(content)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
