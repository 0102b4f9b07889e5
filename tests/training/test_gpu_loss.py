"""The loss-weighting contract on CUDA: one optimizer step's gradient against the per-sample reference, fp32 and bf16.

Same data and reference as `tests/training/test_loss_weighting.py` (`grad_check.py`): 12 samples, every sample run alone
through the plain model (sdpa, full logits) and the objective summed by hand. Here the trainer runs on the GPU with
every attention backend that can run there (`sdpa`, which packs as `sdpa_packed`; `varlen_packed`; FlashAttention-2
when flash-attn is installed).

fp32: the trainer's gradient equals the reference's to `FP32_TOLERANCE`, as on the CPU.

bf16 (`bf16=True`: autocast to bf16, fp32 weights, as the trainer trains): a bf16 gradient cannot match the fp32
reference to fp32 precision, so the bound is relative to bf16 itself. `e_trainer` is the trainer's deviation from the
fp32 reference and `e_bf16` that of the same reference run under bf16 autocast (each sample alone, full logits), both
as the relative norm of the difference over all gradients. The trainer must satisfy `e_trainer <= BF16_FACTOR *
e_bf16`: no worse than bf16 itself, up to the spread between two bf16 computations of the same gradient in different
orders (packed rows, chunked log-probabilities). Measured with CPU autocast (torch 2.13, the cases below, the trainer
with sdpa / sdpa_packed and eager): e_bf16 = 5.2e-3 to 5.7e-3 and e_trainer / e_bf16 = 0.72 to 0.81, while a wrong
weighting is off by far more (token instead of sequence weighting: 0.80 to 1.33; one sample left out: 0.44).
`BF16_FACTOR = 2` leaves 2.5x the measured ratio and bounds the error near 1e-2, 40x below a wrong weighting's.
`test_bf16_bound_on_cpu` repeats the measurement on the CPU in every run of the suite.
"""

import importlib
import importlib.util

import pytest
import torch
from grad_check import (
    MAX_LENGTH,
    NUM_PACKS,
    NUM_SAMPLES,
    _GradCapture,
    _LossCapture,
    _StepRecorder,
    build_dataset,
    reference_loss,
)

from longalign_hf import LongAlignConfig
from longalign_hf.tiny import build_byte_tokenizer, build_tiny_model
from longalign_hf.training.attention import choose_attention, flash_attn_available

FP32_TOLERANCE = 1e-5  # as tests/training/test_loss_weighting.py on the CPU
BF16_FACTOR = 2.0

CASES = [
    {"batching": "pack", "loss_weighting": "sequence", "accumulation": 3},
    {"batching": "pack", "loss_weighting": "token", "accumulation": 1},
    {"batching": "sort", "loss_weighting": "sequence", "accumulation": 2},
]


def _case_id(case: dict) -> str:
    return "-".join(str(value) for value in case.values())


def _cuda_backends() -> list[str]:
    """`sdpa`, the backend `choose_attention()` picks on this machine, `varlen_packed` and FlashAttention-2 where they
    are available."""
    from transformers import AttentionInterface

    import longalign_hf.training.trainer  # noqa: F401  (registers the packed backends)

    if importlib.util.find_spec("longalign_hf.training.varlen_attention") is not None:
        importlib.import_module("longalign_hf.training.varlen_attention")
    backends = ["sdpa", choose_attention()[0]]
    if "varlen_packed" in AttentionInterface._global_mapping:
        backends.append("varlen_packed")
    if flash_attn_available():
        backends.append("flash_attention_2")
    return list(dict.fromkeys(backends))


def _gradients(model, dataset, loss_weighting: str, device: str, bf16: bool) -> dict[str, torch.Tensor]:
    """The per-sample reference's gradients, computed on `device`, under bf16 autocast when `bf16`."""
    model.zero_grad(set_to_none=True)
    with torch.device(device), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        loss = reference_loss(model, dataset, loss_weighting)
    loss.backward()
    return {name: p.grad.detach().float().clone() for name, p in model.named_parameters() if p.grad is not None}


