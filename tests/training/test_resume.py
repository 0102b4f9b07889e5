"""A checkpoint resumes with the same data order, the same loss weighting and the count of tokens trained."""

import pytest
from grad_check import _samples_of, build_dataset

from longalign_hf import LongAlignConfig, LongAlignSFTTrainer
from longalign_hf.tiny import build_tiny_model


class RecordingTrainer(LongAlignSFTTrainer):
    """Records, for every optimizer step, a fingerprint of its micro-batches and the step's M and N, and the
    samples it trains on."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps, self.step_samples = [], []

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        fingerprint = tuple(tuple(batch["input_ids"].flatten()[:8].tolist()) for batch in batches)
        self.steps.append((fingerprint, tuple(float(total) for total in self._step_totals)))
        self.step_samples.append([sample for batch in batches for sample in _samples_of(batch)])
        return batches, num_items


def _train(tokenizer, output_dir, batching, resume_from=None):
    model = build_tiny_model(tokenizer, seed=0, max_position_embeddings=256)
    per_device = 1 if batching == "pack" else 2
    args = LongAlignConfig(
        output_dir=output_dir, batching=batching, max_length=256, per_device_train_batch_size=per_device,
        gradient_accumulation_steps=1, max_steps=9, save_steps=7, save_strategy="steps", logging_steps=1,
        learning_rate=1e-3, use_cpu=True, report_to="none", seed=3, activation_checkpointing=False,
        pad_to_multiple_of=64,  # padding, which the token count leaves out
    )  # fmt: skip
    trainer = RecordingTrainer(
        model=model, args=args, train_dataset=build_dataset(tokenizer), processing_class=tokenizer
    )
    trainer.train(resume_from_checkpoint=resume_from)
    losses = {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}
    tokens = {entry["step"]: entry["num_tokens"] for entry in trainer.state.log_history if "num_tokens" in entry}
    return trainer, losses, tokens


@pytest.mark.parametrize("batching", ["sort", "pack"])
def test_resume_continues_the_same_order_and_weighting(tokenizer, tmp_path, batching):
    # 6 packs (or 12 samples in 6 batches of 2) per epoch: step 7 is the second epoch's first step.
    full, full_losses, full_tokens = _train(tokenizer, str(tmp_path / "full"), batching)
    assert len(full.steps) == 9 and full.steps[6:9] != full.steps[0:3]  # the second epoch is reshuffled
    resumed, resumed_losses, resumed_tokens = _train(
        tokenizer, str(tmp_path / "resumed"), batching, resume_from=str(tmp_path / "full" / "checkpoint-7")
    )
    assert resumed.steps == full.steps[7:]
    for step in (8, 9):
        assert resumed_losses[step] == pytest.approx(full_losses[step], rel=1e-5)
    # Tokens trained: the data set's samples in each step (not the padding, which is no sample of it), counted on
    # across the resume.
    dataset = build_dataset(tokenizer).filter(lambda row: row["num_target_tokens"] > 0)  # the trainer drops the rest
    lengths = {tuple(ids): length for ids, length in zip(dataset["input_ids"], dataset["length"])}
    expected, total = {}, 0
    for step, samples in enumerate(full.step_samples, start=1):
        total += sum(lengths.get(sample, 0) for sample in samples)
        expected[step] = total
    assert expected[6] == sum(dataset["length"])  # the first epoch trains every sample once
    assert full_tokens == expected
    assert resumed_tokens == expected  # steps 1-7 from the checkpoint's log history, 8-9 counted on from its count
    # The model card reports the same count.
    resumed.save_model(str(tmp_path / "model"))
    assert f"| tokens trained (padding excluded) | {expected[9]:,} |" in (tmp_path / "model" / "README.md").read_text()
