"""Sliding-window models trained on packed rows: every packed sample's logits equal the model's own eager logits for
that sample alone, on every backend the trainer accepts, with windows shorter than the samples.

Mistral (a window on every layer), Gemma-3 (local then global layers) and Qwen2 with `use_sliding_window` run with
eager, sdpa (the position-ids block mask), sdpa_packed and varlen_packed (sdpa_packed on a CPU; its kernel arguments
are checked in test_attention_varlen.py). Gemma-2 softcaps its attention logits, which only eager and FlashAttention
compute: it stays eager, and the packed backends refuse it.
"""

import copy
import functools
import logging

import pytest
import torch
from sliding_window_models import SLIDING_WINDOW_LAYERS, VOCAB_SIZE, build_sliding_window_model
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from longalign_hf import LongAlignDataCollator
from longalign_hf.training import varlen_attention
from longalign_hf.training.checks import check_packed_attention
from longalign_hf.training.packed_attention import PACKED_SDPA, packed_sdpa_attention_forward, packed_sdpa_mask
from longalign_hf.training.varlen_attention import VARLEN_PACKED

WINDOW = 4
LENGTHS = (9, 40, 1, 4, 23)  # longer than the window, as long as it, shorter; several samples in one row
ARCHITECTURES = ["mistral", "gemma3", "qwen2"]
WITHOUT_CU_SEQ_LENS = {"cu_seq_lens_q": None, "cu_seq_lens_k": None, "max_length_q": None, "max_length_k": None}


def _samples(lengths=LENGTHS):
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(3, VOCAB_SIZE, (n,), generator=generator).tolist() for n in lengths]


def _packed_batch(samples, position_ids_only=False, device="cpu"):
    batch = LongAlignDataCollator(pad_token_id=0, return_loss_bookkeeping=False)(
        [{"input_ids": ids, "labels": ids} for ids in samples]
    )
    batch.pop("labels")
    if position_ids_only:  # no `cu_seq_lens`, as sequence parallelism hands the attention
        batch.update(WITHOUT_CU_SEQ_LENS)
    return {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}


def eager_logits_alone(model, samples):
    """The model's own eager logits for each sample run alone: the reference."""
    model.set_attn_implementation("eager")
    with torch.no_grad():
        return [
            model(input_ids=torch.tensor([ids], device=model.device), use_cache=False).logits[0] for ids in samples
        ]


def packed_error(model, attention, samples, alone, position_ids_only=False):
    """Largest difference between a sample's logits in a packed row run with `attention` and `alone`."""
    model.set_attn_implementation(attention)
    with torch.no_grad():
        packed = model(**_packed_batch(samples, position_ids_only, model.device)).logits[0]
    rows = packed.split([len(ids) for ids in samples])
    return max((row.float() - reference.float()).abs().max().item() for row, reference in zip(rows, alone))


def packed_error_against_eager_alone(model, attention, samples, position_ids_only=False):
    return packed_error(model, attention, samples, eager_logits_alone(model, samples), position_ids_only)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_packed_samples_equal_eager_alone_within_the_window(architecture):
    model = build_sliding_window_model(architecture, WINDOW, seed=1)
    samples = _samples()
    alone = eager_logits_alone(model, samples)
    errors = {
        (attention, "position_ids" if position_ids_only else "cu_seq_lens"): packed_error(
            model, attention, samples, alone, position_ids_only
        )
        for attention in ["eager", "sdpa", PACKED_SDPA, VARLEN_PACKED]  # varlen_packed: sdpa_packed on a CPU
        for position_ids_only in (False, True)
    }
    assert max(errors.values()) < 1e-5, errors


def _drop_the_window(module, *args, sliding_window=None, **kwargs):
    return packed_sdpa_attention_forward(module, *args, **kwargs)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_the_window_matters_so_the_comparison_can_fail(architecture):
    # Negative control: per-sample causal attention without the window (what sdpa_packed and varlen_packed computed
    # before they read `sliding_window`) is off by ~0.1-0.5 on logits below ~0.45.
    AttentionInterface.register("sdpa_packed_without_window", _drop_the_window)
    AttentionMaskInterface.register("sdpa_packed_without_window", packed_sdpa_mask)
    model = build_sliding_window_model(architecture, WINDOW, seed=1)
    assert packed_error_against_eager_alone(model, "sdpa_packed_without_window", _samples()) > 0.05
    # Samples no longer than the window never reach its edge: there the window changes nothing.
    short = _samples((3, 4, 1))
    assert packed_error_against_eager_alone(model, "sdpa_packed_without_window", short) < 1e-5


def test_gemma2_stays_eager_in_the_trainer_and_eager_keeps_window_and_softcapping(tokenizer, tmp_path):
    import datasets

    from longalign_hf import LongAlignConfig, LongAlignSFTTrainer

    model = build_sliding_window_model("gemma2", WINDOW, seed=1, attention=None)
    assert model.config._attn_implementation == "eager"  # transformers 5.24's default: Gemma-2 has no sdpa
    model.config.attn_logit_softcapping = 0.5  # small enough to change the logits: eager must apply it per layer
    for layer in model.model.layers:
        layer.self_attn.attn_logit_softcapping = 0.5
    args = LongAlignConfig(output_dir=str(tmp_path), max_length=128, use_cpu=True, report_to="none", batching="pack")
    dataset = datasets.Dataset.from_list([{"input_ids": ids, "labels": ids} for ids in _samples()])
    trainer = LongAlignSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    assert trainer.model.config._attn_implementation == "eager"
    assert packed_error_against_eager_alone(trainer.model, "eager", _samples()) < 1e-5
    assert packed_error_against_eager_alone(trainer.model, "eager", _samples(), position_ids_only=True) < 1e-5


