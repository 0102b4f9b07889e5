"""Pick the attention backend at run time and say why; tell which Hub attention kernels keep packed samples apart."""

from __future__ import annotations

import importlib.util
import re

import torch

from longalign_hf.training import varlen_attention
from longalign_hf.training.varlen_attention import VARLEN_PACKED

# Hub attention kernels (`attn_implementation="org/repo[@revision][:function]"`) that keep packed samples apart.
# transformers runs a Hub kernel through its FlashAttention wrapper (`integrations.flash_attention`, which cuts packed
# rows at `cu_seq_lens` or at restarting position ids, as for `flash_attention_2`) only when the downloaded kernel has
# `flash_attn_varlen_func` (`integrations.hub_kernels.load_and_register_attn_kernel`); any other kernel is registered
# with its own entry point and no packing contract. What a repo holds is known only after a download, so the decision
# is made on names: the FlashAttention 2/3 builds, which transformers itself loads for `flash_attention_2` /
# `flash_attention_3` when flash-attn is missing (`FLASH_ATTN_KERNEL_FALLBACK`, requiring their varlen function).
PACKING_HUB_KERNELS = (
    "kernels-community/flash-attn2",
    "kernels-community/flash-attn3",
    "kernels-community/vllm-flash-attn3",
    "kernels-community/aiter-flash-attn",  # the ROCm build transformers uses for flash_attention_2/3 on AMD GPUs
)


def hub_kernel_repo(attn_implementation: str | None) -> str | None:
    """The Hub repo of a kernel `attn_implementation` (`org/repo[@revision][:function]`), `None` for other names."""
    match = re.fullmatch(r"([^/:@|]+/[^/:@|]+)(?:@[^/:]+)?(?::[^/:]+)?", attn_implementation or "")
    return match.group(1) if match else None


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _gpu_capability() -> tuple[int, int] | None:
    """Compute capability of the current CUDA device, `None` without one."""
    return torch.cuda.get_device_capability() if torch.cuda.is_available() else None


# FlashAttention-2 (flash-attn 2.x) runs on Ampere (sm80) and newer GPUs only; older ones fail at the first forward.
_FLASH_ATTENTION_2_MIN_CAPABILITY = (8, 0)


def _flash_attention_2_unavailable(capability: tuple[int, int] | None) -> str | None:
    """Why FlashAttention-2 cannot run on this machine (`capability`: its GPU's, `None` without one), or `None`."""
    if not _installed("flash_attn"):
        return "flash-attn is not installed"
    if capability is None:
        return "there is no CUDA GPU"
    if capability < _FLASH_ATTENTION_2_MIN_CAPABILITY:
        return (
            f"flash-attn is installed but FlashAttention-2 needs compute capability 8.0+ (Ampere or newer; this GPU: "
            f"{capability[0]}.{capability[1]})"
        )
    return None


def flash_attn_available() -> bool:
    """Whether FlashAttention-2 can run here: the `flash_attn` package is importable and the GPU is Ampere or newer."""
    return _flash_attention_2_unavailable(_gpu_capability()) is None


def choose_attention(requested: str | None = None) -> tuple[str, str]:
    """Return `(attn_implementation, reason)`: the user's choice, else the fastest backend that isolates packed samples.

    In order: FlashAttention-3 (flash-attn 3 on a Hopper GPU), FlashAttention-2 (flash-attn on an Ampere or newer
    GPU), `varlen_packed` (PyTorch's own varlen FlashAttention kernel, on an Ampere or newer GPU), else sdpa (run per
    packed sample as `sdpa_packed` by the trainer). `flash_attention_2` requested where it cannot run raises
    `ValueError` (it would fail at the first forward, after data preparation).
    """
    if requested:
        if requested == "flash_attention_2":
            missing = _flash_attention_2_unavailable(_gpu_capability())
            if missing is not None:
                raise ValueError(
                    f"attn_implementation='flash_attention_2' cannot run here: {missing}. It needs the flash-attn "
                    "package (`pip install flash-attn --no-build-isolation`) and an Ampere or newer CUDA GPU; use "
                    f"{VARLEN_PACKED!r} (Ampere or newer) or 'sdpa' otherwise"
                )
        return requested, "requested by the user"
    capability = _gpu_capability()
    if capability is None:
        return "sdpa", "no CUDA GPU; sdpa isolates packed samples through position ids (per sample: sdpa_packed)"
    gpu = f"compute capability {capability[0]}.{capability[1]}"
    if capability[0] == 9 and _installed("flash_attn_interface"):
        return "flash_attention_3", f"flash-attn 3 (flash_attn_interface) is installed and the GPU is a Hopper ({gpu})"
    no_flash = _flash_attention_2_unavailable(capability)
    if no_flash is None:
        return "flash_attention_2", f"flash-attn is installed and the GPU is Ampere or newer ({gpu})"
    missing = varlen_unavailable(capability)
    if missing is not None:
        return "sdpa", (
            f"{no_flash} and {missing}; sdpa isolates packed samples through position ids (per sample: sdpa_packed)"
        )
    return VARLEN_PACKED, (
        f"{no_flash}; torch {torch.__version__}'s own FlashAttention varlen kernel (torch.nn.attention.varlen) cuts "
        f"packed rows at cu_seq_lens on this GPU ({gpu})"
    )


def varlen_unavailable(capability: tuple[int, int] | None = None) -> str | None:
    """Why `varlen_packed` cannot run its kernel on this machine's GPU, or `None` when it can."""
    capability = capability or _gpu_capability()
    if capability is None:
        return "there is no CUDA GPU"
    if varlen_attention.varlen_attn is None:
        return f"torch {torch.__version__} has no varlen_attn (torch >= 2.10)"
    if capability < (8, 0):
        return f"PyTorch's varlen kernel needs compute capability 8.0+ (this GPU: {capability[0]}.{capability[1]})"
    return None
