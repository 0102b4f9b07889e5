"""Which attention backend the recipe picks, and which backends (Hub kernels included) may train packed rows."""

import pytest

from longalign_hf import LongAlignSFTTrainer
from longalign_hf.training import attention, varlen_attention
from longalign_hf.training.attention import PACKING_HUB_KERNELS, choose_attention, hub_kernel_repo
from longalign_hf.training.checks import packing_attention
from longalign_hf.training.varlen_attention import VARLEN_PACKED


@pytest.fixture
def machine(monkeypatch):
    """Describe the machine: `machine(capability=(9, 0), installed={"flash_attn"}, varlen=True)`."""

    def describe(capability=None, installed=(), varlen=True):
        monkeypatch.setattr(attention, "_gpu_capability", lambda: capability)
        monkeypatch.setattr(attention, "_installed", lambda package: package in installed)
        monkeypatch.setattr(varlen_attention, "varlen_attn", (lambda *args, **kwargs: None) if varlen else None)

    return describe


@pytest.mark.parametrize(
    ("capability", "installed", "varlen", "chosen", "why"),
    [
        (None, {"flash_attn", "flash_attn_interface"}, True, "sdpa", "no CUDA GPU"),
        ((9, 0), {"flash_attn", "flash_attn_interface"}, True, "flash_attention_3", "the GPU is a Hopper"),
        ((9, 0), {"flash_attn"}, True, "flash_attention_2", "flash-attn is installed and the GPU is Ampere or newer"),
        ((8, 0), {"flash_attn", "flash_attn_interface"}, True, "flash_attention_2", "compute capability 8.0"),
        # FlashAttention-2 refuses GPUs older than Ampere at the first forward, and so does PyTorch's varlen kernel.
        (
            (7, 5),
            {"flash_attn"},
            True,
            "sdpa",
            "FlashAttention-2 needs compute capability 8.0+ (Ampere or newer; "
            "this GPU: 7.5) and PyTorch's varlen kernel needs compute capability 8.0+",
        ),
        ((7, 0), {"flash_attn"}, False, "sdpa", "this GPU: 7.0) and torch"),
        ((8, 6), {"flash_attn_interface"}, True, VARLEN_PACKED, "compute capability 8.6"),
        ((9, 0), (), True, VARLEN_PACKED, "flash-attn is not installed; torch"),
        ((10, 0), (), True, VARLEN_PACKED, "torch.nn.attention.varlen"),
        ((7, 5), (), True, "sdpa", "needs compute capability 8.0+ (this GPU: 7.5)"),
        ((9, 0), (), False, "sdpa", "has no varlen_attn (torch >= 2.10)"),
    ],
)
def test_the_backend_chosen_for_each_machine(machine, capability, installed, varlen, chosen, why):
    machine(capability=capability, installed=installed, varlen=varlen)
    backend, reason = choose_attention()
    assert backend == chosen and why in reason, reason


def test_the_user_choice_wins(machine):
    machine(capability=(9, 0), installed={"flash_attn"})
    assert choose_attention("eager") == ("eager", "requested by the user")
    assert choose_attention("flash_attention_2") == ("flash_attention_2", "requested by the user")
    machine(capability=(8, 0), installed={"flash_attn"})
    assert choose_attention("flash_attention_2") == ("flash_attention_2", "requested by the user")
    machine(capability=None)
    assert choose_attention(VARLEN_PACKED) == (VARLEN_PACKED, "requested by the user")  # falls back at run time
    assert choose_attention("kernels-community/flash-attn2")[0] == "kernels-community/flash-attn2"


@pytest.mark.parametrize(
    ("capability", "installed", "problem"),
    [
        ((9, 0), (), "flash-attn is not installed"),
        (None, {"flash_attn"}, "there is no CUDA GPU"),
        ((7, 5), {"flash_attn"}, "flash-attn is installed but FlashAttention-2 needs compute capability 8.0+"),
    ],
)
def test_flash_attention_2_requested_where_it_cannot_run_is_refused_with_the_fix(
    machine, capability, installed, problem
):
    machine(capability=capability, installed=installed)
    with pytest.raises(ValueError) as refused:
        choose_attention("flash_attention_2")
    message = str(refused.value)
    assert message.startswith(f"attn_implementation='flash_attention_2' cannot run here: {problem}")
    assert "pip install flash-attn --no-build-isolation" in message and "'sdpa'" in message and "\n" not in message
    assert not attention.flash_attn_available()


