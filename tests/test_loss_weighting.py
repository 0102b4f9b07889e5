"""The loss-weighting contract: one optimizer step's gradient equals the hand-computed objective's gradient."""

import json
import os

import datasets
import pytest
import torch
from grad_check import build_dataset, reference_loss, run_case
from launch import accelerate_launch

from longalign_hf import LongAlignConfig, LongAlignSFTTrainer
from longalign_hf.tiny import build_tiny_model

TOLERANCE = 1e-5


def _assert_exact(result):
    reference = result["reference_grads"]
    assert set(result["grads"]) == set(reference)
    for name, expected in reference.items():
        difference = (result["grads"][name] - expected).norm() / expected.norm().clamp(min=1e-12)
        assert difference <= TOLERANCE, f"{name}: relative difference {difference:.2e}"
    assert result["loss"] == pytest.approx(result["reference_loss"], rel=TOLERANCE)


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


@pytest.mark.parametrize("case", CASES, ids=lambda case: "-".join(f"{v}" for v in case.values()))
def test_one_process(case, tmp_path):
    _assert_exact(run_case(case, str(tmp_path)))


@pytest.mark.multiprocess
def test_two_processes(tmp_path):
    # One launch runs every case, to pay the process start-up once.
    cases_path, output_path = tmp_path / "cases.json", tmp_path / "results.pt"
    cases_path.write_text(json.dumps(CASES))
    script = os.path.join(os.path.dirname(__file__), "grad_check.py")
    completed = accelerate_launch(script, [str(cases_path), str(output_path), str(tmp_path / "out")])
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = torch.load(output_path)
    assert len(results) == len(CASES)
    for case, result in zip(CASES, results):
        assert result["world_size"] == 2, case
        _assert_exact(result)


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
        output_dir=str(tmp_path), max_length=256, max_steps=1, report_to="none", use_cpu=True, save_strategy="no",
        **config,
    )  # fmt: skip
    return LongAlignSFTTrainer(
        model=model, args=args, train_dataset=dataset, eval_dataset=eval_dataset, processing_class=tokenizer
    )


def test_train_packs_are_split_to_fill_every_slot_and_eval_packs_are_not(tokenizer, tmp_path):
    dataset = build_dataset(tokenizer)  # 12 samples in 6 packs
    trainer = _trainer(tokenizer, tmp_path, dataset, batching="pack", per_device_train_batch_size=4)
    trained = trainer.train_dataset
    assert len(trained) == 8 and sum(trained["num_samples"]) == len(dataset)
    assert sorted(n for lengths in trained["seq_lengths"] for n in lengths) == sorted(dataset["length"])
    with_eval = _trainer(tokenizer, tmp_path, dataset, batching="pack", per_device_train_batch_size=4,
                         eval_dataset=dataset)  # fmt: skip
    assert len(with_eval.eval_dataset) == 6
    dropping = _trainer(tokenizer, tmp_path, dataset, batching="pack", per_device_train_batch_size=4,
                        dataloader_drop_last=True)  # fmt: skip
    assert len(dropping.train_dataset) == 6


def test_a_step_without_targets_is_refused(tokenizer, tmp_path):
    rows = [{"input_ids": [1, 2, 3, 4], "labels": [-100] * 4}] * 2
    trainer = _trainer(tokenizer, tmp_path, datasets.Dataset.from_list(rows), batching="naive")
    with pytest.raises(ValueError, match="no sample in this optimizer step has a target token"):
        trainer.train()


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
