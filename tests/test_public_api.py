"""The public names: importable from `longalign_hf`, loaded on first use, and the README's `longalign_hf.metrics` form."""

import os
import subprocess
import sys

import longalign_hf


def test_every_public_name_resolves_to_its_defining_module():
    for name in longalign_hf.__all__:
        value = getattr(longalign_hf, name)
        assert value is not None and name in dir(longalign_hf)
    assert sorted(longalign_hf.__all__) == sorted(longalign_hf._PUBLIC)
    namespace = {}
    exec("from longalign_hf import *", namespace)
    assert set(longalign_hf.__all__) <= set(namespace)


def test_subpackages_are_attributes_as_the_readme_uses_them():
    # README: `import evaluate, longalign_hf; evaluate.load(longalign_hf.metrics.LONGBENCH_CHAT)`
    assert os.path.isfile(os.path.join(longalign_hf.metrics.LONGBENCH_CHAT, "longbench_chat.py"))
    assert longalign_hf.data.LongBenchChatBuilder is longalign_hf.LongBenchChatBuilder


def test_importing_the_package_loads_no_heavy_library():
    probe = (
        "import sys, longalign_hf; print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    )
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert completed.stdout.strip() == "[]", completed.stderr
