"""The one-command GPU check (`benchmark/gpu_check.py`) and its wheel preparation (`benchmark/fetch_gpu_wheels.py`)."""

import re
import sys
import time
import zipfile

import pytest
import torch

FILE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")  # what a `device run` brings back from $OUT


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_step_past_its_deadline_is_cut_and_the_next_steps_still_run(benchmark, tmp_path):
    check = benchmark("gpu_check")
    steps = [
        check.Step("first", 2, lambda left: [_python("print('| a | b |')")]),
        check.Step("slow", 1, lambda left: [_python("import time; print('started', flush=True); time.sleep(60)")]),
        check.Step("broken", 30, lambda left: [_python("import sys; sys.exit(3)"), _python("print('never')")]),
        check.Step("last", 30, lambda left: [_python(f"print('{left > 25}')")]),
    ]
    started = time.monotonic()
    results = check.run_steps(steps, tmp_path, env=None)
    assert time.monotonic() - started < 20
    # A step's deadline is the sum of the shares so far: "slow" gets its own second and what "first" left.
    assert [r.status for r in results] == ["passed", "cut at its deadline (3 s)", "failed (exit status 3)", "passed"]
    assert results[0].stdout == ["| a | b |"] and results[1].stdout == ["started"]
    assert results[3].stdout == ["True"]  # the cut step took nothing from the later steps' shares
    assert "never" not in (tmp_path / "broken.log").read_text()
    assert results[0].log_tail == [] and "sys.exit(3)" in results[2].log_tail[0]  # the summary shows it
    assert sorted(path.name for path in tmp_path.iterdir()) == ["broken.log", "first.log", "last.log", "slow.log"]


def test_a_failed_setup_can_skip_the_rest(benchmark, tmp_path):
    check = benchmark("gpu_check")
    steps = [
        check.Step("setup", 30, lambda left: [_python("print('cuda available: no')")]),
        check.Step("tests", 30, lambda left: [_python("raise SystemExit('must not run')")]),
    ]

    def after_setup(result):
        return "no CUDA device" if check.environment_facts(result)["cuda available"] == "no" else None

    results = check.run_steps(steps, tmp_path, env=None, after_setup=after_setup)
    assert [r.status for r in results] == ["passed", "skipped: no CUDA device"]


def test_summary_has_statuses_figures_and_test_results(benchmark, tmp_path):
    check = benchmark("gpu_check")
    (tmp_path / "tests.xml").write_text(
        '<testsuites><testsuite tests="4" failures="1" errors="0" skipped="2" time="12.5">'
        '<testcase classname="tests.test_a" name="test_ok"/>'
        '<testcase classname="tests.test_a" name="test_bad"><failure message="assert 2 &lt; 1&#10;more">x</failure>'
        "</testcase>"
        '<testcase classname="tests.test_b" name="test_s1"><skipped message="needs flash-attn"/></testcase>'
        '<testcase classname="tests.test_b" name="test_s2"><skipped message="needs flash-attn"/></testcase>'
        "</testsuite></testsuites>"
    )
    results = [
        check.StepResult("setup", stdout=["device: NVIDIA H100 80GB HBM3", "torch: 2.11.0+cu130"]),
        check.StepResult("tests", status="failed (exit status 1)", commands=[[check.PYTHON, "-m", "pytest"]]),
        check.StepResult("throughput", stdout=["# note", "", "| a |", "|---|", "| 1 |", "after"]),
    ]
    text = check.summary(results, check.environment_facts(results[0]), tmp_path, ["--out", "x"])
    assert "- device: NVIDIA H100 80GB HBM3" in text and "- torch: 2.11.0+cu130" in text
    assert "- command: `python3 benchmark/gpu_check.py --out x`" in text
    assert "| tests | failed (exit status 1) | 0 |" in text
    assert "1 passed, 1 failed, 0 errors, 2 skipped (12 s)" in text
    assert "- FAILURE `tests.test_a::test_bad`: assert 2 < 1" in text and "- skipped x2: needs flash-attn" in text
    assert "`$ python3 -m pytest`" in text
    # Tables stay Markdown tables; other lines go into code fences.
    assert "```\n# note\n```\n| a |\n|---|\n| 1 |\n```\nafter\n```" in text


def test_shown_commands_abbreviate_the_interpreter_and_the_wheels(benchmark):
    check = benchmark("gpu_check")
    command = [check.PYTHON, "-m", "pip", "install", "--target", "site", ".whl/a-1-py3-none-any.whl", ".whl/b.whl"]
    assert check.shown(command) == "python3 -m pip install --target site '.whl/*.whl'"


