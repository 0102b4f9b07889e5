"""longalign-hf: the LongAlign recipe (packing, loss weighting, LongBench-Chat) as plug-ins for TRL and Accelerate."""

from .collator import LongAlignDataCollator
from .config import LongAlignConfig
from .data import LongBenchChatBuilder
from .judge import JudgeClient
from .packed_attention import PACKED_SDPA
from .packed_dataset import pack_dataset
from .packing import pack_stats, plan_packs, split_packs
from .sampler import SortedBatchSampler
from .trainer import LongAlignSFTTrainer

__version__ = "0.1.0"

__all__ = [
    "JudgeClient",
    "PACKED_SDPA",
    "LongAlignConfig",
    "LongAlignDataCollator",
    "LongAlignSFTTrainer",
    "LongBenchChatBuilder",
    "SortedBatchSampler",
    "pack_dataset",
    "pack_stats",
    "plan_packs",
    "split_packs",
]
