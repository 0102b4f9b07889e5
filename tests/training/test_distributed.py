"""Multi-process entry points end without the gloo teardown that can deadlock, whether they return or raise."""

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from launch import accelerate_launch

from longalign_hf.training.distributed import run_then_exit, run_with_deadline

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(__file__)), "exit_check.py")


@pytest.mark.multiprocess
def test_two_gloo_workers_exit_promptly_with_the_right_status(tmp_path):
    # The two launches run at once: each is mostly process start-up, which they share the two cores for.
    statuses = {"return": 0, "raise": 1}
    with ThreadPoolExecutor(len(statuses)) as pool:
        launches = {
            ending: pool.submit(accelerate_launch, SCRIPT, [ending, str(tmp_path / ending)], timeout=120)
            for ending in statuses
        }
    for ending, status in statuses.items():
        completed = launches[ending].result()
        assert completed.returncode == status, f"{ending}: {completed.stderr[-3000:]}"
        # end_training left the group alone (destroying it under a live DDP reducer is the deadlock).
        assert "group alive after end_training: True" in completed.stdout, ending
        assert ("RuntimeError: boom after training" in completed.stderr) == (ending == "raise"), ending


def test_in_a_single_process_it_returns_and_raises_as_usual():
    assert run_then_exit(lambda x: x + 1, 1) == 2
    with pytest.raises(KeyError):
        run_then_exit(lambda: {}["missing"])


def test_a_command_past_its_deadline_is_killed_with_its_children(tmp_path):
    marker = tmp_path / "child.pid"
    # A launcher whose worker would outlive it if only the launcher were killed.
    script = (
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(marker)!r}, 'w').write(str(child.pid)); time.sleep(60)"
    )
    with pytest.raises(subprocess.TimeoutExpired):
        run_with_deadline([sys.executable, "-c", script], timeout=3)
    child = int(marker.read_text())
    for _ in range(50):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    pytest.fail("the launcher's child survived the deadline")
