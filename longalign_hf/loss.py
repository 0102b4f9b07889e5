"""The LongAlign loss from per-token log-probabilities: sequence-weighted or token-weighted, over a global batch."""

from __future__ import annotations

import torch


def weighted_nll_sum(
    log_probs: torch.Tensor,
    label_mask: torch.Tensor,
    sample_ids: torch.Tensor,
    num_targets: torch.Tensor,
    loss_weighting: str,
) -> torch.Tensor:
    """Sum of the per-token losses of one micro-batch, each token weighted so that the global loss is a plain sum.

    Args:
        log_probs: `[rows, tokens - 1]` log-probability of each next-token label (0 where the label is -100), as
            returned by TRL's fused LM head.
        label_mask: same shape, whether the position has a label.
        sample_ids: `[rows, tokens]` sample of every token (the collator's `loss_sample_ids`, -1 on padding).
        num_targets: `[samples]` target tokens of each sample (the collator's `loss_num_targets`).
        loss_weighting: `"sequence"` weights sample i's tokens by `1 / N_i`; `"token"` weights every token by 1.

    Dividing the result by the global number of samples with targets (`"sequence"`) or of target tokens (`"token"`)
    gives this micro-batch's share of `(1/M) sum_i L_i / N_i` or `sum_i L_i / sum_i N_i`.
    """
    token_loss = -log_probs * label_mask
    if loss_weighting == "token":
        return token_loss.sum()
    # The label at position t + 1 is predicted at position t, and belongs to the sample of token t + 1.
    target_samples = sample_ids[:, 1:].clamp(min=0)
    weights = (1.0 / num_targets.clamp(min=1).to(token_loss.dtype))[target_samples]
    return (token_loss * weights).sum()
