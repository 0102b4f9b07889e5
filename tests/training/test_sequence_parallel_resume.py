"""Resuming under Ulysses sequence parallelism, and the steps it takes (`tests/sp_resume_check.py`, 2 gloo processes).

A run on sp 2 (one data-parallel replica) resumed from a checkpoint equals the uninterrupted run (steps, losses, token
count, final weights), mid-epoch and at an epoch boundary, on ZeRO-1 and ZeRO-3, and so does plain DDP resumed in its
second epoch; the sp 2 runs take exactly the steps of the same run on one process without SP (the same packs per
optimizer step, in the same order, to the same weights); the tokens trained are counted without padding.
"""

import json
import os
import random

import pytest
import torch
from grad_check import MAX_LENGTH, _samples_of
from launch import torchrun_launch
from sp_resume_check import run_config

from longalign_hf import LongAlignConfig, LongAlignSFTTrainer
from longalign_hf.tiny import build_byte_tokenizer, build_tiny_model
from longalign_hf.training.collator import LOSS_SAMPLE_IDS, LongAlignDataCollator
from longalign_hf.training.sequence_parallel import SequenceParallelCollator
from longalign_hf.training.train_loader import LOSS_REAL_TOKENS, SequenceParallelSlicer

SP_RESUME_CHECK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sp_resume_check.py")

CASES = [
    # Plain DDP, 2 replicas: 6 packs (5 split for 2 slots), 3 steps per epoch; checkpoint 4 is one step into the second.
    {"sp_size": 1, "accumulation": 1, "loss_weighting": "sequence", "optim": "sgd", "max_steps": 5, "save_steps": 4,
     "epoch_steps": 3},
    # 5 steps of one pack per epoch: checkpoint 8 falls 3 micro-steps into the second epoch (half-way through the 2
    # rows DeepSpeed's adapter would have each rank read).
    {"zero_stage": 1, "accumulation": 1, "loss_weighting": "sequence", "optim": "sgd", "max_steps": 9, "save_steps": 8,
     "epoch_steps": 5},
    # Steps of 2 + 2 + 1 packs: checkpoint 3 ends the first epoch, so the resumed run starts the second, which seed 2
    # orders differently from the first.
    {"zero_stage": 3, "accumulation": 2, "loss_weighting": "token", "optim": "adamw_torch", "max_steps": 5,
     "save_steps": 3, "seed": 2, "epoch_steps": 3},
]  # fmt: skip


@pytest.mark.parametrize("sp_size", [2, 3, 4])
@pytest.mark.parametrize("seed", range(3))
def test_each_rank_keeps_its_slice_of_the_row_and_counts_its_real_tokens(sp_size, seed):
    rng = random.Random(seed)
    samples = []
    for _ in range(rng.randint(1, 6)):
        ids = [rng.randint(3, 99) for _ in range(rng.randint(2, 30))]
        samples.append({"input_ids": ids, "labels": [rng.choice([-100, token]) for token in ids]})
    row_length = sp_size * 60
    rows = SequenceParallelCollator(LongAlignDataCollator(pad_token_id=0), row_length)
    whole = rows(samples)
    # The row as the plain collator pads it: padding belongs to no sample.
    is_real = LongAlignDataCollator(pad_token_id=0, pad_to_multiple_of=row_length)(samples)[LOSS_SAMPLE_IDS] >= 0
    parts = [SequenceParallelSlicer(rows, rank, sp_size)(samples) for rank in range(sp_size)]
    chunk = row_length // sp_size
    for rank, part in enumerate(parts):
        assert part[LOSS_REAL_TOKENS] == int(is_real[0, rank * chunk : (rank + 1) * chunk].sum())
        assert all(part[key].shape == (1, chunk) for key in part if torch.is_tensor(part[key]))
    assert sum(part[LOSS_REAL_TOKENS] for part in parts) == sum(len(sample["input_ids"]) for sample in samples)
    for key in whole:
        if key == "labels":
            # What position t predicts: the label at t + 1 (DeepSpeed's `shift_labels`).
            joined = torch.cat([part["shift_labels"] for part in parts], dim=1)
            assert joined[0, :-1].tolist() == whole["labels"][0, 1:].tolist() and joined[0, -1] == -100
        elif torch.is_tensor(whole[key]):
            assert torch.equal(torch.cat([part[key] for part in parts], dim=1), whole[key]), key
        else:
            assert all(part[key] == whole[key] for part in parts), key


class _StepSamples(LongAlignSFTTrainer):
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if batches:
            self.step_rows.append([(b["input_ids"][0].tolist(), b["position_ids"][0].tolist()) for b in batches])
        return batches, num_items


