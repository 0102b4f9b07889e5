"""`sdpa_packed` against attention written out by hand: softmax over each sample's causal block, gradients included."""

from types import SimpleNamespace

import pytest
import torch

from longalign_hf.packed_attention import packed_sdpa_attention_forward


def reference_attention(query, key, value, sizes):
    """Plain softmax attention over the whole row, each token seeing only its own sample's earlier tokens."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    sample = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    visible = torch.ones(len(sample), len(sample), dtype=torch.bool).tril() & (sample[:, None] == sample[None, :])
    scores = (query @ key.transpose(-1, -2)) / query.shape[-1] ** 0.5
    weights = scores.masked_fill(~visible, float("-inf")).softmax(-1)
    return (weights @ value).transpose(1, 2)  # [batch, tokens, heads, dim], like transformers' attention output


@pytest.mark.parametrize("sizes", [[37], [5, 17, 1, 9], [1] * 12, [3] * 40 + [50]])
@pytest.mark.parametrize("bounds_from", ["cu_seq_lens", "position_ids"])
def test_outputs_and_gradients_match_the_hand_written_reference(sizes, bounds_from):
    generator = torch.Generator().manual_seed(len(sizes))
    tokens = sum(sizes)
    query = torch.randn(1, 4, tokens, 8, generator=generator, dtype=torch.float64)
    key, value = (torch.randn(1, 2, tokens, 8, generator=generator, dtype=torch.float64) for _ in range(2))
    module = SimpleNamespace(is_causal=True, num_key_value_groups=2, training=True)
    if bounds_from == "cu_seq_lens":
        kwargs = {"cu_seq_lens_q": torch.tensor([0, *torch.tensor(sizes).cumsum(0).tolist()])}
    else:
        kwargs = {"position_ids": torch.cat([torch.arange(size) for size in sizes])[None]}

    inputs = [tensor.clone().requires_grad_() for tensor in (query, key, value)]
    output = packed_sdpa_attention_forward(module, *inputs, None, **kwargs)[0]
    expected_inputs = [tensor.clone().requires_grad_() for tensor in (query, key, value)]
    expected = reference_attention(*expected_inputs, sizes)
    torch.testing.assert_close(output, expected)

    upstream = torch.randn(expected.shape, generator=generator, dtype=torch.float64)
    (output * upstream).sum().backward()
    (expected * upstream).sum().backward()
    for name, got, want in zip("qkv", inputs, expected_inputs):
        torch.testing.assert_close(got.grad, want.grad, msg=lambda m, name=name: f"d{name}: {m}")


def test_bounds_are_read_once_per_tensor_and_again_after_a_change():
    from longalign_hf.packed_attention import _sample_bounds

    query = torch.zeros(1, 1, 6, 2)
    cu_seq_lens = torch.tensor([0, 2, 6])
    first = _sample_bounds(query, {"cu_seq_lens_q": cu_seq_lens})
    assert first == [0, 2, 6] and _sample_bounds(query, {"cu_seq_lens_q": cu_seq_lens}) is first
    cu_seq_lens[1] = 3  # an in-place change bumps the version: read again
    assert _sample_bounds(query, {"cu_seq_lens_q": cu_seq_lens}) == [0, 3, 6]
    assert _sample_bounds(query, {"cu_seq_lens_q": torch.tensor([0, 1, 6])}) == [0, 1, 6]
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 0]])
    assert _sample_bounds(query, {"position_ids": position_ids}) == [0, 3, 5, 6]
    assert _sample_bounds(query, {"position_ids": torch.arange(4)[None]}) is None  # not this row's length
