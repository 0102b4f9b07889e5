import functools
import logging

import pytest
import torch

from longalign_hf import LongAlignDataCollator
from longalign_hf.tiny import build_tiny_model
from longalign_hf.training import varlen_attention
from longalign_hf.training.packed_attention import PACKED_SDPA
from longalign_hf.training.varlen_attention import VARLEN_PACKED

A = {"input_ids": [11, 12, 13], "labels": [-100, -100, 13]}
B = {"input_ids": [21, 22], "labels": [-100, 22]}
C = {"input_ids": [31, 32, 33], "labels": [31, 32, 33]}


def test_packed_layout_matches_the_docstring_table():
    batch = LongAlignDataCollator(pad_token_id=0)([A, B, C])
    assert batch["input_ids"].tolist() == [[11, 12, 13, 21, 22, 31, 32, 33]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    # The first token of every sample is never a target, even when its label says so (sample C).
    assert batch["labels"].tolist() == [[-100, -100, 13, -100, 22, -100, 32, 33]]
    assert batch["loss_sample_ids"].tolist() == [[0, 0, 0, 1, 1, 2, 2, 2]]
    assert batch["loss_num_targets"].tolist() == [1, 1, 2]
    assert batch["cu_seq_lens_q"].tolist() == batch["cu_seq_lens_k"].tolist() == [0, 3, 5, 8]
    assert batch["cu_seq_lens_q"].dtype == torch.int32
    assert batch["max_length_q"] == batch["max_length_k"] == 3
    assert "attention_mask" not in batch and batch["use_cache"] is False


def test_a_pack_row_equals_its_samples_collated_one_by_one():
    pack = {"input_ids": A["input_ids"] + C["input_ids"], "labels": A["labels"] + C["labels"], "seq_lengths": [3, 3]}
    collator = LongAlignDataCollator(pad_token_id=0)
    from_pack, from_samples = collator([pack, B]), collator([A, C, B])
    for key in ("input_ids", "labels", "position_ids", "loss_sample_ids", "loss_num_targets", "cu_seq_lens_q"):
        assert from_pack[key].tolist() == from_samples[key].tolist()
    # Which data set row each sample came from: A and C from the pack (row 0), B from row 1.
    assert from_pack["loss_sample_features"].tolist() == [0, 0, 1]
    assert from_samples["loss_sample_features"].tolist() == [0, 1, 2]


def test_padded_batch_uses_the_same_label_conventions():
    batch = LongAlignDataCollator(pad_token_id=0, padding_free=False)([A, B, C])
    assert batch["input_ids"].tolist() == [[11, 12, 13], [21, 22, 0], [31, 32, 33]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0], [1, 1, 1]]
    assert batch["labels"].tolist() == [[-100, -100, 13], [-100, 22, -100], [-100, 32, 33]]
    assert batch["loss_sample_ids"].tolist() == [[0, 0, 0], [1, 1, -1], [2, 2, 2]]
    assert batch["loss_num_targets"].tolist() == [1, 1, 2]
    assert "position_ids" not in batch


def test_masks_instead_of_labels_and_padding_to_a_multiple():
    sample = {"input_ids": [5, 6, 7, 8], "assistant_masks": [0, 0, 1, 1]}
    batch = LongAlignDataCollator(pad_token_id=9, pad_to_multiple_of=8)([sample, B])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 21, 22, 9, 9]]
    assert batch["labels"].tolist() == [[-100, -100, 7, 8, -100, 22, -100, -100]]
    # The padding tail is its own loss-free sequence: attention cannot reach back into a sample.
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 0, 1]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 4, 6, 8]
    assert batch["loss_sample_ids"].tolist() == [[0, 0, 0, 0, 1, 1, -1, -1]]


def test_plain_trainer_mode_has_no_bookkeeping():
    batch = LongAlignDataCollator(pad_token_id=0, return_loss_bookkeeping=False)([A, B])
    assert not {"loss_sample_ids", "loss_num_targets", "loss_sample_features"} & set(batch)


