"""The count of tokens trained, kept in every checkpoint so that a resumed run continues it."""

from __future__ import annotations

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState


class TrainedTokens(TrainerCallback, ExportableState):
    """Real tokens (padding excluded) trained so far, over every process: what the trainer logs as `num_tokens` and
    the model card reports.

    `Trainer` writes the state of every `ExportableState` callback into a checkpoint's `trainer_state.json`; at the
    start of training this callback takes its count back from the state `Trainer` resumed from (or keeps its own
    when training starts fresh), whether or not `restore_callback_states_from_checkpoint` is set.
    """

    def __init__(self, tokens: int = 0):
        self.tokens = tokens

    def state(self) -> dict:
        return {"args": {"tokens": self.tokens}, "attributes": {}}

    def on_train_begin(self, args, state, control, **kwargs):
        saved = state.stateful_callbacks.get(type(self).__name__)
        if isinstance(saved, dict):
            self.tokens = int(saved["args"]["tokens"])


def trained_tokens(trainer) -> TrainedTokens:
    """The trainer's `TrainedTokens` callback, added on first use (`Trainer` may replace it when it restores callback
    states, so it is looked up, not kept)."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TrainedTokens):
            return callback
    callback = TrainedTokens()
    trainer.add_callback(callback)
    return callback
