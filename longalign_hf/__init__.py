"""longalign-hf: the LongAlign recipe (packing, loss weighting, LongBench-Chat) as plug-ins for TRL and Accelerate."""

__version__ = "0.1.0"