def _one_process(case: dict, output_dir: str) -> dict:
    """The same run on one process, without SP or DeepSpeed."""
    args, dataset = run_config(case, output_dir, use_cpu=True, save_strategy="no")
    tokenizer = build_byte_tokenizer()
    model = build_tiny_model(tokenizer, seed=0, max_position_embeddings=MAX_LENGTH)
    model.config._attn_implementation = "sdpa"
    trainer = _StepSamples(
        model=model, args=LongAlignConfig(**args), train_dataset=dataset, processing_class=tokenizer
    )
    trainer.step_rows = []
    trainer.train()
    history = trainer.state.log_history
    return {
        "rows": trainer.step_rows,
        "losses": {entry["step"]: entry["loss"] for entry in history if "loss" in entry},
        "num_tokens": {entry["step"]: entry["num_tokens"] for entry in history if "num_tokens" in entry},
        "max_steps": trainer.state.max_steps,
        "packing": trainer._packing_statistics,
        "weights": {name: p.detach().clone() for name, p in trainer.model.named_parameters()},
    }


def _step_samples(run: dict, dataset, pad_token_id: int) -> list[list[int]]:
    """Every optimizer step's samples, as data set rows in the order they were trained; the row padding (a separate
    sample of pad tokens) is not a sample."""
    rows = {tuple(ids): index for index, ids in enumerate(dataset["input_ids"])}
    steps = []
    for step_rows in run["rows"]:
        samples = []
        for ids, positions in step_rows:
            for sample in _samples_of({"input_ids": torch.tensor([ids]), "position_ids": torch.tensor([positions])}):
                if sample not in rows:
                    assert set(sample) == {pad_token_id}, "a trained sample is not in the data set"
                    continue
                samples.append(rows[sample])
        steps.append(samples)
    return steps


def _largest_difference(weights: dict, reference: dict) -> float:
    return max((weights[name] - reference[name]).abs().max().item() for name in reference)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_sp2_resumes_exactly_and_takes_the_steps_of_one_process(tmp_path):
    pytest.importorskip("deepspeed")
    cases_path, output_path = tmp_path / "cases.json", tmp_path / "out.pt"
    cases_path.write_text(json.dumps(CASES))
    completed = torchrun_launch(
        SP_RESUME_CHECK, [str(cases_path), str(output_path), str(tmp_path / "out")], 2, timeout=420,
        env={"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-4000:]
    results = torch.load(output_path)
    tokenizer = build_byte_tokenizer()
    _, dataset = run_config(CASES[0], str(tmp_path))
    lengths = dataset["length"]
    initial_model = build_tiny_model(tokenizer, seed=0, max_position_embeddings=MAX_LENGTH)
    initial = {name: p.detach().clone() for name, p in initial_model.named_parameters()}
    for index, (case, result) in enumerate(zip(CASES, results)):
        full, resumed = result["full"], result["resumed"]
        steps = _step_samples(full, dataset, tokenizer.pad_token_id)
        assert len(steps) == full["max_steps"] == case["max_steps"]
        # Every sample once per epoch, and the second epoch in another order (which a resume must find).
        epoch_steps = case["epoch_steps"]
        assert sorted(sum(steps[:epoch_steps], [])) == list(range(len(dataset)))
        assert steps[epoch_steps:] != steps[: case["max_steps"] - epoch_steps], "the second epoch is not reshuffled"
        # Tokens trained: the samples' own tokens, however the rows were padded for SP.
        expected_tokens, total = {}, 0
        for step, samples in enumerate(steps, start=1):
            total += sum(lengths[i] for i in samples)
            expected_tokens[step] = total
        assert full["num_tokens"] == expected_tokens
        # The resumed run continues with the same steps, losses and token counts (its log history starts with the
        # checkpoint's), to the same weights.
        assert _step_samples(resumed, dataset, tokenizer.pad_token_id) == steps[case["save_steps"] :]
        assert set(resumed["losses"]) == set(full["losses"]) == set(range(1, case["max_steps"] + 1))
        for step, loss in resumed["losses"].items():
            assert loss == pytest.approx(full["losses"][step], rel=1e-6), step
        assert resumed["num_tokens"] == expected_tokens
        moved = _largest_difference(full["weights"], initial)
        assert _largest_difference(resumed["weights"], full["weights"]) <= 1e-6 * moved
        figures = (
            f"{case}: resumed vs uninterrupted weights {_largest_difference(resumed['weights'], full['weights']):.1e}"
        )
        if case.get("sp_size", 2) == 2:
            # sp 2 on one replica takes the steps of one process without SP: the same packs per step, in the same
            # order, the same schedule length, losses and token counts, and (plain SGD) the same weights.
            single = _one_process(case, str(tmp_path / f"single{index}"))
            assert steps == _step_samples(single, dataset, tokenizer.pad_token_id)
            assert single["max_steps"] == case["max_steps"]
            assert full["packing"] == single["packing"]  # the packs, and the step balance planned for one replica
            for step, loss in single["losses"].items():
                assert full["losses"][step] == pytest.approx(loss, rel=1e-5), step
            assert single["num_tokens"] == expected_tokens
            if case["optim"] == "sgd":
                assert _largest_difference(full["weights"], single["weights"]) <= 1e-5 * moved
            figures += f", sp 2 vs one process {_largest_difference(full['weights'], single['weights']):.1e}"
        print(f"{figures}, moved {moved:.1e}")  # `pytest -s` shows the measured figures
