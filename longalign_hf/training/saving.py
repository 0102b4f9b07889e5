"""How `LongAlignSFTTrainer` saves: one loadable Hugging Face folder whatever the engine, and the LongAlign model card
next to it."""

from __future__ import annotations

import logging
from pathlib import Path

from longalign_hf.training.deepspeed_weights import save_fp32_model
from longalign_hf.training.engines import full_model_on_save
from longalign_hf.training.model_card import collect_training_facts, training_card, write_card

logger = logging.getLogger(__name__)


class SavingHooks:
    """The `Trainer` saving hooks of `LongAlignSFTTrainer`, a mixin placed before `SFTTrainer` (the trainer sets
    `_dataset_names`, `_data_statistics` and `_packing_statistics`)."""

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Trainer's `save_model` (one loadable folder: gathered from sharded FSDP, and under ZeRO-3 without 16-bit
        gathering from the fp32 weights), then the LongAlign model card (`README.md`) next to the weights."""
        with full_model_on_save(self, output_dir, _internal_call):
            if not save_fp32_model(self, output_dir, _internal_call):
                super().save_model(output_dir, _internal_call)
        self._write_model_card(output_dir or self.args.output_dir)

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None,
                          tags: str | list[str] | None = None) -> None:  # fmt: skip
        """Write the LongAlign model card to `args.output_dir` in place of TRL's (`push_to_hub` and TRL's
        checkpoints call this before they upload); `dataset_name` and `tags` are added to the card's."""
        if dataset_name and dataset_name not in self._dataset_names:
            self._dataset_names.append(dataset_name)
        self._write_model_card(self.args.output_dir, model_name, [tags] if isinstance(tags, str) else tags)

    def _write_model_card(self, folder: str, model_name: str | None = None, tags: list[str] | None = None) -> None:
        if not self.args.should_save:
            return  # the processes that save weights write the card; the others have nothing to write
        if model_name is None:
            model_name = (self.args.hub_model_id or Path(self.args.output_dir).resolve().name).split("/")[-1]
        tags = [*self._tag_names, "long-context", *(tags or []), *(getattr(self.model, "model_tags", None) or [])]
        facts = collect_training_facts(
            self, model_name, self._dataset_names, self._data_statistics, self._packing_statistics, tags
        )
        path = write_card(folder, training_card(facts))
        logger.info("Model card written to %s", path)
