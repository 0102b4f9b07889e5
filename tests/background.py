"""Commands that run alongside the test session, for tests marked `@pytest.mark.background(command=...)`.

A long one-process command (the GPU check's dry run: a minute of one CPU core) leaves the second core of a 2-core
machine idle while it runs. Such a test gives its command to the marker: `command(folder)` builds the argv, with
`folder` a new folder of its own. The command starts where the test was in the run (before the next test), the test
is moved to the end of the run, and by the time it runs, the command has run alongside the tests in between (mostly
one-process tests, when the next ones are); the test waits for it with `wait()` and checks what it left in `folder`.
A session with multi-process tests also builds DeepSpeed's CPU ops alongside them (`build_deepspeed_cpu_ops`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]  # the commands run here


@dataclass
class BackgroundRun:
    """A test's command, started with the session; `folder` is the command's own, `log` its stdout and stderr."""

    process: subprocess.Popen
    folder: Path
    log: Path
    started: float

    def wait(self, timeout: float) -> tuple[int, str]:
        """Its exit status and output, once it ends; fails the test if it outlives `timeout` seconds from its start."""
        try:
            returncode = self.process.wait(timeout=max(timeout - (time.monotonic() - self.started), 1.0))
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"did not finish within {timeout:.0f} s:\n{self.output()[-3000:]}")
        return returncode, self.output()

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        """Kill the command and everything it started, if it is still running."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()


def start(command: Callable[[Path], list[str]]) -> BackgroundRun:
    """Start `command(folder)` in a new folder, in its own process group, from the repository root."""
    folder = Path(tempfile.mkdtemp(prefix="longalign-background-"))
    log = folder / "output.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            command(folder), cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    return BackgroundRun(process, folder, log, time.monotonic())


DEEPSPEED_CPU_OPS = ("ShareMemCommBuilder", "CPUAdamBuilder")  # gloo's shared-memory collectives, CPU Adam (offload)


def build_deepspeed_cpu_ops() -> subprocess.Popen:
    """Build DeepSpeed's CPU ops now, alongside the tests, on one core: the first DeepSpeed launch would otherwise
    spend a minute and a half of both cores compiling them (once per machine: they are cached), with no test running.

    torch guards an extension's build with a lock file that a killed build leaves behind (the next build then waits
    forever), so the build runs in its own session, out of reach of a Ctrl-C, and is waited for, never killed."""
    code = "from deepspeed.accelerator import get_accelerator\n" + "".join(
        f"get_accelerator().create_op_builder({name!r}).load()\n" for name in DEEPSPEED_CPU_OPS
    )
    environment = {**os.environ, "DS_ACCELERATOR": "cpu", "MAX_JOBS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env=environment, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


def finish(run: BackgroundRun) -> None:
    """Stop the command if it still runs, and remove its folder."""
    run.stop()
    shutil.rmtree(run.folder, ignore_errors=True)
