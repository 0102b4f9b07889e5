"""`evaluate` metric modules shipped with longalign-hf, as paths for `evaluate.load` (a local load, no network).

```python
import evaluate
from longalign_hf.metrics import LONGBENCH_CHAT

metric = evaluate.load(LONGBENCH_CHAT)
```
"""

from pathlib import Path

LONGBENCH_CHAT = str(Path(__file__).resolve().parent / "longbench_chat")

__all__ = ["LONGBENCH_CHAT"]
