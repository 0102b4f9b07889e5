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


# Columns of `row_loss_terms`: what evaluation sums over data set rows before it divides.
ROW_TERMS = ("sequence_sum", "samples", "token_sum", "tokens", "entropy_sum", "correct")


def row_loss_terms(
    token_loss: torch.Tensor,
    entropy: torch.Tensor,
    is_top1: torch.Tensor,
    label_mask: torch.Tensor,
    sample_ids: torch.Tensor,
    num_targets: torch.Tensor,
    sample_features: torch.Tensor,
    num_features: int,
) -> torch.Tensor:
    """Per data set row (feature) of a micro-batch, the sums that evaluation reduces: `[num_features, 6]` float64.

    Columns (`ROW_TERMS`): `sum_i L_i / N_i` and the sample count M over the row's samples with targets, `sum_i L_i`
    and `sum_i N_i`, the entropy summed over target tokens and the number of correct top-1 predictions. Summed over
    the unique rows of an evaluation set they give its exact loss under either weighting (and its token metrics), which
    averaging per-batch means does not.
    """
    target_samples = sample_ids[:, 1:]
    valid = (target_samples >= 0) & label_mask.bool()
    index = target_samples[valid]

    def per_sample(values: torch.Tensor) -> torch.Tensor:
        totals = torch.zeros(len(num_targets), dtype=torch.float64, device=values.device)
        return totals.index_add_(0, index, values[valid].detach().double())

    sample_loss = per_sample(token_loss)
    has_targets = num_targets > 0
    per_sample_terms = torch.stack(
        [
            torch.where(has_targets, sample_loss / num_targets.clamp(min=1), 0.0),
            has_targets.double(),
            sample_loss,
            num_targets.double(),
            per_sample(entropy),
            per_sample(is_top1.double()),
        ],
        dim=1,
    )
    rows = torch.zeros(num_features, len(ROW_TERMS), dtype=torch.float64, device=per_sample_terms.device)
    return rows.index_add_(0, sample_features.to(rows.device), per_sample_terms)