@pytest.mark.parametrize("backend", [PACKED_SDPA, VARLEN_PACKED])
def test_softcapping_is_refused_before_training_and_at_the_first_forward(backend):
    model = build_sliding_window_model("gemma2", WINDOW, seed=1, attention=None)
    with pytest.raises(
        ValueError, match=r"Gemma2ForCausalLM uses attention logit softcapping .*--attn_implementation eager"
    ):
        check_packed_attention(model, backend)
    check_packed_attention(model, "eager")  # eager computes it
    check_packed_attention(build_sliding_window_model("gemma3", WINDOW), backend)  # a window alone is kept
    if backend == VARLEN_PACKED:  # transformers refuses to switch Gemma-2 to an "sdpa" name
        with pytest.raises(ValueError, match=f"{backend} cannot compute attention logit softcapping"):
            packed_error_against_eager_alone(model, backend, _samples())


def test_attention_sinks_are_refused_before_training():
    from transformers import AutoModelForCausalLM, GptOssConfig

    config = GptOssConfig(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=2,
                          num_experts_per_tok=1, sliding_window=WINDOW)  # fmt: skip
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(ValueError, match="GptOssForCausalLM uses attention sinks"):
        check_packed_attention(model, VARLEN_PACKED)
    batch = LongAlignDataCollator(pad_token_id=0, return_loss_bookkeeping=False)(
        [{"input_ids": ids, "labels": ids} for ids in _samples()]
    )
    batch.pop("labels")
    model.config._attn_implementation = VARLEN_PACKED  # as a model loaded with it would be
    with pytest.raises(ValueError, match="varlen_packed cannot compute attention sinks"):
        model(**batch)


def test_the_trainer_runs_mistral_on_sdpa_packed_with_its_window(tokenizer, tmp_path):
    import datasets

    from longalign_hf import LongAlignConfig, LongAlignSFTTrainer

    model = build_sliding_window_model("mistral", WINDOW, seed=3, attention="sdpa")
    args = LongAlignConfig(output_dir=str(tmp_path), max_length=128, use_cpu=True, report_to="none", batching="pack")
    dataset = datasets.Dataset.from_list([{"input_ids": ids, "labels": ids} for ids in _samples()])
    trainer = LongAlignSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    assert trainer.model.config._attn_implementation == PACKED_SDPA  # no CUDA: per-sample SDPA
    assert packed_error_against_eager_alone(trainer.model, PACKED_SDPA, _samples()) < 1e-5


# ---- on a GPU: the real kernels -----------------------------------------------------------------------------------

# The packed row runs in bfloat16; the reference is the model's eager attention in float32 on the same (rounded)
# weights, each sample alone. bfloat16 rounds every layer's activations at ~2^-9 relative: on logits below ~0.45
# that is a few 1e-3; 2e-2 leaves room, and is still 5x below what dropping the window costs (0.15-0.5, above).
GPU_TOLERANCE = 2e-2


@pytest.mark.gpu
@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("attention", [VARLEN_PACKED, PACKED_SDPA, "flash_attention_2"])
@pytest.mark.parametrize("position_ids_only", [False, True], ids=["cu_seq_lens", "position_ids"])
def test_packed_samples_equal_eager_alone_within_the_window_on_gpu(
    monkeypatch, caplog, architecture, attention, position_ids_only
):
    if attention == "flash_attention_2":
        pytest.importorskip("flash_attn", reason="flash-attn is not installed")
    model = build_sliding_window_model(architecture, WINDOW, seed=1).to("cuda", torch.bfloat16)
    samples = _samples()
    alone = eager_logits_alone(copy.deepcopy(model).float(), samples)  # the rounded weights and RoPE buffers, in fp32
    windows = []
    if varlen_attention.varlen_attn is not None:  # record the real kernel's windows, to say what ran
        real = varlen_attention.varlen_attn

        @functools.wraps(real)
        def recorded(*args, **kwargs):
            windows.append(kwargs.get("window_size", "is_causal"))
            return real(*args, **kwargs)

        monkeypatch.setattr(varlen_attention, "varlen_attn", recorded)
    monkeypatch.setattr(varlen_attention, "_reported", set())
    with caplog.at_level(logging.WARNING, logger=varlen_attention.__name__):
        error = packed_error(model, attention, samples, alone, position_ids_only)
    print(f"{architecture} {attention} ({'position ids' if position_ids_only else 'cu_seq_lens'}) on "
          f"{torch.cuda.get_device_name()}, torch {torch.__version__}: kernel windows {windows or caplog.text}; "
          f"max |packed bf16 - eager fp32 alone| = {error:.2e}")  # fmt: skip
    assert error < GPU_TOLERANCE
    if attention == VARLEN_PACKED and varlen_attention._device_reason(model.device) is None:
        expected = [(WINDOW - 1, 0) if kind == "sliding_attention" else (-1, 0)
                    for kind in SLIDING_WINDOW_LAYERS[architecture]]  # fmt: skip
        assert windows == expected or "has no window_size" in caplog.text, (windows, caplog.text)
