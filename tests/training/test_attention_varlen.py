"""`varlen_packed`: the glue around `torch.nn.attention.varlen.varlen_attn` and its fallback to `sdpa_packed`.

On CPU the kernel is replaced by per-sample softmax attention written here, in each signature torch has shipped
(2.10: `is_causal`, no `scale`, no window; 2.11: `window_size`; 2.13: `window_size` and `enable_gqa`), and the
results are compared with the whole-row reference of `test_packed_attention.py`, sliding windows included. The `gpu`
tests run the real kernel.
"""

import inspect
import logging
from types import SimpleNamespace

import pytest
import torch
from attention_reference import reference_attention

from longalign_hf.training import varlen_attention
from longalign_hf.training.packed_attention import packed_sdpa_attention_forward
from longalign_hf.training.varlen_attention import VARLEN_PACKED, varlen_packed_attention_forward

CALLS = []  # the sample bounds of each kernel call
WINDOWS = []  # and its `window_size` (or `is_causal`, on torch 2.10)


def per_sample_attention(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, causal, scale, gqa, window=None):
    """What `varlen_attn` computes on [tokens, heads, dim]: softmax attention inside each sample, one at a time; with
    a `window`, each token sees itself and the `window - 1` tokens before it."""
    assert causal, "packed samples need causal attention"
    assert cu_seq_q.dtype == cu_seq_k.dtype == torch.int32 and torch.equal(cu_seq_q, cu_seq_k)
    assert max_q == max_k == int(cu_seq_q.diff().max())
    assert gqa or key.shape[1] == query.shape[1], "without enable_gqa the kernel needs as many key heads as queries"
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    CALLS.append(cu_seq_q.tolist())
    outputs = []
    for start, end in zip(cu_seq_q[:-1].tolist(), cu_seq_q[1:].tolist()):
        q, k, v = (tensor[start:end].transpose(0, 1) for tensor in (query, key, value))  # [heads, tokens, dim]
        scores = q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5 if scale is None else scale)
        hidden = ~torch.ones(end - start, end - start, dtype=torch.bool).tril()  # the future
        if window is not None:
            hidden |= torch.ones(end - start, end - start, dtype=torch.bool).tril(-window)  # beyond the window
        outputs.append((scores.masked_fill(hidden, float("-inf")).softmax(-1) @ v).transpose(0, 1))
    return torch.cat(outputs)


def _from_window_size(window_size):
    """`(causal, window)` from FlashAttention's `window_size=(left, right)`: `left` tokens before a token and `right`
    after it are visible (-1: all), so a causal window of w tokens is `(w - 1, 0)`."""
    WINDOWS.append(tuple(window_size))
    left, right = window_size
    return right == 0, None if left == -1 else left + 1


def varlen_torch_2_13(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                      window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):  # fmt: skip
    causal, window = _from_window_size(window_size)
    return per_sample_attention(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, causal, scale, enable_gqa, window)


def varlen_torch_2_11(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                      window_size=(-1, -1)):  # fmt: skip
    causal, window = _from_window_size(window_size)
    return per_sample_attention(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, causal, scale, False, window)


