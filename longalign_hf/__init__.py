"""longalign-hf: the LongAlign recipe (packing, loss weighting, LongBench-Chat) as plug-ins for TRL and Accelerate.

Names are imported on first use, so `import longalign_hf` (and the `longalign` command's help) does not load torch.
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_PUBLIC = {
    "ChatClient": "longalign_hf.llm_client",
    "PACKED_SDPA": "longalign_hf.training.packed_attention",
    "VARLEN_PACKED": "longalign_hf.training.varlen_attention",
    "LongAlignConfig": "longalign_hf.training.config",
    "LongAlignDataCollator": "longalign_hf.training.collator",
    "LongAlignSFTTrainer": "longalign_hf.training.trainer",
    "LongBenchChatBuilder": "longalign_hf.data.longbench_chat.builder",
    "SortedBatchSampler": "longalign_hf.training.sampler",
    "pack_dataset": "longalign_hf.training.packed_dataset",
    "pack_stats": "longalign_hf.training.packing",
    "plan_packs": "longalign_hf.training.packing",
    "split_packs": "longalign_hf.training.schedule",
}
_SUBPACKAGES = ("data", "evaluation", "metrics")
# Old public name -> its new name: still importable, with a FutureWarning.
_RENAMED = {"JudgeClient": "ChatClient"}

__all__ = [
    "ChatClient",
    "PACKED_SDPA",
    "LongAlignConfig",
    "LongAlignDataCollator",
    "LongAlignSFTTrainer",
    "LongBenchChatBuilder",
    "SortedBatchSampler",
    "VARLEN_PACKED",
    "pack_dataset",
    "pack_stats",
    "plan_packs",
    "split_packs",
]

if TYPE_CHECKING:
    from longalign_hf.data.longbench_chat.builder import LongBenchChatBuilder
    from longalign_hf.llm_client import ChatClient
    from longalign_hf.training.collator import LongAlignDataCollator
    from longalign_hf.training.config import LongAlignConfig
    from longalign_hf.training.packed_attention import PACKED_SDPA
    from longalign_hf.training.packed_dataset import pack_dataset
    from longalign_hf.training.packing import pack_stats, plan_packs
    from longalign_hf.training.sampler import SortedBatchSampler
    from longalign_hf.training.schedule import split_packs
    from longalign_hf.training.trainer import LongAlignSFTTrainer
    from longalign_hf.training.varlen_attention import VARLEN_PACKED


def __getattr__(name: str) -> Any:
    if name in _RENAMED:
        warnings.warn(
            f"`longalign_hf.{name}` is now `longalign_hf.{_RENAMED[name]}`; the old name will be removed in a future "
            "release.",
            FutureWarning,
            stacklevel=2,
        )
        return __getattr__(_RENAMED[name])
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC, *_SUBPACKAGES})
