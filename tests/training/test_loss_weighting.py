"""The loss-weighting contract: one optimizer step's gradient equals the hand-computed objective's gradient."""

import json
import logging
import math
import os

import datasets
import pytest
import torch
from grad_check import build_dataset, reference_loss, run_case, run_eval_case
from launch import accelerate_launch

from longalign_hf import LongAlignConfig, LongAlignSFTTrainer
from longalign_hf.errors import UserInputError
from longalign_hf.tiny import build_tiny_model

TOLERANCE = 1e-5


def _assert_exact(result, num_steps=1):
    assert len(result["steps"]) == num_steps
    for step in result["steps"]:
        reference = step["reference_grads"]
        assert set(step["grads"]) == set(reference)
        for name, expected in reference.items():
            difference = (step["grads"][name] - expected).norm() / expected.norm().clamp(min=1e-12)
            assert difference <= TOLERANCE, f"{name}: relative difference {difference:.2e}"
        assert step["loss"] == pytest.approx(step["reference_loss"], rel=TOLERANCE)


# One optimizer step over the whole data set.
CASES = [
    {"batching": batching, "loss_weighting": weighting, "accumulation": accumulation}
    for batching in ("naive", "sort", "pack")
    for weighting in ("sequence", "token")
    for accumulation in (1, 3)
] + [
    {"batching": "pack", "loss_weighting": "sequence", "accumulation": 3, "activation_checkpointing": True},
    {"batching": "sort", "loss_weighting": "sequence", "accumulation": 1, "activation_checkpointing": True},
    {"batching": "pack", "loss_weighting": "sequence", "accumulation": 1, "lora": True},
    {"batching": "naive", "loss_weighting": "token", "accumulation": 3, "lora": True},
    {"batching": "pack", "loss_weighting": "token", "accumulation": 3, "attn": "eager"},
    # 8 pack slots for 6 packs: two packs are split, or 2 processes would repeat packs in the last round.
    {"batching": "pack", "loss_weighting": "sequence", "accumulation": 1, "slots": 8},
]

# Several optimizer steps per epoch (`micro_rows` samples or packs per micro-step over all processes), so M and N
# differ from step to step, and the last step is shorter where the rows do not divide: a trainer that normalized by
# the data set's M or N, or by a full step's, would fail these.
MULTI_STEP_CASES = [
    ({"batching": "naive", "loss_weighting": "sequence", "accumulation": 4, "micro_rows": 2}, 2),
    ({"batching": "naive", "loss_weighting": "token", "accumulation": 4, "micro_rows": 2}, 2),
    ({"batching": "sort", "loss_weighting": "sequence", "accumulation": 4, "micro_rows": 2}, 2),
    ({"batching": "pack", "loss_weighting": "sequence", "accumulation": 2, "micro_rows": 2}, 2),
    ({"batching": "pack", "loss_weighting": "token", "accumulation": 2, "micro_rows": 2}, 2),
    ({"batching": "pack", "loss_weighting": "sequence", "accumulation": 1, "micro_rows": 2}, 3),
    # A Mixture-of-Experts model: the router's load-balancing loss is added as TRL weighs it.
    ({"batching": "pack", "loss_weighting": "sequence", "accumulation": 2, "micro_rows": 2, "moe": True}, 2),
    ({"batching": "naive", "loss_weighting": "token", "accumulation": 2, "micro_rows": 2, "moe": True}, 3),
]


# Evaluation over the 12 samples (6 packs): with 8 rows per process, rows are repeated to fill the batches, and a pack
# is merged into one row per micro-batch; the loss must still count every sample once.
EVAL_CASES = [
    {"batching": batching, "loss_weighting": weighting, "eval_batch": eval_batch}
    for batching, weighting, eval_batch in [
        ("pack", "sequence", 8), ("pack", "token", 8), ("naive", "sequence", 8), ("naive", "token", 5),
        ("pack", "sequence", 1),
    ]
]  # fmt: skip


def _assert_exact_eval(result):
    metrics, reference = result["metrics"], result["reference"]
    assert metrics["eval_loss"] == pytest.approx(reference["loss"], rel=TOLERANCE)
    assert metrics["eval_entropy"] == pytest.approx(reference["entropy"], rel=TOLERANCE)
    assert metrics["eval_mean_token_accuracy"] == pytest.approx(reference["accuracy"], rel=TOLERANCE)


@pytest.mark.parametrize("case", EVAL_CASES, ids=lambda case: "-".join(f"{v}" for v in case.values()))
def test_eval_loss_counts_every_sample_once(case, tmp_path):
    _assert_exact_eval(run_eval_case(case, str(tmp_path)))


