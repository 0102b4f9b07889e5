"""Tokenized samples -> one packed row (padding-free) or a padded batch, with per-sample loss bookkeeping."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from longalign_hf.data.chat import IGNORE_INDEX

# Keys the collator adds for the loss-weighting trainer; `LongAlignSFTTrainer` pops them before the forward pass.
LOSS_SAMPLE_IDS = "loss_sample_ids"
LOSS_NUM_TARGETS = "loss_num_targets"
LOSS_SAMPLE_FEATURES = "loss_sample_features"
BOOKKEEPING_KEYS = (LOSS_SAMPLE_IDS, LOSS_NUM_TARGETS, LOSS_SAMPLE_FEATURES)


def _labels_of(feature: dict[str, Any]) -> list[int]:
    if "labels" in feature:
        return list(feature["labels"])
    for mask_key in ("assistant_masks", "completion_mask"):
        if mask_key in feature:
            ids = feature["input_ids"]
            return [token if keep else IGNORE_INDEX for token, keep in zip(ids, feature[mask_key])]
    raise KeyError("each sample needs `labels`, `assistant_masks` or `completion_mask` next to `input_ids`")


def _split_samples(features: list[dict[str, Any]]) -> tuple[list[tuple[list[int], list[int]]], list[int]]:
    """Every sample of the batch as (input_ids, labels), and the feature each came from; a feature with `seq_lengths`
    is a pack of several."""
    samples, sample_features = [], []
    for feature_index, feature in enumerate(features):
        ids, labels = list(feature["input_ids"]), _labels_of(feature)
        if len(ids) != len(labels):
            raise ValueError(f"`input_ids` has {len(ids)} tokens but the labels have {len(labels)}")
        seq_lengths = feature.get("seq_lengths") or [len(ids)]
        if sum(seq_lengths) != len(ids):
            raise ValueError(f"`seq_lengths` {list(seq_lengths)} do not add up to the {len(ids)} tokens of the pack")
        start = 0
        for length in seq_lengths:
            if length <= 0:
                raise ValueError(f"empty sample in a pack (seq_lengths {list(seq_lengths)})")
            sample_labels = labels[start : start + length]
            sample_labels[0] = IGNORE_INDEX
            samples.append((ids[start : start + length], sample_labels))
            sample_features.append(feature_index)
            start += length
    if not samples:
        raise ValueError("the collator got no sample")
    return samples, sample_features


@dataclass
class LongAlignDataCollator:
    r"""
    Collate tokenized samples into one packed row (`padding_free=True`) or a right-padded batch.

    The same label conventions hold in both layouts: `labels` is -100 on non-target tokens and on the first token of
    every sample (no sample is trained to predict its first token from the previous sample's last one). A feature may
    be one sample (`input_ids` + `labels`, or + `assistant_masks` / `completion_mask`) or a pack of several samples
    (the same keys plus `seq_lengths`, as written by `pack_dataset`).

    Packed layout for samples of 3, 2 and 3 tokens (`a1 a2 a3`, `b1 b2`, `c1 c2 c3`; targets `a3 b2 c2 c3`):

    ```
    input_ids        a1    a2    a3    b1    b2    c1    c2    c3
    position_ids      0     1     2     0     1     0     1     2
    labels         -100  -100    a3  -100    b2  -100    c2    c3
    loss_sample_ids   0     0     0     1     1     2     2     2
    cu_seq_lens_q/k  [0, 3, 5, 8]        max_length_q/k  3
    loss_num_targets [1, 1, 2]
    loss_sample_features [0, 0, 1]    (when a and b came packed in feature 0, c alone in feature 1)
    ```

    Keys returned:
    - `input_ids`, `labels`: `[1, total]` packed, `[batch, longest]` padded (labels -100 on padding).
    - packed only: `position_ids` (restart at 0 for every sample: this is what isolates the samples in eager/sdpa
      attention), `cu_seq_lens_q`, `cu_seq_lens_k` (int32 cumulative sample lengths) and `max_length_q`,
      `max_length_k` (FlashAttention-2 varlen). No `attention_mask` is ever returned for a packed row: with one, the
      model would let samples attend to each other.
    - padded only: `attention_mask`.
    - `use_cache=False`: a cache makes the model ignore packed position ids and mix samples.
    - loss bookkeeping (with `return_loss_bookkeeping=True`): `loss_sample_ids` (`[rows, tokens]`, the sample each
      token belongs to, numbered from 0 within the batch, -1 on padding) and `loss_num_targets` (`[samples]`, each
      sample's number of target tokens, which can be 0) and `loss_sample_features` (`[samples]`, the index of the
      feature, i.e. data set row, each sample came from: evaluation reduces per row so that rows repeated to even out
      the processes' batches are dropped). `LongAlignSFTTrainer` pops them before the forward pass; set
      `return_loss_bookkeeping=False` when collating for a plain `Trainer`.

    Example:
        >>> collator = LongAlignDataCollator(pad_token_id=0)
        >>> batch = collator([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}])
        >>> batch["position_ids"].tolist(), batch["labels"].tolist()
        ([[0, 1, 2, 0, 1]], [[-100, 6, 7, -100, 9]])
        >>> batch["loss_num_targets"].tolist()
        [2, 1]
    """

    pad_token_id: int
    padding_free: bool = True
    pad_to_multiple_of: int | None = None
    return_loss_bookkeeping: bool = True

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if not self.padding_free and any(len(feature.get("seq_lengths") or [0]) > 1 for feature in features):
            raise ValueError("packs (features with several `seq_lengths`) need `padding_free=True`")
        samples, sample_features = _split_samples(features)
        batch = self._packed(samples) if self.padding_free else self._padded(samples)
        num_targets = [sum(label != IGNORE_INDEX for label in labels) for _, labels in samples]
        if self.return_loss_bookkeeping:
            batch[LOSS_NUM_TARGETS] = torch.tensor(num_targets, dtype=torch.long)
            batch[LOSS_SAMPLE_FEATURES] = torch.tensor(sample_features, dtype=torch.long)
        else:
            batch.pop(LOSS_SAMPLE_IDS)
        batch["use_cache"] = False
        return batch

    def _packed(self, samples: list[tuple[list[int], list[int]]]) -> dict[str, Any]:
        lengths = [len(ids) for ids, _ in samples]
        total = sum(lengths)
        padding = -total % self.pad_to_multiple_of if self.pad_to_multiple_of else 0
        input_ids = [token for ids, _ in samples for token in ids] + [self.pad_token_id] * padding
        labels = [label for _, sample_labels in samples for label in sample_labels] + [IGNORE_INDEX] * padding
        position_ids = [position for length in lengths for position in range(length)] + list(range(padding))
        sample_ids = [index for index, length in enumerate(lengths) for _ in range(length)] + [-1] * padding
        # The padding tail is a separate (loss-free) sequence so varlen attention keeps it apart.
        seq_lengths = lengths + ([padding] if padding else [])
        cu_seq_lens = torch.tensor([0] + seq_lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32)
        return {
            "input_ids": torch.tensor([input_ids], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([position_ids], dtype=torch.long),
            "cu_seq_lens_q": cu_seq_lens,
            "cu_seq_lens_k": cu_seq_lens,
            "max_length_q": max(seq_lengths),
            "max_length_k": max(seq_lengths),
            LOSS_SAMPLE_IDS: torch.tensor([sample_ids], dtype=torch.long),
        }

    def _padded(self, samples: list[tuple[list[int], list[int]]]) -> dict[str, Any]:
        longest = max(len(ids) for ids, _ in samples)
        if self.pad_to_multiple_of:
            longest += -longest % self.pad_to_multiple_of
        input_ids = torch.full((len(samples), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(samples), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), longest), dtype=torch.long)
        sample_ids = torch.full((len(samples), longest), -1, dtype=torch.long)
        for row, (ids, sample_labels) in enumerate(samples):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(ids)] = torch.tensor(sample_labels)
            attention_mask[row, : len(ids)] = 1
            sample_ids[row, : len(ids)] = row
        return {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": attention_mask,
            LOSS_SAMPLE_IDS: sample_ids,
        }
