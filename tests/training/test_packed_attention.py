"""`sdpa_packed` against attention written out by hand: softmax over each sample's causal block (within a sliding
window, for layers that have one), gradients included."""

from types import SimpleNamespace

import pytest
import torch
from attention_reference import reference_attention

from longalign_hf.training.packed_attention import _sample_bounds, packed_sdpa_attention_forward, packed_sdpa_mask


@pytest.mark.parametrize("sizes", [[37], [5, 17, 1, 9], [1] * 12, [3] * 40 + [50]])
@pytest.mark.parametrize("bounds_from", ["cu_seq_lens", "position_ids"])
# A layer's sliding window (the `sliding_window` transformers passes): shorter than some samples, longer than others,
# or 1 (a token sees only itself). `None`: a full-attention layer.
@pytest.mark.parametrize("window", [None, 1, 4, 16])
def test_outputs_and_gradients_match_the_hand_written_reference(sizes, bounds_from, window):
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
    output = packed_sdpa_attention_forward(module, *inputs, None, sliding_window=window, **kwargs)[0]
    expected_inputs = [tensor.clone().requires_grad_() for tensor in (query, key, value)]
    expected = reference_attention(*expected_inputs, sizes, window=window)
    torch.testing.assert_close(output, expected)
    if window is not None and max(sizes) > window:  # the window changes the result: the comparison can fail
        assert not torch.allclose(expected, reference_attention(query, key, value, sizes), atol=1e-3)

    upstream = torch.randn(expected.shape, generator=generator, dtype=torch.float64)
    (output * upstream).sum().backward()
    (expected * upstream).sum().backward()
    for name, got, want in zip("qkv", inputs, expected_inputs):
        torch.testing.assert_close(got.grad, want.grad, msg=lambda m, name=name: f"d{name}: {m}")


def test_bounds_are_read_once_per_tensor_and_again_after_a_change():
    query = torch.zeros(1, 1, 6, 2)
    cu_seq_lens = torch.tensor([0, 2, 6])
    first = _sample_bounds(query, query, {"cu_seq_lens_q": cu_seq_lens})
    assert first == [0, 2, 6] and _sample_bounds(query, query, {"cu_seq_lens_q": cu_seq_lens}) is first
    cu_seq_lens[1] = 3  # an in-place change bumps the version: read again
    assert _sample_bounds(query, query, {"cu_seq_lens_q": cu_seq_lens}) == [0, 3, 6]
    assert _sample_bounds(query, query, {"cu_seq_lens_q": torch.tensor([0, 1, 6])}) == [0, 1, 6]
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 0]])
    assert _sample_bounds(query, query, {"position_ids": position_ids}) == [0, 3, 5, 6]
    assert _sample_bounds(query, query, {"position_ids": torch.arange(4)[None]}) is None  # not this row's length
    with torch.inference_mode():
        assert _sample_bounds(query, query, {"position_ids": torch.tensor([[0, 1, 0, 1, 2, 3]])}) == [0, 2, 6]


def test_rows_that_are_not_packed_go_to_plain_sdpa():
    module = SimpleNamespace(is_causal=True, num_key_value_groups=1, training=False)
    cached_keys = torch.randn(1, 2, 9, 4)
    query = torch.randn(1, 2, 1, 4)  # one decoding step over 9 cached keys
    output = packed_sdpa_attention_forward(
        module, query, cached_keys, cached_keys, None, position_ids=torch.tensor([[8]])
    )[0]
    expected = torch.nn.functional.scaled_dot_product_attention(query, cached_keys, cached_keys).transpose(1, 2)
    torch.testing.assert_close(output, expected)
    assert (
        _sample_bounds(torch.zeros(2, 1, 4, 2), torch.zeros(2, 1, 4, 2), {"position_ids": torch.zeros(2, 4)}) is None
    )


def test_packed_generation_under_inference_mode_matches_the_samples_alone():
    sizes = [3, 5]
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(1, 2, 8, 4, generator=generator) for _ in range(3))
    module = SimpleNamespace(is_causal=True, num_key_value_groups=1, training=False)
    with torch.inference_mode():
        position_ids = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]])
        output = packed_sdpa_attention_forward(module, query, key, value, None, position_ids=position_ids)[0]
    torch.testing.assert_close(output, reference_attention(query, key, value, sizes))


def test_a_row_without_position_ids_is_one_sample_within_its_window():
    query, key, value = (torch.randn(1, 2, 11, 4, generator=torch.Generator().manual_seed(i)) for i in range(3))
    module = SimpleNamespace(is_causal=True, num_key_value_groups=1, training=False)
    output = packed_sdpa_attention_forward(module, query, key, value, None, sliding_window=3)[0]
    torch.testing.assert_close(output, reference_attention(query, key, value, [11], window=3))


def test_a_sliding_window_in_a_layer_that_attends_both_ways_is_refused():
    query = torch.randn(1, 2, 6, 4)
    module = SimpleNamespace(is_causal=False, num_key_value_groups=1, training=False)
    with pytest.raises(ValueError, match="sliding-window attention only for causal layers"):
        packed_sdpa_attention_forward(module, query, query, query, None, sliding_window=3)
    # Without a window, each sample attends both ways, as SDPA without `is_causal` does on the sample alone.
    output = packed_sdpa_attention_forward(module, query, query, query, None, cu_seq_lens_q=torch.tensor([0, 2, 6]))
    expected = [
        torch.nn.functional.scaled_dot_product_attention(*[query[:, :, s]] * 3) for s in (slice(0, 2), slice(2, 6))
    ]
    torch.testing.assert_close(output[0], torch.cat(expected, dim=2).transpose(1, 2))


@pytest.mark.parametrize(
    ("name", "what"),
    [("softcap", "attention logit softcapping"), ("s_aux", "attention sinks"), ("sinks", "attention sinks"),
     ("position_bias", "a position bias")],
)  # fmt: skip
def test_what_sdpa_cannot_compute_is_refused_not_dropped(name, what):
    query = torch.randn(1, 2, 6, 4)
    module = SimpleNamespace(is_causal=True, num_key_value_groups=1, training=False)
    with pytest.raises(ValueError, match=f"sdpa_packed cannot compute {what}.*--attn_implementation"):
        packed_sdpa_attention_forward(module, query, query, query, None, **{name: torch.ones(2)})
    packed_sdpa_attention_forward(module, query, query, query, None, **{name: None})  # not used by this layer: runs


def test_a_decoding_step_in_a_sliding_window_layer_gets_the_windowed_mask():
    # One query over 9 cached keys with a window of 4: transformers' SDPA mask, which `packed_sdpa_mask` now returns
    # (an unmasked single row without a cache is the only case it leaves to the attention).
    from transformers.masking_utils import sliding_window_causal_mask_function

    mask = packed_sdpa_mask(batch_size=1, q_length=1, kv_length=9, q_offset=8, kv_offset=0,
                            mask_function=sliding_window_causal_mask_function(4), local_size=4)  # fmt: skip
    assert mask[0, 0, 0].tolist() == [False] * 5 + [True] * 4
    assert packed_sdpa_mask(batch_size=1, q_length=9, kv_length=9, local_size=4) is None
    module = SimpleNamespace(is_causal=True, num_key_value_groups=1, training=False)
    cached = torch.randn(1, 2, 9, 4)
    query = torch.randn(1, 2, 1, 4)
    output = packed_sdpa_attention_forward(module, query, cached, cached, mask, sliding_window=4)[0]
    expected = torch.nn.functional.scaled_dot_product_attention(query, cached[:, :, 5:], cached[:, :, 5:])
    torch.testing.assert_close(output, expected.transpose(1, 2))