@pytest.mark.parametrize("case", CASES, ids=lambda case: "-".join(f"{v}" for v in case.values()))
def test_one_process(case, tmp_path):
    _assert_exact(run_case(case, str(tmp_path)))


def _assert_steps_differ(result, case):
    counts = [
        step["num_samples" if case["loss_weighting"] == "sequence" else "num_tokens"] for step in result["steps"]
    ]
    assert len(set(counts)) > 1, f"every step has the same count {counts}: the case cannot tell per-step from per-set"


@pytest.mark.parametrize(
    ("case", "num_steps"),
    MULTI_STEP_CASES,
    ids=lambda value: "-".join(f"{v}" for v in value.values()) if isinstance(value, dict) else f"{value}steps",
)
def test_one_process_several_steps(case, num_steps, tmp_path):
    result = run_case(case, str(tmp_path))
    _assert_steps_differ(result, case)
    _assert_exact(result, num_steps)


@pytest.mark.multiprocess
def test_two_processes(tmp_path):
    # One launch runs every case, to pay the process start-up once.
    cases = CASES + [case for case, _ in MULTI_STEP_CASES] + EVAL_CASES
    cases_path, output_path = tmp_path / "cases.json", tmp_path / "results.pt"
    cases_path.write_text(json.dumps(cases))
    script = os.path.join(os.path.dirname(os.path.dirname(__file__)), "grad_check.py")
    completed = accelerate_launch(script, [str(cases_path), str(output_path), str(tmp_path / "out")], timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = torch.load(output_path)
    assert len(results) == len(cases)
    steps = [1] * len(CASES) + [num_steps for _, num_steps in MULTI_STEP_CASES]
    for case, result in zip(EVAL_CASES, results[len(steps) :]):
        assert result["world_size"] == 2, case
        _assert_exact_eval(result)
    for case, num_steps, result in zip(cases, steps, results):
        assert result["world_size"] == 2, case
        if "micro_rows" in case:
            _assert_steps_differ(result, case)
        _assert_exact(result, num_steps)


def test_the_two_weightings_really_differ(tokenizer):
    model = build_tiny_model(tokenizer, seed=0, max_position_embeddings=256)
    dataset = build_dataset(tokenizer)
    sequence, token = reference_loss(model, dataset, "sequence"), reference_loss(model, dataset, "token")
    assert abs(sequence.item() - token.item()) > 1e-3
    grads = []
    for loss in (sequence, token):
        model.zero_grad()
        loss.backward(retain_graph=True)
        grads.append(model.lm_head.weight.grad.clone())
    assert (grads[0] - grads[1]).norm() / grads[1].norm() > 1e-2


def _trainer(tokenizer, tmp_path, dataset, eval_dataset=None, **config):
    model = build_tiny_model(tokenizer, seed=0, max_position_embeddings=256)
    model.config._attn_implementation = config.pop("attn", "sdpa")
    args = LongAlignConfig(
        output_dir=str(tmp_path), max_length=256, report_to="none", use_cpu=True, save_strategy="no",
        **{"max_steps": 1, **config},
    )  # fmt: skip
    return LongAlignSFTTrainer(
        model=model, args=args, train_dataset=dataset, eval_dataset=eval_dataset, processing_class=tokenizer
    )


def test_train_packs_are_split_to_fill_every_slot_and_eval_packs_are_not(tokenizer, tmp_path):
    dataset = build_dataset(tokenizer)  # 12 samples (11 once the one without a target is dropped) in 6 packs
    trainer = _trainer(tokenizer, tmp_path, dataset, batching="pack", per_device_train_batch_size=4)
    trained = trainer.train_dataset
    kept = dataset.filter(lambda row: row["num_target_tokens"] > 0)
    assert len(trained) == 8 and sum(trained["num_samples"]) == len(kept) == 11
    assert sorted(n for lengths in trained["seq_lengths"] for n in lengths) == sorted(kept["length"])
    with_eval = _trainer(tokenizer, tmp_path, dataset, batching="pack", per_device_train_batch_size=4,
                         eval_dataset=dataset)  # fmt: skip
    assert len(with_eval.eval_dataset) == 6
    dropping = _trainer(tokenizer, tmp_path, dataset, batching="pack", per_device_train_batch_size=4,
                        dataloader_drop_last=True)  # fmt: skip
    assert len(dropping.train_dataset) == 6


def _tokenized_rows(num_rows: int, seed: int) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(num_rows):
        length, prompt = (int(n) for n in torch.randint(20, 60, (2,), generator=generator))
        ids = torch.randint(5, 200, (length,), generator=generator).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * (prompt // 3) + ids[prompt // 3 :]})
    return rows


@pytest.mark.parametrize("batching", ["pack", "naive"])
def test_tokenized_rows_without_targets_are_dropped_and_counted(tokenizer, tmp_path, batching, caplog):
    # Long rows without a target fill packs (and naive steps) of their own: kept, they would make steps without loss.
    good = _tokenized_rows(7, seed=1)
    ids = list(range(5, 245))  # 240 tokens: no other sample fits next to it in 256
    bad = [
        {"input_ids": ids, "labels": [-100] * len(ids)},
        {"input_ids": ids[:238], "labels": [-100] * 238},
        {"input_ids": ids, "labels": [ids[0]] + [-100] * (len(ids) - 1)},  # the first token is never a target
    ]
    mixed = [good[0], bad[0], *good[1:4], bad[1], bad[2], *good[4:]]
    options = dict(batching=batching, optim="sgd", learning_rate=0.5, per_device_train_batch_size=1,
                   gradient_accumulation_steps=2, max_steps=-1, num_train_epochs=2, logging_steps=1)  # fmt: skip
    runs = []
    for rows in (mixed, good):
        with caplog.at_level(logging.INFO, logger="longalign_hf"):
            caplog.clear()
            trainer = _trainer(tokenizer, tmp_path / str(len(rows)), datasets.Dataset.from_list(rows), **options)
            trainer.train()
        runs.append((trainer, caplog.text))
    (trainer, log), (reference, _) = runs
    assert "train data set: 10 rows -> 7 samples kept, dropped: 3 no target token left (e.g. row 1:" in log
    assert trainer.state.global_step == reference.state.global_step
    assert trainer.state.global_step == (8 if batching == "naive" else 2 * math.ceil(len(trainer.train_dataset) / 2))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses == [entry["loss"] for entry in reference.state.log_history if "loss" in entry]
    for name, value in reference.model.state_dict().items():
        torch.testing.assert_close(trainer.model.state_dict()[name], value, rtol=0, atol=0)
    trainer.save_model()
    card = (tmp_path / "10" / "README.md").read_text(encoding="utf-8")
    assert "| rows read | 10 |" in card and "| rows dropped (bad row, over max_length, no target token) | 3 |" in card


def test_a_data_set_without_any_target_is_refused_before_training(tokenizer, tmp_path):
    rows = [{"input_ids": [1, 2, 3, 4], "labels": [-100] * 4}, {"input_ids": [5, 6], "labels": [5, -100]}]
    with pytest.raises(UserInputError, match="train data set: no trainable sample left.*dropped: 2 no target token"):
        _trainer(tokenizer, tmp_path, datasets.Dataset.from_list(rows), batching="naive")


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"packing": True}, "set `batching='pack'` instead"),
        ({"padding_free": True}, "set `batching='pack'` instead"),
        ({"batching": "pack", "max_length": None}, "needs `max_length`"),
        ({"batching": "stream"}, "`batching` must be one of naive, sort, pack"),
        ({"loss_weighting": "pack"}, "`loss_weighting` must be one of sequence, token"),
    ],
)
def test_config_combinations_that_cannot_be_exact(tmp_path, config, match):
    with pytest.raises(ValueError, match=match):
        LongAlignConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **config)


