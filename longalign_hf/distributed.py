"""Process teardown for multi-process runs on CPU (gloo)."""

from __future__ import annotations

import os
import sys


def exit_if_gloo(exit_code: int = 0) -> None:
    """End a worker process of a multi-process gloo run at once; call it last, when all its work is written.

    PyTorch's gloo process group can deadlock while it is destroyed with the DDP reducer that holds it: the main
    thread joins gloo's worker thread while holding the GIL, and that thread may need the GIL to release a finished
    collective's tensors. Training on CPU with several processes hits it now and then at exit. GPU runs (NCCL) and
    single-process runs return normally.
    """
    from accelerate import PartialState

    state = PartialState()
    if state.num_processes > 1 and state.backend == "gloo":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)