def one_step(case: dict, device: str, bf16: bool, attention: str, output_dir: str) -> dict:
    """Train one optimizer step over the 12 samples on `device` and return the trainer's gradient and loss with the
    fp32 and bf16 references' (from the weights the step started from)."""
    tokenizer = build_byte_tokenizer()
    model = build_tiny_model(tokenizer, seed=0, max_position_embeddings=MAX_LENGTH)
    model.config._attn_implementation = attention
    dataset = build_dataset(tokenizer)
    rows = NUM_PACKS if case["batching"] == "pack" else NUM_SAMPLES
    args = LongAlignConfig(
        output_dir=output_dir, batching=case["batching"], loss_weighting=case["loss_weighting"],
        max_length=MAX_LENGTH, per_device_train_batch_size=rows // case["accumulation"],
        gradient_accumulation_steps=case["accumulation"], activation_checkpointing=False, num_train_epochs=1,
        max_grad_norm=0.0, learning_rate=1e-3, lr_scheduler_type="constant", bf16=bf16, use_cpu=device == "cpu",
        report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0,
    )  # fmt: skip
    grads, losses = _GradCapture(), _LossCapture()
    trainer = _StepRecorder(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[grads, losses]
    )
    trainer.step_weights, trainer.step_samples, trainer.step_inputs = [], [], []
    trainer.train()
    assert len(grads.grads) == 1, "the case must train exactly one optimizer step"
    rows_by_ids = {tuple(ids): index for index, ids in enumerate(dataset["input_ids"])}
    trained = dataset.select([rows_by_ids[sample] for sample in trainer.step_samples[0]])
    # A fresh model: the trained one's forward is wrapped in the trainer's autocast.
    reference = build_tiny_model(tokenizer, seed=0, max_position_embeddings=MAX_LENGTH).to(device)
    reference.config._attn_implementation = "sdpa"
    reference.load_state_dict(trainer.step_weights[0])
    return {
        "grads": {name: grad.float() for name, grad in grads.grads[0].items()},
        "loss": losses.losses[0],
        "fp32": _gradients(reference, trained, case["loss_weighting"], device, bf16=False),
        "bf16": _gradients(reference, trained, case["loss_weighting"], device, bf16=True),
    }


def relative_error(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    """`|g - g_ref| / |g_ref|` over all parameters together."""
    assert set(grads) == set(reference)
    difference = sum(float((grads[name] - reference[name]).pow(2).sum()) for name in reference)
    return (difference / sum(float(reference[name].pow(2).sum()) for name in reference)) ** 0.5


def _assert_fp32_exact(result: dict) -> None:
    for name, expected in result["fp32"].items():
        difference = (result["grads"][name] - expected).norm() / expected.norm().clamp(min=1e-12)
        assert difference <= FP32_TOLERANCE, f"{name}: relative difference {difference:.2e}"


def _assert_bf16_bound(result: dict) -> tuple[float, float]:
    e_trainer = relative_error(result["grads"], result["fp32"])
    e_bf16 = relative_error(result["bf16"], result["fp32"])
    assert e_bf16 > 0, "the bf16 reference equals the fp32 one: autocast did not run"
    assert e_trainer <= BF16_FACTOR * e_bf16, f"trainer {e_trainer:.2e} vs bf16 itself {e_bf16:.2e}"
    return e_trainer, e_bf16


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_fp32_gradient_on_cuda(case, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    for attention in _cuda_backends():
        if attention.startswith("flash_attention"):
            continue  # flash-attn has no fp32 kernels
        _assert_fp32_exact(one_step(case, "cuda", False, attention, str(tmp_path / attention)))


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_bf16_gradient_on_cuda(case, tmp_path):
    for attention in _cuda_backends():
        _assert_bf16_bound(one_step(case, "cuda", True, attention, str(tmp_path / attention)))


def test_bf16_bound_on_cpu(tmp_path):
    # The bf16 bound with CPU autocast, so that the suite measures it where no GPU is.
    e_trainer, e_bf16 = _assert_bf16_bound(one_step(CASES[0], "cpu", True, "sdpa", str(tmp_path)))
    assert e_bf16 < 1e-2  # bf16 itself stays far below a wrong weighting's error