def test_backends_that_mix_packed_samples_are_refused(tokenizer, tmp_path):
    dataset = datasets.Dataset.from_list([{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}])
    with pytest.raises(ValueError, match="cannot keep packed samples apart"):
        _trainer(tokenizer, tmp_path, dataset, batching="pack", attn="flex_attention")


def test_custom_collator_and_untokenized_labels_are_refused(tokenizer, tmp_path):
    model = build_tiny_model(tokenizer)
    args = LongAlignConfig(output_dir=str(tmp_path), max_length=64, use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="do not pass `data_collator`"):
        LongAlignSFTTrainer(model=model, args=args, data_collator=lambda x: x, processing_class=tokenizer,
                            train_dataset=datasets.Dataset.from_list([{"input_ids": [1], "labels": [1]}]))  # fmt: skip
    with pytest.raises(ValueError, match="has `input_ids` but no `labels`"):
        LongAlignSFTTrainer(model=model, args=args, processing_class=tokenizer,
                            train_dataset=datasets.Dataset.from_list([{"input_ids": [1, 2]}]))  # fmt: skip


def test_a_model_without_lm_head_is_refused(tokenizer, tmp_path):
    from transformers import AutoModel

    from longalign_hf.tiny import tiny_config

    args = LongAlignConfig(output_dir=str(tmp_path), max_length=64, use_cpu=True, report_to="none")
    dataset = datasets.Dataset.from_list([{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}])
    with pytest.raises(ValueError, match="has no LM head.*AutoModelForCausalLM"):
        LongAlignSFTTrainer(
            model=AutoModel.from_config(tiny_config(tokenizer)), args=args, train_dataset=dataset,
            processing_class=tokenizer,
        )  # fmt: skip
