"""Attention written out by hand: softmax over each packed sample's causal block, the reference of the backends."""

import torch


def reference_attention(query, key, value, sizes, window=None):
    """Plain softmax attention over the whole row, each token seeing only its own sample's earlier tokens; with a
    `window`, only itself and the `window - 1` tokens before it (transformers' sliding-window convention)."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    sample = torch.repeat_interleave(
        torch.arange(len(sizes), device=query.device), torch.tensor(sizes, device=query.device)
    )
    visible = torch.ones(len(sample), len(sample), dtype=torch.bool, device=query.device).tril()
    visible &= sample[:, None] == sample[None, :]
    if window is not None:
        position = torch.arange(len(sample), device=query.device)
        visible &= position[None, :] > position[:, None] - window
    scores = (query @ key.transpose(-1, -2)) / query.shape[-1] ** 0.5
    weights = scores.masked_fill(~visible, float("-inf")).softmax(-1)
    return (weights @ value).transpose(1, 2)  # [batch, tokens, heads, dim], like transformers' attention output
