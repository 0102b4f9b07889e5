"""Runs on 2 processes interrupted and resumed, for `tests/training/test_sequence_parallel_resume.py`.

Launched as `DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 tests/sp_resume_check.py CASES.json OUT.pt OUTPUT_DIR`:
for every case, `LongAlignSFTTrainer` trains on the 11 samples `run_config` selects (5 packs) for `max_steps` optimizer
steps over two epochs, saving a checkpoint at `save_steps`, then a new trainer resumes from that checkpoint to
`max_steps`. A case runs under `ParallelismConfig(sp_size=2, sp_backend="deepspeed")` (dp 1: the real DeepSpeed engine
and Ulysses attention over gloo), or with `"sp_size": 1` as plain DDP, or under DeepSpeed without SP when it also gives
`zero` (its `zero_optimization`; `tests/ds_check.py` runs those). Rank 0 writes, for each of the two runs, every
optimizer step's rows (rebuilt from the SP group's slices), the losses and token counts logged, `max_steps` and the
final weights.

`run_config` is also what the test trains on one process, for the same steps to compare against.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from accelerate.parallelism_config import ParallelismConfig
from accelerate.utils import DeepSpeedSequenceParallelConfig
from grad_check import MAX_LENGTH, _all_ranks, build_dataset
from sp_check import _full_rows, _full_state_dict, _reset_sequence_parallel

from longalign_hf import LongAlignConfig, LongAlignSFTTrainer
from longalign_hf.tiny import build_byte_tokenizer, build_tiny_model
from longalign_hf.training.distributed import run_then_exit


def run_config(case: dict, output_dir: str, **overrides) -> tuple[dict, object]:
    """The `LongAlignConfig` arguments of a case (without parallelism), and its training data: the samples 1-10 of
    `grad_check.build_dataset` (not the one without targets, which the trainer would drop), which `bfd` packs into 5
    packs, an odd number."""
    tokenizer = build_byte_tokenizer()
    dataset = build_dataset(tokenizer).select(range(1, 11))
    args = dict(
        output_dir=output_dir, batching="pack", loss_weighting=case["loss_weighting"], max_length=MAX_LENGTH,
        per_device_train_batch_size=1, gradient_accumulation_steps=case["accumulation"], max_steps=case["max_steps"],
        save_strategy="steps", save_steps=case["save_steps"], optim=case["optim"], learning_rate=1e-2,
        lr_scheduler_type="linear", max_grad_norm=0.0, bf16=False, report_to="none", logging_steps=1,
        seed=case.get("seed", 0),
    )  # fmt: skip
    return {**args, **overrides}, dataset


class _RowRecorder(LongAlignSFTTrainer):
    """Records the slice of every micro-batch this rank trains on, per optimizer step."""

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if batches:
            self.step_slices.append([(b["input_ids"][0].tolist(), b["position_ids"][0].tolist()) for b in batches])
        return batches, num_items


def _deepspeed_config(case: dict) -> dict | None:
    """The case's DeepSpeed config: `zero` (its `zero_optimization`) or `zero_stage`; None for plain DDP."""
    zero = case.get("zero", {"stage": case["zero_stage"]} if "zero_stage" in case else None)
    if zero is None:
        return None
    return {
        "zero_optimization": zero, "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto", "gradient_clipping": "auto",
    }  # fmt: skip


def _train(case: dict, output_dir: str, resume_from: str | None = None) -> dict:
    sp_size = case.get("sp_size", 2)
    deepspeed = _deepspeed_config(case)
    overrides = {"deepspeed": deepspeed} if deepspeed else {"use_cpu": True}  # DDP over the 2 processes
    if sp_size > 1:
        overrides["parallelism_config"] = ParallelismConfig(
            sp_size=sp_size, sp_backend="deepspeed",
            sp_handler=DeepSpeedSequenceParallelConfig(sp_attn_implementation="sdpa"),
        )  # fmt: skip
    args, dataset = run_config(case, output_dir, **overrides)
    tokenizer = build_byte_tokenizer()
    model = build_tiny_model(tokenizer, seed=0, max_position_embeddings=MAX_LENGTH)
    model.config._attn_implementation = "sdpa"
    trainer = _RowRecorder(
        model=model, args=LongAlignConfig(**args), train_dataset=dataset, processing_class=tokenizer
    )
    trainer.step_slices = []
    trainer.train(resume_from_checkpoint=resume_from)
    by_rank = _all_ranks(trainer.step_slices)
    history = trainer.state.log_history
    return {
        "rows": [_full_rows([rank[step] for rank in by_rank], sp_size) for step in range(len(trainer.step_slices))],
        "losses": {entry["step"]: entry["loss"] for entry in history if "loss" in entry},
        "num_tokens": {entry["step"]: entry["num_tokens"] for entry in history if "num_tokens" in entry},
        "max_steps": trainer.state.max_steps,
        "packing": trainer._packing_statistics,
        "weights": _full_state_dict(trainer.accelerator.unwrap_model(trainer.model)),
    }


def _reset(case: dict) -> None:
    """Put back what a run changed in this process, for the next run to start as in a fresh one."""
    from accelerate.state import AcceleratorState
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    if case.get("sp_size", 2) > 1:
        _reset_sequence_parallel()
    # Accelerate keeps how the processes were set up (DDP or DeepSpeed) for the rest of the process; transformers
    # keeps the DeepSpeed config (after ZeRO-3 the next models would be built partitioned).
    AcceleratorState._reset_state(reset_partial_state=True)
    unset_hf_deepspeed_config()


def run_case(case: dict, output_dir: str) -> dict:
    full = _train(case, os.path.join(output_dir, "full"))
    _reset(case)
    checkpoint = os.path.join(output_dir, "full", f"checkpoint-{case['save_steps']}")
    resumed = _train(case, os.path.join(output_dir, "resumed"), resume_from=checkpoint)
    _reset(case)
    return {"full": full, "resumed": resumed}


if __name__ == "__main__":
    cases_path, output_path, output_dir = sys.argv[1:4]
    with open(cases_path) as handle:
        cases = json.load(handle)

    def main():
        results = [run_case(case, os.path.join(output_dir, str(index))) for index, case in enumerate(cases)]
        if dist.get_rank() == 0:
            torch.save(results, output_path)

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    run_then_exit(main)
