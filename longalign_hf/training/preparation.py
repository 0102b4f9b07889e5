"""The trainer's data before training: the chat template settings applied, conversations tokenized with assistant-only
targets (or tokenized rows checked), and packs with the compute cost the balanced schedule orders them by; which
process prepares first (`cache_writers_first`)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import datasets
import numpy as np

from longalign_hf.data.chat import IGNORE_INDEX
from longalign_hf.data.sft_data import prepare_sft_dataset
from longalign_hf.errors import UserInputError
from longalign_hf.training.config import LongAlignConfig
from longalign_hf.training.packed_dataset import column_array, pack_dataset
from longalign_hf.training.schedule import balanced_pack_order, sample_cost, step_efficiency

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def cache_writers_first(args: LongAlignConfig, desc: str = "data preparation") -> Iterator[None]:
    """Run the block on the first process, then on the first process of each other machine, then on all the others.

    Data work that writes the `datasets` cache then happens once where the machines share a disk (the others find it
    cached) and once per machine where each has its own (each machine's first process fills its cache, its other
    processes read it), never on several processes of one cache at a time. transformers' `main_process_first` does
    one of the two (`local=True`: each machine's first process at once, twice on a shared disk; `local=False`: every
    process of the other machines at once); TRL's `global_then_local_main_first` chains them as here, but a process
    that raises in the block then leaves the others waiting, where `main_process_first` releases them to meet the
    same error.
    """
    with args.main_process_first(local=False, desc=desc), args.main_process_first(local=True, desc=desc):
        yield


def apply_template_settings(model, tokenizer, args: LongAlignConfig):
    """Apply `chat_template_path` and `eos_token` before tokenizing (TRL applies them after its own data
    preparation, which we skip, so the conversations would be rendered with the old template)."""
    if args.eos_token is not None:
        if args.eos_token not in tokenizer.get_vocab():
            raise ValueError(
                f"`eos_token` {args.eos_token!r} is not in the tokenizer's vocabulary; give a token it has"
            )
        tokenizer.eos_token = args.eos_token
    path = args.chat_template_path
    if path is None:
        return model
    if os.path.isfile(path) and path.endswith((".jinja", ".j2")):
        with open(path, encoding="utf-8") as handle:
            tokenizer.chat_template = handle.read()
        return model
    if isinstance(model, str):
        raise ValueError(
            f"`chat_template_path={path!r}` clones another tokenizer's template, which resizes the model's "
            "embeddings: pass the model loaded (`AutoModelForCausalLM.from_pretrained`) instead of its name, or "
            "give the template as a .jinja file."
        )
    from trl import clone_chat_template

    # TRL applies it again in `SFTTrainer.__init__`; the second time adds no token and changes nothing.
    model, _, _ = clone_chat_template(model, tokenizer, path)
    return model


def tokenize(dataset, tokenizer, args: LongAlignConfig, split: str):
    """A `messages` data set tokenized with assistant-only targets, or a tokenized one checked against `max_length`
    and rid of its rows without a target token (counted and logged, as `prepare_sft_dataset` does for `messages`)."""
    if dataset is None:
        return None
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"the {split} data set must be a `datasets.Dataset` (streaming is not supported for packing)")
    if "input_ids" in dataset.column_names:
        if "labels" not in dataset.column_names:
            raise ValueError(
                f"the tokenized {split} data set has `input_ids` but no `labels`; add labels (-100 on non-target "
                "tokens) or pass `messages` conversations and let the trainer tokenize them"
            )
        if "length" not in dataset.column_names:
            dataset = dataset.map(lambda row: {"length": len(row["input_ids"])}, desc=f"Measuring {split}")
        too_long = np.flatnonzero(column_array(dataset, "length") > args.max_length) if args.max_length else []
        if len(too_long):
            raise ValueError(
                f"{len(too_long)} tokenized {split} samples are over max_length={args.max_length} (first: row "
                f"{too_long[0]}); truncate or drop them, or pass `messages` so the `overflow` policy applies"
            )
        return _drop_rows_without_targets(dataset, f"{split} data set")
    tokenized, _ = prepare_sft_dataset(
        dataset, tokenizer, args.max_length, overflow=args.overflow, bad_rows=args.bad_rows,
        num_proc=args.dataset_num_proc, source=f"{split} data set",
    )  # fmt: skip
    return tokenized


def _target_counts(dataset: datasets.Dataset, batch_rows: int = 10_000) -> np.ndarray:
    """Each row's target tokens as the collator counts them: labels other than -100, the first token of each sample
    (of each `seq_lengths` part in a packed row) excepted, since no token comes before it to predict it."""
    columns = ["labels", "seq_lengths"] if "seq_lengths" in dataset.column_names else ["labels"]
    table = dataset.select_columns(columns).with_format("arrow")
    counts = []
    for start in range(0, len(dataset), batch_rows):
        batch = table[start : start + batch_rows]
        labels = batch["labels"].combine_chunks()
        offsets = labels.offsets.to_numpy().astype(np.int64)
        is_target = labels.values.to_numpy(zero_copy_only=False) != IGNORE_INDEX
        if "seq_lengths" in columns:
            parts = batch["seq_lengths"].combine_chunks()
            part_offsets = parts.offsets.to_numpy().astype(np.int64)
            running_length = np.concatenate([[0], np.cumsum(parts.values.to_numpy(zero_copy_only=False))])
            row_of_part = np.repeat(np.arange(len(labels)), np.diff(part_offsets))
            part_index = np.arange(part_offsets[0], part_offsets[-1])
            starts = running_length[part_index] - running_length[part_offsets[:-1]][row_of_part]  # within the row
            inside = starts < np.diff(offsets)[row_of_part]  # lengths that overrun their row are the collator's error
            first_tokens = offsets[row_of_part][inside] + starts[inside]
        else:
            first_tokens = offsets[:-1][np.diff(offsets) > 0]
        is_target[first_tokens] = False
        running = np.concatenate([[0], np.cumsum(is_target)])
        counts.append(running[offsets[1:]] - running[offsets[:-1]])
    return np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)


def _drop_rows_without_targets(dataset: datasets.Dataset, source: str) -> datasets.Dataset:
    """`dataset` without its rows that have no target token, which would leave an optimizer step without a loss."""
    has_targets = _target_counts(dataset) > 0
    empty = np.flatnonzero(~has_targets)
    if not len(empty):
        return dataset
    kept = len(dataset) - len(empty)
    examples = "; ".join(f"row {row}: no label other than -100 after the first token" for row in empty[:3])
    summary = (
        f"{source}: {len(dataset)} rows -> {kept} samples kept, dropped: {len(empty)} no target token left "
        f"(e.g. {examples})"
    )
    if kept == 0:
        raise UserInputError(
            f"{source}: no trainable sample left. {summary}. Give `labels` other than -100 on the tokens to learn"
        )
    logger.warning(summary)
    return dataset.select(np.flatnonzero(has_targets))


def tokenize_eval(eval_dataset, tokenizer, args: LongAlignConfig):
    """`tokenize` for an evaluation set, or for each set of a dict of them (named by their keys)."""
    if isinstance(eval_dataset, dict):
        return {key: tokenize(value, tokenizer, args, key) for key, value in eval_dataset.items()}
    return tokenize(eval_dataset, tokenizer, args, "eval")


def pack_with_costs(
    dataset: datasets.Dataset, args: LongAlignConfig, constant: float, seed: int, replicas: int, multiple_of: int = 1
) -> tuple[datasets.Dataset, dict[str, Any]]:
    """`pack_dataset` plus each pack's compute `cost` (the balanced schedule's key), with one log line on the packing
    and the step balance it allows on `replicas` data-parallel replicas (the processes, but under sequence parallelism
    the SP ranks of a replica share its packs).

    Returns the packed data set and the figures of that log line (`num_samples`, `num_packs`, `samples_per_pack_mean`,
    `samples_per_pack_min`, `samples_per_pack_max`, `fill`, `max_length`, `step_balance` per schedule), which the
    model card reports."""
    packed = pack_dataset(
        dataset, args.max_length, strategy=args.pack_planner, multiple_of=multiple_of,
        attention_constant=constant,
    )  # fmt: skip
    seq_lengths = packed.select_columns(["seq_lengths"]).with_format("arrow")[:]["seq_lengths"].combine_chunks()
    sample_costs = sample_cost(seq_lengths.flatten().to_numpy(), constant)
    costs = np.add.reduceat(sample_costs, seq_lengths.offsets.to_numpy()[:-1]).astype(float)  # no pack is empty
    packed = packed.add_column("cost", costs.tolist())
    num_samples = column_array(packed, "num_samples")
    per_device = args.per_device_train_batch_size
    packs_per_step = replicas * per_device * args.gradient_accumulation_steps
    balance = {
        name: step_efficiency(costs, balanced_pack_order(costs, packs_per_step, seed, balanced), replicas, per_device)
        for name, balanced in (("balanced", True), ("random", False))
    }
    stats = {
        "num_samples": int(num_samples.sum()),
        "num_packs": len(packed),
        "samples_per_pack_mean": float(num_samples.mean()),
        "samples_per_pack_min": int(num_samples.min()),
        "samples_per_pack_max": int(num_samples.max()),
        "fill": float(column_array(packed, "length").sum() / (len(packed) * args.max_length)),
        "max_length": args.max_length,
        "step_balance": balance,
    }
    logger.info(
        "Packing: %d samples in %d packs (%.1f samples/pack, fill %.4f of max_length=%d); %s schedule. Estimated "
        "step balance on %d data-parallel replica(s) (useful / held compute, cost L + L^2/%.0f): balanced %.3f, "
        "random %.3f",
        stats["num_samples"], stats["num_packs"], stats["samples_per_pack_mean"], stats["fill"], args.max_length,
        args.pack_schedule, replicas, constant, balance["balanced"], balance["random"],
    )  # fmt: skip
    return packed, stats