def varlen_torch_2_10(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    WINDOWS.append("is_causal")
    return per_sample_attention(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal, None, False)


SIGNATURES = [varlen_torch_2_13, varlen_torch_2_11, varlen_torch_2_10]


@pytest.fixture
def fresh_log(monkeypatch):
    """Forget the fallback reasons already logged, and the bound tensors already cached."""
    monkeypatch.setattr(varlen_attention, "_reported", set())
    monkeypatch.setattr(varlen_attention, "_last_cu_seq_lens", None)
    CALLS.clear()
    WINDOWS.clear()


@pytest.fixture
def kernel_here(monkeypatch, fresh_log):
    """Let the glue run on this CPU in float64 (the kernel itself is replaced by each test)."""
    monkeypatch.setattr(varlen_attention, "_device_reason", lambda device: None)
    monkeypatch.setattr(varlen_attention, "_KERNEL_DTYPES", (torch.float16, torch.bfloat16, torch.float64))


def _packed_inputs(sizes, query_heads=4, key_heads=2, head_dim=8, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    tokens = sum(sizes)
    query = torch.randn(1, query_heads, tokens, head_dim, generator=generator, dtype=dtype)
    key, value = (torch.randn(1, key_heads, tokens, head_dim, generator=generator, dtype=dtype) for _ in range(2))
    return query, key, value


def _bounds(sizes, bounds_from):
    if bounds_from == "cu_seq_lens":
        cu_seq_lens = torch.tensor([0, *sizes], dtype=torch.int32).cumsum(0, dtype=torch.int32)
        return {"cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens,
                "max_length_q": max(sizes), "max_length_k": max(sizes)}  # fmt: skip
    return {"position_ids": torch.cat([torch.arange(size) for size in sizes])[None]}


MODULE = SimpleNamespace(is_causal=True, num_key_value_groups=2, training=True)


@pytest.mark.parametrize("signature", SIGNATURES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("sizes", [[37], [5, 17, 1, 9], [1] * 12, [3] * 40 + [50]])
@pytest.mark.parametrize("bounds_from", ["cu_seq_lens", "position_ids"])
@pytest.mark.parametrize("key_heads", [2, 4])
def test_outputs_and_gradients_match_the_hand_written_reference(
    kernel_here, monkeypatch, caplog, signature, sizes, bounds_from, key_heads
):
    monkeypatch.setattr(varlen_attention, "varlen_attn", signature)
    query, key, value = _packed_inputs(sizes, key_heads=key_heads, seed=len(sizes))
    inputs = [tensor.clone().requires_grad_() for tensor in (query, key, value)]
    with caplog.at_level(logging.WARNING, logger=varlen_attention.__name__):
        output, weights = varlen_packed_attention_forward(MODULE, *inputs, None, **_bounds(sizes, bounds_from))
    assert weights is None and not caplog.records, "the kernel path must not fall back"
    boundaries = torch.tensor([0, *sizes]).cumsum(0).tolist()
    assert CALLS == [boundaries], "the kernel runs once, on the whole row cut at the sample boundaries"

    expected_inputs = [tensor.clone().requires_grad_() for tensor in (query, key, value)]
    expected = reference_attention(*expected_inputs, sizes)
    torch.testing.assert_close(output, expected)
    upstream = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (output * upstream).sum().backward()
    (expected * upstream).sum().backward()
    for name, got, want in zip("qkv", inputs, expected_inputs):
        torch.testing.assert_close(got.grad, want.grad, msg=lambda m, name=name: f"d{name}: {m}")


@pytest.mark.parametrize("signature", SIGNATURES, ids=lambda f: f.__name__)
def test_the_model_scale_reaches_the_kernel(kernel_here, monkeypatch, signature):
    # Gemma-style models scale by something other than 1/sqrt(head_dim); torch 2.10's kernel has no `scale`.
    monkeypatch.setattr(varlen_attention, "varlen_attn", signature)
    sizes, scaling = [6, 11], 0.3
    query, key, value = _packed_inputs(sizes)
    output = varlen_packed_attention_forward(
        MODULE, query, key, value, None, scaling=scaling, **_bounds(sizes, "position_ids")
    )
    expected = reference_attention(query * scaling * query.shape[-1] ** 0.5, key, value, sizes)
    torch.testing.assert_close(output[0], expected)
    assert len(CALLS) == 1


def test_a_row_without_position_ids_is_one_sample(kernel_here, monkeypatch):
    monkeypatch.setattr(varlen_attention, "varlen_attn", varlen_torch_2_13)
    query, key, value = _packed_inputs([9])
    output = varlen_packed_attention_forward(MODULE, query, key, value, None)[0]
    torch.testing.assert_close(output, reference_attention(query, key, value, [9]))
    assert CALLS == [[0, 9]]


@pytest.mark.parametrize("signature", [varlen_torch_2_13, varlen_torch_2_11], ids=lambda f: f.__name__)
@pytest.mark.parametrize("bounds_from", ["cu_seq_lens", "position_ids"])
@pytest.mark.parametrize(("window", "window_size"), [(4, (3, 0)), (1, (0, 0)), (17, (-1, 0)), (None, (-1, 0))])
def test_a_layer_sliding_window_reaches_the_kernel(
    kernel_here, monkeypatch, signature, bounds_from, window, window_size
):
    # transformers' window of w tokens (a token and the w - 1 before it) is FlashAttention's `window_size=(w - 1, 0)`;
    # a window as long as the longest sample (17) changes nothing, and the kernel runs plain causal.
    monkeypatch.setattr(varlen_attention, "varlen_attn", signature)
    sizes = [5, 17, 1, 9]
    query, key, value = _packed_inputs(sizes)
    inputs = [tensor.clone().requires_grad_() for tensor in (query, key, value)]
    output = varlen_packed_attention_forward(
        MODULE, *inputs, None, sliding_window=window, **_bounds(sizes, bounds_from)
    )
    assert WINDOWS == [window_size] and len(CALLS) == 1
    expected_inputs = [tensor.clone().requires_grad_() for tensor in (query, key, value)]
    expected = reference_attention(*expected_inputs, sizes, window=window)
    torch.testing.assert_close(output[0], expected)
    (output[0].sum() + expected.sum()).backward()
    for name, got, want in zip("qkv", inputs, expected_inputs):
        torch.testing.assert_close(got.grad, want.grad, msg=lambda m, name=name: f"d{name}: {m}")


def test_torch_2_10_has_no_window_so_windowed_layers_run_sdpa_packed(kernel_here, monkeypatch, caplog):
    monkeypatch.setattr(varlen_attention, "varlen_attn", varlen_torch_2_10)
    sizes = [5, 17, 1, 9]
    query, key, value = _packed_inputs(sizes)
    with caplog.at_level(logging.WARNING, logger=varlen_attention.__name__):
        for _ in range(2):  # two windowed layers: one message
            output = varlen_packed_attention_forward(
                MODULE, query, key, value, None, sliding_window=4, **_bounds(sizes, "cu_seq_lens")
            )[0]
            torch.testing.assert_close(output, reference_attention(query, key, value, sizes, window=4))
        assert not CALLS
        # A full-attention layer of the same model, and a window no sample reaches, still run the kernel.
        for window in (None, 17):
            output = varlen_packed_attention_forward(
                MODULE, query, key, value, None, sliding_window=window, **_bounds(sizes, "cu_seq_lens")
            )[0]
            torch.testing.assert_close(output, reference_attention(query, key, value, sizes))
    assert WINDOWS == ["is_causal", "is_causal"]
    assert [record.getMessage() for record in caplog.records] == [
        f"varlen_packed: torch {torch.__version__}'s varlen_attn has no window_size for the 4-token sliding window, "
        "so this attention runs sdpa_packed"
    ]


@pytest.mark.parametrize("architecture", ["mistral", "gemma3", "qwen2"])
@pytest.mark.parametrize("bounds_from", ["cu_seq_lens", "position_ids"])
def test_each_layer_of_a_sliding_window_model_hands_the_kernel_its_own_window(
    kernel_here, monkeypatch, architecture, bounds_from
):
    # The model's own layers, through the glue, into a kernel written out here (float64 on the CPU): each layer gets its
    # window (Mistral: both; Gemma-3: the local first; Qwen2: from `max_window_layers`), and every packed sample's
    # logits equal the model's eager logits for that sample alone.
    from sliding_window_models import SLIDING_WINDOW_LAYERS, build_sliding_window_model

    from longalign_hf import LongAlignDataCollator

    monkeypatch.setattr(varlen_attention, "varlen_attn", varlen_torch_2_13)
    model = build_sliding_window_model(architecture, window=4, seed=1).double()
    samples = [list(range(3, 3 + n)) for n in (9, 20, 1, 4, 13)]
    batch = LongAlignDataCollator(pad_token_id=0, return_loss_bookkeeping=False)(
        [{"input_ids": ids, "labels": ids} for ids in samples]
    )
    batch.pop("labels")
    if bounds_from == "position_ids":  # what sequence parallelism hands the attention
        batch.update(cu_seq_lens_q=None, cu_seq_lens_k=None, max_length_q=None, max_length_k=None)
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([ids])).logits[0] for ids in samples]
        model.set_attn_implementation(VARLEN_PACKED)
        packed = model(**batch).logits[0]
    expected = [(3, 0) if kind == "sliding_attention" else (-1, 0) for kind in SLIDING_WINDOW_LAYERS[architecture]]
    assert WINDOWS == expected
    for row, want in zip(packed.split([len(ids) for ids in samples]), alone):
        torch.testing.assert_close(row, want, rtol=0, atol=1e-6)  # RoPE angles are float32 in any dtype


def _refuse_kernel(*args, **kwargs):
    raise AssertionError("the kernel must not run here")


def _cuda_with_capability(monkeypatch, capability):
    monkeypatch.setattr(varlen_attention, "_capability", lambda index: capability)
    real = varlen_attention._device_reason
    monkeypatch.setattr(varlen_attention, "_device_reason", lambda device: real(torch.device("cuda", 0)))


# (what the call looks like, the reason logged). Every case but the first two runs with the device check passed.
FALLBACKS = {
    "cpu": ({"dtype": torch.bfloat16, "device_check": True}, "tensors on cpu, not a CUDA GPU"),
    "old gpu": ({"capability": (7, 5)}, "compute capability 7.5; the kernel needs 8.0 (Ampere) or newer"),
    "no varlen_attn": ({"kernel": None}, "has no torch.nn.attention.varlen.varlen_attn"),
    "padded batch": ({"mask": True}, "a padded batch (with an attention mask)"),
    "several rows": ({"rows": 2}, "a batch of 2 unpadded rows"),
    "cached keys": ({"cached": 3}, "a step that attends to cached keys"),
    "dropout": ({"dropout": 0.1}, "attention dropout 0.1"),
    "both ways": ({"is_causal": False}, "a layer that attends both ways (is_causal=False)"),
    "float32": ({"dtype": torch.float32}, "dtype float32; the kernel takes float16 or bfloat16"),
    "head size 12": ({"head_dim": 12}, "head size 12 (values: 12)"),
    "head size 264": ({"head_dim": 264}, "head size 264 (values: 264)"),
}


@pytest.mark.parametrize("case", FALLBACKS)
def test_where_the_kernel_cannot_run_sdpa_packed_runs_and_says_why_once(monkeypatch, fresh_log, caplog, case):
    setup, reason = FALLBACKS[case]
    monkeypatch.setattr(varlen_attention, "varlen_attn", setup.get("kernel", _refuse_kernel))
    monkeypatch.setattr(varlen_attention, "_KERNEL_DTYPES", (torch.float16, torch.bfloat16, torch.float64))
    if "capability" in setup:
        _cuda_with_capability(monkeypatch, setup["capability"])
    elif not setup.get("device_check"):
        monkeypatch.setattr(varlen_attention, "_device_reason", lambda device: None)
    fallback_calls = []

    def spy(*args, **kwargs):
        fallback_calls.append(1)
        return packed_sdpa_attention_forward(*args, **kwargs)

    monkeypatch.setattr(varlen_attention, "packed_sdpa_attention_forward", spy)

    sizes = [4, 7]
    query, key, value = _packed_inputs(
        sizes, head_dim=setup.get("head_dim", 8), dtype=setup.get("dtype", torch.float64)
    )
    query, key, value = (tensor.expand(setup.get("rows", 1), -1, -1, -1) for tensor in (query, key, value))
    if "cached" in setup:
        query = query[:, :, -setup["cached"] :]
    mask = torch.ones(1, 1, query.shape[2], key.shape[2], dtype=torch.bool) if setup.get("mask") else None
    bounds = _bounds(sizes, "cu_seq_lens") if query.shape[2] == key.shape[2] else {}
    module = SimpleNamespace(is_causal=setup.get("is_causal", True), num_key_value_groups=2, training=True)
    with caplog.at_level(logging.WARNING, logger=varlen_attention.__name__):
        for _ in range(3):  # three layers of one forward
            output = varlen_packed_attention_forward(
                module, query, key, value, mask, dropout=setup.get("dropout", 0.0), **bounds
            )[0]
    assert len(fallback_calls) == 3
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1 and messages[0].startswith("varlen_packed: "), messages
    assert reason in messages[0] and messages[0].endswith(", so this attention runs sdpa_packed")
    if "dropout" not in setup:
        expected = packed_sdpa_attention_forward(module, query, key, value, mask, **bounds)[0]
        torch.testing.assert_close(output, expected)


@pytest.mark.parametrize(
    ("capability", "reason"),
    [((7, 0), "compute capability 7.0"), ((7, 5), "compute capability 7.5"), ((8, 0), None), ((9, 0), None)],
)
def test_the_device_check(monkeypatch, capability, reason):
    monkeypatch.setattr(varlen_attention, "_capability", lambda index: capability)
    found = varlen_attention._device_reason(torch.device("cuda", 0))
    assert (found is None) if reason is None else found.startswith(reason)
    assert varlen_attention._device_reason(torch.device("cpu")) == "tensors on cpu, not a CUDA GPU"


# ---- on a GPU: the real kernel ------------------------------------------------------------------------------------


def _relative_error(got, want):
    return ((got.float() - want).norm() / want.norm()).item()


@pytest.mark.gpu
@pytest.mark.parametrize("sizes", [[5, 17, 1, 9], [1] * 12, [3] * 40 + [50], [300, 700, 24]])
@pytest.mark.parametrize("key_heads", [2, 8])
# Under Ulysses sequence parallelism the kernel gets no `cu_seq_lens`: it reads the gathered, restarting position ids.
@pytest.mark.parametrize("bounds_from", ["cu_seq_lens", "position_ids"])
@pytest.mark.parametrize("window", [None, 16], ids=["causal", "window16"])  # a layer's `sliding_window`
def test_the_real_kernel_matches_the_reference_on_gpu(fresh_log, caplog, sizes, key_heads, bounds_from, window):
    if varlen_attention.varlen_attn is None or varlen_attention._device_reason(torch.device("cuda")) is not None:
        pytest.skip("no varlen_attn in this torch, or a GPU older than Ampere")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, varlen_attn takes "
          f"{sorted(inspect.signature(varlen_attention.varlen_attn).parameters)}")  # fmt: skip
    query, key, value = (t.cuda() for t in _packed_inputs(sizes, query_heads=8, key_heads=key_heads, head_dim=64))
    inputs = [tensor.to(torch.bfloat16).requires_grad_() for tensor in (query, key, value)]
    bounds = {name: v.cuda() if torch.is_tensor(v) else v for name, v in _bounds(sizes, bounds_from).items()}
    with caplog.at_level(logging.WARNING, logger=varlen_attention.__name__):
        output = varlen_packed_attention_forward(MODULE, *inputs, None, sliding_window=window, **bounds)[0]
    assert not caplog.records or "has no window_size" in caplog.text, caplog.text
    # The reference runs in float32 on the same bfloat16 inputs. bfloat16 keeps 8 significant bits (~2.4 decimal
    # digits): rounding the output costs ~2^-9 relative, and the kernel's backward also rounds its softmax and score
    # gradients to bfloat16, so ~1% relative error in the gradients is expected; mixing samples or a wrong head
    # mapping gives errors of order 1.
    expected_inputs = [tensor.detach().float().requires_grad_() for tensor in inputs]
    expected = reference_attention(*expected_inputs, sizes, window=window)
    upstream = torch.randn(expected.shape, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    (output.float() * upstream).sum().backward()
    (expected * upstream).sum().backward()
    errors = {"out": _relative_error(output, expected)}
    for name, got, want in zip("qkv", inputs, expected_inputs):
        errors[f"d{name}"] = _relative_error(got.grad, want.grad)
    print(f"sizes {sizes[:4]}{'...' if len(sizes) > 4 else ''}, {key_heads} key heads, window {window}: relative "
          f"errors {errors}")  # fmt: skip
    assert errors["out"] < 1e-2 and max(errors.values()) < 3e-2, errors
