"""Training: `LongAlignConfig` and `LongAlignSFTTrainer`, the packing collator, planner and sorted sampler, the loss
weighting, the attention backends that keep packed samples apart, and multi-process teardown."""
