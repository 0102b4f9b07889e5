import importlib
import importlib.util
import os
import sys
from pathlib import Path

import background
import pytest
import torch

from longalign_hf.tiny import build_byte_tokenizer, build_tiny_model

BACKGROUND: dict[str, background.BackgroundRun] = {}  # by test id, once started
START_BEFORE: dict[str, list[pytest.Item]] = {}  # test id -> the background tests whose command starts before it
OP_BUILDS: list = []  # DeepSpeed's CPU op build, when started


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "background(command=...): command(folder) runs alongside the tests after it; the test runs last (background.py)",
    )
    if "OMP_NUM_THREADS" not in os.environ:
        # One thread per process (this one and those the tests start): the tests' tensors are tiny, and on a busy
        # 2-core machine a second OpenMP thread spin-waits for a core (4x the CPU time of the training tests).
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
    # DeepSpeed builds its CPU ops (`deepspeed_shm_comm`: minutes) into a cache shared by every environment, with the
    # `ninja` on PATH; a `ninja` of another version reads the cache as stale and builds again. Use this environment's.
    bin_dir = os.path.dirname(sys.executable)
    if os.path.exists(os.path.join(bin_dir, "ninja")):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


@pytest.hookimpl(trylast=True)  # after `-k` / `-m` deselected what they do
def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
    # A background test's command starts where the test was, before the next test that is not one; the test goes
    # last, by when its command has run alongside the tests in between.
    waiting = []
    for item in items:
        if item.get_closest_marker("background") is not None:
            waiting.append(item)
        elif waiting:
            START_BEFORE[item.nodeid], waiting = waiting, []
    items.sort(key=lambda item: item.get_closest_marker("background") is not None)
    if importlib.util.find_spec("deepspeed") and any("multiprocess" in item.keywords for item in items):
        OP_BUILDS.append(background.build_deepspeed_cpu_ops())


def _start(item: pytest.Item) -> None:
    BACKGROUND[item.nodeid] = background.start(item.get_closest_marker("background").kwargs["command"])


@pytest.hookimpl(tryfirst=True)  # before a skip marker ends the setup
def pytest_runtest_setup(item):
    for waiting in START_BEFORE.pop(item.nodeid, []):
        _start(waiting)


def pytest_sessionfinish(session):
    for run in BACKGROUND.values():
        background.finish(run)
    for build in OP_BUILDS:
        build.wait()


@pytest.fixture
def background_run(request) -> background.BackgroundRun:
    """The command of this test's `background` marker, running or done (started now if no test came after it)."""
    if request.node.nodeid not in BACKGROUND:
        _start(request.node)
    return BACKGROUND[request.node.nodeid]


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