def test_the_gpu_plan_runs_the_figures_within_eight_minutes(benchmark, tmp_path):
    check = benchmark("gpu_check")
    args = check.argparse.Namespace(dry_run=False, wheels=str(tmp_path), site="site", out=str(tmp_path))
    steps = check.plan(args)
    assert [step.name for step in steps] == ["setup", "tests", "throughput", "longest_row", "loss_memory"]
    assert sum(step.share for step in steps) <= 480
    commands = {step.name: [check.shown(c) for c in step.commands(100)] for step in steps}
    assert commands["setup"] == ["python3 benchmark/gpu_check.py --environment --site site"]  # no wheels here
    assert "tests/training/test_gpu_loss.py" in commands["tests"][0] and "-m gpu" in commands["tests"][0]
    assert "tests/training/test_sliding_window.py" in commands["tests"][0]  # sliding windows on the real kernels
    assert "tests/training/test_loss_weighting.py" not in commands["tests"][0]
    assert commands["throughput"] == ["python3 benchmark/throughput_gpu.py --samples 256 --time-budget 85"]
    assert commands["longest_row"] == ["python3 benchmark/longest_row.py --time-budget 85"]
    assert commands["loss_memory"] == ["python3 benchmark/loss_memory.py --device cuda --tokens 8192,32768"]


def _wheel(folder, name, version, requires):
    path = folder / f"{name}-{version}-py3-none-any.whl"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {line}\n" for line in requires
    )
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}-{version}.dist-info/METADATA", metadata)
    return path


def test_unmet_requirements_evaluates_markers_versions_and_absence(benchmark):
    fetch = benchmark("fetch_gpu_wheels")
    installed = {"numpy": "2.5.2", "pyarrow": None, "tomli": "2.0"}

    def version_of(name):
        return installed[name]

    unmet, unverified = fetch.unmet_requirements(
        {
            "pkg": [
                "numpy>=1.26",  # met
                "numpy<2",  # too new
                "pyarrow>=21",  # present, version unknown
                "pyarrow",  # present, any version: nothing to verify
                "dill>=0.3; python_version >= '3.9'",  # absent
                "tomli>=9; python_version < '3.11'",  # not for Python 3.12
                "torch; extra == 'gpu'",  # an extra
                "colorama; platform_system == 'Windows'",
            ]
        },
        version_of,
    )
    assert unmet == ["pkg needs numpy<2: found 2.5.2", 'pkg needs dill>=0.3; python_version >= "3.9": absent']
    assert unverified == ["pkg needs pyarrow>=21: version unknown"]


def test_wheel_check_reads_each_wheels_requirements(benchmark, tmp_path, monkeypatch, capsys):
    fetch = benchmark("fetch_gpu_wheels")
    monkeypatch.setattr(fetch, "CARRY", {"alpha": "1.0", "beta": "2.0"})
    monkeypatch.setattr(fetch, "IMAGE", {"torch": "2.11.0"})
    monkeypatch.setattr(fetch, "IMAGE_UNKNOWN_VERSION", ["pyyaml"])
    _wheel(tmp_path, "alpha", "1.0", ["beta>=2", "torch>=2.6", "pyyaml>=5.1"])
    _wheel(tmp_path, "beta", "2.0", [])
    assert fetch.check(tmp_path) == 0
    out = capsys.readouterr().out
    assert "2 wheels in" in out and "alpha needs pyyaml>=5.1: version unknown" in out
    _wheel(tmp_path, "beta", "2.0", ["gamma"])
    assert fetch.check(tmp_path) == 1
    assert "ERROR: beta needs gamma: absent" in capsys.readouterr().out
    (tmp_path / "beta-2.0-py3-none-any.whl").unlink()
    assert fetch.check(tmp_path) == 1
    assert "ERROR: beta is in CARRY but has no wheel" in capsys.readouterr().out


def test_without_cuda_the_check_stops_after_setup(benchmark, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present, so the check would run")
    check = benchmark("gpu_check")
    out = tmp_path / "out"
    assert check.main(["--out", str(out), "--wheels", str(tmp_path / "none")]) == 0
    text = (out / "summary.md").read_text()
    assert "| setup | passed |" in text and "| tests | skipped: no CUDA device" in text
    assert "- device: CPU (no CUDA device)" in text


def _dry_run(folder):
    return [sys.executable, "benchmark/gpu_check.py", "--dry-run", "--out", str(folder / "out")]


@pytest.mark.background(command=_dry_run)
def test_dry_run_runs_every_step_on_the_cpu(background_run):
    # Also the smoke test of the CPU modes of throughput_gpu.py, longest_row.py and loss_memory.py, which it runs. A
    # minute of one CPU core: it runs alongside the other tests, and this test comes last.
    returncode, output = background_run.wait(timeout=600)
    assert returncode == 0, output[-5000:]
    out = background_run.folder / "out"
    text = (out / "summary.md").read_text()
    for step in ("setup", "tests", "throughput", "longest_row", "loss_memory"):
        assert f"| {step} | passed |" in text
    assert (
        "| attention | mode | seconds | tokens/s | samples/s | vs naive | peak GiB | MFU | target | status |" in text
    )
    assert "| varlen_packed | naive |" in text and "| varlen_packed | pack (sequence) |" in text
    assert (
        "| row tokens | result | step seconds | peak GiB |" in text and "Longest row that trained: 256 tokens" in text
    )
    # The loss-memory table (`loss_memory.py --quick`): both sizes, full logits measured, not extrapolated.
    assert "| tokens | ours (chunked) | full logits | ours / full | target | status |" in text
    assert "| 256 | " in text and "| 1,024 | " in text and "~" not in text.split("| 1,024 | ")[1].split("\n")[0]
    files = sorted(path.name for path in out.iterdir())
    assert len(files) <= 8 and all(FILE_NAME.match(name) for name in files) and "tests.xml" in files
