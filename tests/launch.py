"""Start a script under `accelerate launch` on this CPU-only machine, for the multi-process tests."""

import os
import socket
import subprocess
import sys

import pytest

from longalign_hf.training.distributed import run_with_deadline


def free_port() -> int:
    # A fresh rendezvous port per launch: the previous launch's port can linger in TIME_WAIT.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def accelerate_launch(
    script: str,
    args: list[str],
    num_processes: int = 2,
    config_file: str | None = None,
    timeout: float = 180,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """Run `accelerate launch` (DDP over gloo on CPU) and return the finished process.

    A launch that outlives `timeout` seconds (a hang, typically at teardown) is killed with all its workers and fails
    the test with what it printed.
    """
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes)]
    launcher += ["--config_file", config_file] if config_file else ["--multi_gpu", "--num_machines", "1"]
    launcher += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, **(env or {}), "PYTHONPATH": tests_dir + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        return run_with_deadline([*launcher, script, *args], timeout=timeout, env=env)
    except subprocess.TimeoutExpired as error:
        pytest.fail(
            f"{os.path.basename(script)} did not finish within {timeout:.0f} s:\n{(error.stderr or '')[-3000:]}"
        )


def torchrun_launch(script: str, args: list[str], num_processes: int, timeout: float = 240, env: dict | None = None):
    """Run `torchrun --nproc_per_node N script args` (gloo on CPU) with a deadline, like `accelerate_launch`."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(num_processes)]
    launcher += ["--master_port", str(free_port())]
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, **(env or {}), "PYTHONPATH": tests_dir + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        return run_with_deadline([*launcher, script, *args], timeout=timeout, env=env)
    except subprocess.TimeoutExpired as error:
        pytest.fail(
            f"{os.path.basename(script)} did not finish within {timeout:.0f} s:\n{(error.stderr or '')[-3000:]}"
        )
