"""Process teardown for multi-process runs on CPU (gloo), telling the launcher why a worker stopped, and launching
such runs with a deadline.

PyTorch's gloo process group can deadlock while it is destroyed with the DDP reducer that holds it: the main thread
joins gloo's worker thread while holding the GIL, and that thread may need the GIL to release a finished collective's
tensors. It happens at interpreter exit, and when the last reference to a trainer drops after its process group was
destroyed (`trainer.end()`). So a gloo worker never destroys its group: it ends with `os._exit` once its output is
written, whether its work returned or raised. GPU runs (NCCL) and single-process runs end normally.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any


def is_gloo_worker() -> bool:
    """Whether this process is one of several joined by a gloo process group."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 and dist.get_backend() == "gloo"


def _flush_and_exit(exit_code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(exit_code)


def exit_if_gloo(exit_code: int = 0) -> None:
    """End a gloo worker at once, without destroying its process group; call it last, when all its work is written.

    Returns (does nothing) in a single process or under NCCL.
    """
    if is_gloo_worker():
        _flush_and_exit(exit_code)


def end_training(trainer: Any) -> None:
    """`trainer.end()` (trackers closed, process group destroyed) where that is safe; a gloo worker keeps its group.

    Under gloo the process group must outlive every object that holds it, so it is left to `exit_if_gloo` /
    `run_then_exit`, which end the process without the teardown.
    """
    if not is_gloo_worker():
        trainer.end()
        return
    for tracker in trainer.accelerator.trackers:
        tracker.finish()


def run_then_exit(main: Callable[..., Any], *args: Any) -> Any:
    """Run a script's `main(*args)`; in a gloo worker, end the process right after, whether it returned or raised.

    What `main` returns (a trainer, say) stays referenced until the process ends, so no process group is torn down
    under it. A raised exception is printed and the worker exits with status 1 (130 on Ctrl-C, or `SystemExit`'s
    code), so the launcher sees the failure and stops the other workers. Outside gloo it returns `main`'s result and
    lets exceptions propagate.
    """
    try:
        result = main(*args)
    except SystemExit as error:
        if is_gloo_worker():
            code = error.code if isinstance(error.code, int) else (0 if error.code is None else 1)
            if error.code is not None and not isinstance(error.code, int):
                print(error.code, file=sys.stderr)
            _flush_and_exit(code)
        raise
    except BaseException as error:
        if is_gloo_worker():
            traceback.print_exc()
            _flush_and_exit(130 if isinstance(error, KeyboardInterrupt) else 1)
        raise
    exit_if_gloo(0)
    return result


def tell_launcher(message: str) -> None:
    """Leave `message` where torch-elastic's launcher (`torchrun`, `accelerate launch` with several processes) reads
    why a worker failed, so its failure summary shows it for this process instead of a pointer to tracebacks.

    Does nothing outside such a launcher. The launcher still ends with status 1 whatever its workers' status: the
    summary it prints carries each worker's exit code.
    """
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    try:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump({"message": message, "timestamp": int(time.time())}, handle)
    except OSError:
        pass  # the summary then shows torch's pointer to tracebacks, as it would have


def run_with_deadline(
    command: Sequence[str], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run `command` (a launcher and its workers) in its own process group; past `timeout` seconds, kill all of it.

    `subprocess.run(timeout=...)` kills only the launcher and leaves its workers running. Raises
    `subprocess.TimeoutExpired` with the output captured so far.
    """
    process = subprocess.Popen(
        list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        stdout, stderr = process.communicate()
        raise subprocess.TimeoutExpired(process.args, timeout, output=stdout, stderr=stderr) from None
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def start_deepspeed_on_cpu() -> None:
    """Start the process group of a multi-process DeepSpeed run on a machine without GPU, over gloo.

    Left to transformers, accelerate starts DeepSpeed's group with no backend name on a CPU and then counts a single
    process: every rank would read the whole data set and `gather` would fail. Naming gloo gives it the true world
    size; the training arguments then reuse this state (`accelerator_config.use_configured_state`).
    """
    from accelerate import PartialState

    previous = os.environ.get("ACCELERATE_USE_DEEPSPEED")
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        PartialState(backend="gloo")
    finally:
        if previous is None:
            del os.environ["ACCELERATE_USE_DEEPSPEED"]
        else:
            os.environ["ACCELERATE_USE_DEEPSPEED"] = previous
