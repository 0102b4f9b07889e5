import importlib
from pathlib import Path

import pytest
import torch

from longalign_hf.tiny import build_byte_tokenizer, build_tiny_model


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


BENCHMARK_DIR = Path(__file__).resolve().parents[1] / "benchmark"


@pytest.fixture
def benchmark(monkeypatch):
    """Import a script of `benchmark/` by module name (`benchmark("planner")`)."""
    monkeypatch.syspath_prepend(str(BENCHMARK_DIR))
    return importlib.import_module


@pytest.fixture(scope="session")
def tokenizer():
    return build_byte_tokenizer()


@pytest.fixture
def tiny_model(tokenizer):
    return build_tiny_model(tokenizer, seed=0, max_position_embeddings=1024)