@pytest.mark.parametrize(
    ("features", "match"),
    [
        ([{"input_ids": [1, 2]}], "needs `labels`"),
        ([{"input_ids": [1, 2], "labels": [1]}], "2 tokens but the labels have 1"),
        ([{"input_ids": [1, 2], "labels": [1, 2], "seq_lengths": [1, 2]}], "do not add up to the 2 tokens"),
        ([{"input_ids": [1, 2], "labels": [1, 2], "seq_lengths": [2, 0]}], "empty sample in a pack"),
        ([], "no sample"),
    ],
)
def test_bad_features(features, match):
    with pytest.raises((KeyError, ValueError), match=match):
        LongAlignDataCollator(pad_token_id=0)(features)


def test_packs_need_padding_free():
    pack = {"input_ids": [1, 2, 3], "labels": [1, 2, 3], "seq_lengths": [1, 2]}
    with pytest.raises(ValueError, match="padding_free=True"):
        LongAlignDataCollator(pad_token_id=0, padding_free=False)([pack])


# ---- attention isolation: a packed sample's logits equal its logits alone ----------------------------------------


def _samples(vocab_size: int, lengths=(7, 19, 1, 12)):
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(3, vocab_size, (n,), generator=generator).tolist() for n in lengths]


def _max_pack_error(model, samples, **extra):
    """Largest difference between a sample's logits in the pack and its logits alone (on the model's device)."""
    collator = LongAlignDataCollator(pad_token_id=0, return_loss_bookkeeping=False)
    batch = collator([{"input_ids": ids, "labels": ids} for ids in samples])
    batch.pop("labels")
    batch.update(extra)
    batch = {key: value.to(model.device) if torch.is_tensor(value) else value for key, value in batch.items()}
    packed = model(**batch).logits[0].float()
    error, start = 0.0, 0
    for ids in samples:
        alone = model(input_ids=torch.tensor([ids], device=model.device), use_cache=False).logits[0].float()
        error = max(error, (packed[start : start + len(ids)] - alone).abs().max().item())
        start += len(ids)
    return error


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
@pytest.mark.parametrize("attention", ["eager", "sdpa", PACKED_SDPA, VARLEN_PACKED])  # varlen: sdpa_packed on CPU
@pytest.mark.parametrize("checkpointing", [False, True])
def test_packed_samples_do_not_attend_to_each_other(tokenizer, architecture, attention, checkpointing):
    model = build_tiny_model(tokenizer, architecture=architecture, seed=1)
    model.set_attn_implementation(attention)
    model.config.use_cache = True  # the config default that silently mixes samples when a cache is created
    model.train()
    if checkpointing:
        model.activation_checkpointing_enable()
    assert _max_pack_error(model, _samples(len(tokenizer))) < 1e-4


def test_the_isolation_check_can_fail(tokenizer):
    # Negative control: an all-ones attention mask (what a naive collator emits) lets samples attend across.
    model = build_tiny_model(tokenizer, seed=1)
    model.config._attn_implementation = "sdpa"
    samples = _samples(len(tokenizer))
    mask = torch.ones(1, sum(len(ids) for ids in samples), dtype=torch.long)
    assert _max_pack_error(model, samples, attention_mask=mask) > 1e-2