@pytest.mark.parametrize(
    ("name", "repo"),
    [
        ("kernels-community/flash-attn2", "kernels-community/flash-attn2"),
        ("kernels-community/vllm-flash-attn3@v1", "kernels-community/vllm-flash-attn3"),
        ("kernels-community/flash-attn3:flash_attn_varlen_func", "kernels-community/flash-attn3"),
        ("me/my-kernel@main:attention", "me/my-kernel"),
        ("sdpa", None),
        (VARLEN_PACKED, None),
        ("paged|kernels-community/flash-attn2", None),
        (None, None),
    ],
)
def test_hub_kernel_names_are_read_like_transformers_does(name, repo):
    from transformers.integrations.hub_kernels import is_kernel

    assert hub_kernel_repo(name) == repo
    if repo is not None:
        assert is_kernel(name)  # a name transformers would load from the Hub


def _check(backend):
    """The trainer's pack-isolation check for a model whose attention is `backend` (no model or data needed)."""
    assert packing_attention(backend) == backend


@pytest.mark.parametrize(
    "backend",
    [
        VARLEN_PACKED,
        "sdpa_packed",
        "eager",
        "flash_attention_2",
        "flash_attention_3",
        *PACKING_HUB_KERNELS,
        "kernels-community/flash-attn2@v4",
        "kernels-community/vllm-flash-attn3:flash_attn_varlen_func",
    ],
)
def test_backends_that_cut_packed_rows_are_accepted(backend):
    _check(backend)


@pytest.mark.parametrize(
    "backend",
    [
        "kernels-community/flash-mla",  # its own entry point: no `cu_seq_lens` packing contract
        "kernels-community/metal-flash-sdpa",
        "kernels-community/flash-attn4",  # FlashAttention-4: not validated here
        "someone/flash-attn2",  # same name, another owner: any code
        "kernels-community/flash-attn2-experimental",
    ],
)
def test_other_hub_kernels_are_refused_with_the_reason(backend):
    with pytest.raises(
        ValueError, match=r"Hub kernel .* only for the kernels it runs through its FlashAttention wrapper"
    ):
        _check(backend)


@pytest.mark.parametrize("backend", ["flex_attention", "paged|kernels-community/flash-attn2", "paged|sdpa"])
def test_other_backends_are_refused(backend):
    with pytest.raises(ValueError, match="cannot keep packed samples apart"):
        _check(backend)


def test_hub_kernels_accepted_are_the_flash_attention_builds_transformers_itself_loads():
    # transformers' own fallbacks for `flash_attention_2/3` (used when flash-attn is missing and `kernels` is installed,
    # which leaves `config._attn_implementation` set to the kernel's repo) must pass the check.
    from transformers.modeling_flash_attention_utils import FLASH_ATTN_KERNEL_FALLBACK, FLASH_ATTN_KERNEL_VERSIONS

    for implementation in ("flash_attention_2", "flash_attention_3"):
        assert FLASH_ATTN_KERNEL_FALLBACK[implementation] in PACKING_HUB_KERNELS
    assert set(PACKING_HUB_KERNELS) <= set(FLASH_ATTN_KERNEL_VERSIONS)  # repos transformers knows as flash kernels


@pytest.mark.parametrize(("missing", "expected"), [(None, VARLEN_PACKED), ("there is no CUDA GPU", "sdpa_packed")])
def test_plain_sdpa_packs_through_the_varlen_kernel_where_it_runs(tokenizer, tmp_path, monkeypatch, missing, expected):
    import datasets

    import longalign_hf.training.checks as checks_module
    from longalign_hf import LongAlignConfig
    from longalign_hf.tiny import build_tiny_model

    monkeypatch.setattr(checks_module, "varlen_unavailable", lambda: missing)
    model = build_tiny_model(tokenizer)
    model.config._attn_implementation = "sdpa"
    args = LongAlignConfig(output_dir=str(tmp_path), max_length=64, use_cpu=True, report_to="none")
    trainer = LongAlignSFTTrainer(
        model=model, args=args, processing_class=tokenizer,
        train_dataset=datasets.Dataset.from_list([{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}]),
    )  # fmt: skip
    assert trainer.model.config._attn_implementation == expected
