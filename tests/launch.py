"""Start a script under `accelerate launch` on this CPU-only machine, for the multi-process tests."""

import os
import socket
import subprocess
import sys


def free_port() -> int:
    # A fresh rendezvous port per launch: the previous launch's port can linger in TIME_WAIT.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def accelerate_launch(
    script: str, args: list[str], num_processes: int = 2, config_file: str | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    """Run `accelerate launch` (DDP over gloo on CPU) and return the finished process."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes)]
    launcher += ["--config_file", config_file] if config_file else ["--multi_gpu", "--num_machines", "1"]
    launcher += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": tests_dir + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([*launcher, script, *args], capture_output=True, text=True, env=env, timeout=timeout)