def test_the_trainer_accepts_varlen_packed_and_on_cpu_it_falls_back_and_isolates(
    tokenizer, tmp_path, monkeypatch, caplog
):
    import datasets

    from longalign_hf import LongAlignConfig, LongAlignSFTTrainer

    monkeypatch.setattr(varlen_attention, "_reported", set())
    model = build_tiny_model(tokenizer, seed=1, max_position_embeddings=256)
    model.config._attn_implementation = VARLEN_PACKED
    args = LongAlignConfig(output_dir=str(tmp_path), max_length=256, max_steps=1, report_to="none", use_cpu=True,
                           save_strategy="no", batching="pack", per_device_train_batch_size=1)  # fmt: skip
    dataset = datasets.Dataset.from_list([{"input_ids": ids, "labels": ids} for ids in _samples(len(tokenizer))])
    trainer = LongAlignSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    assert trainer.model.config._attn_implementation == VARLEN_PACKED  # kept, not turned into sdpa_packed
    trainer.model.train()
    with caplog.at_level(logging.WARNING, logger=varlen_attention.__name__):
        assert _max_pack_error(trainer.model, _samples(len(tokenizer))) < 1e-4
    assert [record.getMessage() for record in caplog.records if record.name == varlen_attention.__name__] == [
        "varlen_packed: tensors on cpu, not a CUDA GPU, so this attention runs sdpa_packed"
    ]


# On a GPU, every CUDA backend that cuts packed rows, in float32 and bfloat16 (`varlen_packed` runs its kernel in
# bfloat16 and falls back to `sdpa_packed` in float32). Tolerances: the tiny models' logits are below ~0.7, and letting
# samples attend to each other moves them by ~0.6 (the negative control above). float32 differs only in summation
# order (~1e-7 on CPU); 1e-3 leaves room for TF32 matmuls, should a library turn them on. bfloat16 keeps 8
# significant bits (~2.4 decimal digits), so every layer's activations round at ~2^-9 relative and a packed row
# (different kernel tiling than the sample alone) may differ by a few units in the last place of 0.5-1 logits
# (2^-8 ~= 4e-3): 2e-2 is ~5 such units, still 30x below the mixing error.
GPU_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 2e-2}


@pytest.mark.gpu
@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("attention", [VARLEN_PACKED, PACKED_SDPA, "flash_attention_2"])
def test_packed_samples_do_not_attend_to_each_other_on_gpu(
    tokenizer, monkeypatch, caplog, architecture, dtype, attention
):
    if attention == "flash_attention_2":
        pytest.importorskip("flash_attn", reason="flash-attn is not installed")
        if dtype == torch.float32:
            pytest.skip("FlashAttention-2 takes float16/bfloat16 only")
    model = build_tiny_model(tokenizer, architecture=architecture, seed=1).to("cuda", dtype)
    model.set_attn_implementation(attention)
    model.train()
    kernel_calls = []
    if varlen_attention.varlen_attn is not None:  # count the real kernel's calls, to say which backend ran
        real = varlen_attention.varlen_attn
        counted = functools.wraps(real)(lambda *args, **kwargs: kernel_calls.append(1) or real(*args, **kwargs))
        monkeypatch.setattr(varlen_attention, "varlen_attn", counted)
    monkeypatch.setattr(varlen_attention, "_reported", set())
    with caplog.at_level(logging.WARNING, logger=varlen_attention.__name__):
        error = _max_pack_error(model, _samples(len(tokenizer)))
    ran = attention
    if attention == VARLEN_PACKED:
        why = [record.getMessage() for record in caplog.records if record.name == varlen_attention.__name__]
        ran = "varlen_attn kernel" if kernel_calls else f"sdpa_packed fallback ({why})"
    print(f"{architecture} {dtype} {attention}: ran {ran} on {torch.cuda.get_device_name()} with torch "
          f"{torch.__version__}; max |packed - alone| = {error:.2e}")  # fmt: skip
    assert error < GPU_TOLERANCE[dtype]
    if attention == VARLEN_PACKED:
        can_run = varlen_attention.varlen_attn is not None and varlen_attention._device_reason(model.device) is None
        assert bool(kernel_calls) == (can_run and dtype == torch.bfloat16), ran


