"""A checkpoint resumes with the same data order and the same loss weighting."""

import pytest
from grad_check import build_dataset

from longalign_hf import LongAlignConfig, LongAlignSFTTrainer
from longalign_hf.tiny import build_tiny_model


class RecordingTrainer(LongAlignSFTTrainer):
    """Records, for every optimizer step, a fingerprint of its micro-batches and the step's M and N."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps = []

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        fingerprint = tuple(tuple(batch["input_ids"].flatten()[:8].tolist()) for batch in batches)
        self.steps.append((fingerprint, tuple(float(total) for total in self._step_totals)))
        return batches, num_items


def _train(tokenizer, output_dir, batching, resume_from=None):
    model = build_tiny_model(tokenizer, seed=0, max_position_embeddings=256)
    per_device = 1 if batching == "pack" else 2
    args = LongAlignConfig(
        output_dir=output_dir, batching=batching, max_length=256, per_device_train_batch_size=per_device,
        gradient_accumulation_steps=1, max_steps=9, save_steps=7, save_strategy="steps", logging_steps=1,
        learning_rate=1e-3, use_cpu=True, report_to="none", seed=3, activation_checkpointing=False,
    )  # fmt: skip
    trainer = RecordingTrainer(
        model=model, args=args, train_dataset=build_dataset(tokenizer), processing_class=tokenizer
    )
    trainer.train(resume_from_checkpoint=resume_from)
    losses = {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}
    return trainer.steps, losses


@pytest.mark.parametrize("batching", ["sort", "pack"])
def test_resume_continues_the_same_order_and_weighting(tokenizer, tmp_path, batching):
    # 6 packs (or 12 samples in 6 batches of 2) per epoch: step 7 is the second epoch's first step.
    full_steps, full_losses = _train(tokenizer, str(tmp_path / "full"), batching)
    assert len(full_steps) == 9 and full_steps[6:9] != full_steps[0:3]  # the second epoch is reshuffled
    resumed_steps, resumed_losses = _train(
        tokenizer, str(tmp_path / "resumed"), batching, resume_from=str(tmp_path / "full" / "checkpoint-7")
    )
    assert resumed_steps == full_steps[7:]
    for step in (8, 9):
        assert resumed_losses[step] == pytest.approx(full_losses[step], rel=1e-5)