def test_pack_dataset_splits_packs_to_a_multiple(tokenizer, caplog):
    import datasets

    from longalign_hf import pack_dataset

    rows = [{"input_ids": [5] * n, "labels": [5] * n} for n in (30, 20, 10, 40, 60)]
    dataset = datasets.Dataset.from_list(rows)
    plain = pack_dataset(dataset, max_length=64)
    assert list(plain["seq_lengths"]) == [[60], [20, 40], [30, 10]]
    split = pack_dataset(dataset, max_length=64, multiple_of=4, attention_constant=1e12)
    assert list(split["seq_lengths"]) == [[60], [40], [20], [30, 10]]  # the costliest splittable pack is split
    assert split["input_ids"][2] == [5] * 20 and split._fingerprint != plain._fingerprint
    with caplog.at_level("WARNING", logger="longalign_hf.training.packed_dataset"):
        assert len(pack_dataset(dataset.select([0, 4]), max_length=64, multiple_of=3)) == 2
    assert "no pack has two samples left to split" in caplog.text
    with pytest.raises(ValueError, match="multiple_of"):
        pack_dataset(dataset, max_length=64, multiple_of=0)


def test_plain_transformers_trainer_trains_on_packs(tokenizer, tmp_path):
    # The collator alone, inside a plain `Trainer`: the model's own loss over a packed row equals the per-token mean
    # of every sample computed alone (so nothing leaks across samples), and a step runs.
    import datasets
    from transformers import Trainer, TrainingArguments

    from longalign_hf import pack_dataset

    model = build_tiny_model(tokenizer, seed=2)
    model.config._attn_implementation = "sdpa"
    samples = _samples(len(tokenizer), lengths=(9, 30, 4, 17, 25))
    rows = [{"input_ids": ids, "labels": [-100] * 2 + ids[2:]} for ids in samples]
    packed = pack_dataset(datasets.Dataset.from_list(rows), max_length=64)
    collator = LongAlignDataCollator(pad_token_id=0, return_loss_bookkeeping=False)
    args = TrainingArguments(str(tmp_path), per_device_train_batch_size=len(packed), max_steps=1, report_to="none",
                             use_cpu=True, remove_unused_columns=False, save_strategy="no")  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=packed.remove_columns(["length", "num_samples"]),
                      data_collator=collator)  # fmt: skip
    batch = collator([packed[i] for i in range(len(packed))])
    with torch.no_grad():
        packed_loss = model(**batch).loss
        total, count = 0.0, 0
        for row in rows:
            logits = model(input_ids=torch.tensor([row["input_ids"]])).logits[0, :-1]
            targets = torch.tensor(row["labels"][1:])
            mask = targets != -100
            total += torch.nn.functional.cross_entropy(logits[mask], targets[mask], reduction="sum")
            count += int(mask.sum())
    torch.testing.assert_close(packed_loss, total / count, rtol=1e-5, atol=1e-6)
    assert trainer.train().global_step == 1


def test_sdpa_packed_finds_samples_from_position_ids_alone(tokenizer):
    model = build_tiny_model(tokenizer, seed=1)
    model.set_attn_implementation("sdpa_packed")
    samples = _samples(len(tokenizer))
    without_cu_seq_lens = {"cu_seq_lens_q": None, "cu_seq_lens_k": None, "max_length_q": None, "max_length_k": None}
    assert _max_pack_error(model, samples, **without_cu_seq_lens) < 1e-4


def test_sdpa_packed_leaves_padded_batches_to_sdpa(tokenizer):
    model = build_tiny_model(tokenizer, seed=1)
    model.set_attn_implementation("sdpa_packed")
    samples = _samples(len(tokenizer))
    batch = LongAlignDataCollator(pad_token_id=0, padding_free=False, return_loss_bookkeeping=False)(
        [{"input_ids": ids, "labels": ids} for ids in samples]
    )
    batch.pop("labels")
    logits = model(**batch).logits
    for row, ids in enumerate(samples):
        alone = model(input_ids=torch.tensor([ids])).logits[0]
        assert (logits[row, : len(ids)] - alone).abs().max().item() < 1e-4
