"""One command for a borrowed GPU: install the carried wheels, run the GPU tests and the GPU figures, one folder out.

Prepared here, with network: `python benchmark/fetch_gpu_wheels.py` fills `.whl/` (git-ignored). On the GPU machine
(no network), from the repository root, as one `device run` that carries `.whl` (timeout 600 s):

    PYTHONUNBUFFERED=1 python3 benchmark/gpu_check.py --out $OUT

Steps, in order; each runs in its own process group and is stopped at its deadline, the sum of the shares of the
steps so far (a step that ends early leaves its time to the next ones; a slow one cannot take theirs):

- setup (40 s): `pip install --no-index --no-deps --target SITE .whl/*.whl` (SITE: a new temporary folder, or
  `--site`), then the environment:
  GPU, torch, transformers, trl, flash-attn, the attention `choose_attention()` picks, unmet requirements;
- tests (110 s): `pytest -m gpu` over the test files that hold GPU tests (packed-sample isolation per backend,
  sliding-window models against their eager attention, the loss-weighting gradient on CUDA in fp32 and bf16);
- throughput (170 s): `benchmark/throughput_gpu.py --samples 256`: 1.1B model, naive / sort / pack (token, sequence)
  for varlen_packed and sdpa_packed (and flash_attention_2 when installed): tokens/s, samples/s, MFU;
- longest_row (120 s): `benchmark/longest_row.py`: Llama-3.1-8B shape, LoRA, activation checkpointing, one step per
  row length, doubling from 16k until out of memory;
- loss_memory (40 s): `benchmark/loss_memory.py --device cuda --tokens 8192,32768`: chunked loss vs full logits with a
  128k vocabulary.

8 minutes in all. The benchmarks print a line per measurement as it ends, so a step stopped at its deadline still
shows what it measured. Everything goes to one folder (`--out`; default `$OUT` when set, else `gpu_check_out/`),
in at most 8 files (what a `device run` brings back): `summary.md` (every step's status and figures, with the device,
torch version and commands; also printed at the end), `<step>.log` per step (its stdout and stderr) and `tests.xml`
(JUnit). The exit status is 1 when a step failed or was cut, else 0. It needs no network: it sets the Hugging Face
libraries offline. `--steps throughput,loss_memory` reruns some steps (setup always runs).

Without a CUDA device it stops after setup, says so and exits 0. `--dry-run` runs every step on the CPU with tiny
sizes instead (the same commands with `--device cpu --quick`, loss_memory's measurements two at a time; the test
suite runs it): the GPU tests skip there, and the wheels, if `.whl/` has them, install into the temporary folder but
are not used (they are built for Python 3.12).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # commands run here and name their scripts relative to it
PYTHON = sys.executable
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_DISABLED": "true",
    "PYTHONUNBUFFERED": "1",
}
KILL_GRACE_SECONDS = 10
LOG_TAIL_LINES = 25


@dataclass
class Step:
    """A named list of commands with a share of the time; `commands(seconds_left)` builds them when the step starts."""

    name: str
    share: float
    commands: Callable[[float], list[list[str]]]


@dataclass
class StepResult:
    name: str
    status: str = "passed"
    seconds: float = 0.0
    commands: list[list[str]] = field(default_factory=list)
    stdout: list[str] = field(default_factory=list)
    log_tail: list[str] = field(default_factory=list)  # the end of the log of a step that did not pass

    @property
    def ok(self) -> bool:
        return self.status == "passed"


def gpu_test_files() -> list[str]:
    """The test files that hold `gpu`-marked tests (collecting only those needs none of the CPU tests' packages)."""
    return [
        str(path.relative_to(REPO))
        for path in sorted((REPO / "tests").rglob("test_*.py"))
        if "pytest.mark.gpu" in path.read_text(encoding="utf-8")
    ]


def plan(args: argparse.Namespace) -> list[Step]:
    """The steps of the check (`--dry-run`: the same commands on the CPU with tiny sizes)."""
    dry = args.dry_run
    wheels = sorted(os.path.relpath(path, REPO) for path in Path(args.wheels).glob("*.whl"))
    # The wheels are built for CPython 3.12 (the GPU machine's); the tags let a dry run elsewhere install them too.
    install = [
        PYTHON, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
        "--upgrade", "--target", args.site, "--python-version", "3.12", "--implementation", "cp",
        "--only-binary=:all:", *wheels,
    ]  # fmt: skip
    environment = [PYTHON, "benchmark/gpu_check.py", "--environment", "--site", args.site]
    tests = [
        PYTHON, "-m", "pytest", "-m", "gpu", "-q", "-rfEs", "-p", "no:cacheprovider",
        "--junitxml", str(Path(args.out) / "tests.xml"), *gpu_test_files(),
    ]  # fmt: skip
    cpu = ["--device", "cpu", "--quick"] if dry else []

    def throughput(left: float) -> list[list[str]]:
        sizes = ["--samples", "4", "--attention", "varlen_packed"] if dry else ["--samples", "256"]
        return [[PYTHON, "benchmark/throughput_gpu.py", *cpu, *sizes, "--time-budget", f"{left - 15:.0f}"]]

    def longest_row(left: float) -> list[list[str]]:
        return [[PYTHON, "benchmark/longest_row.py", *cpu, "--time-budget", f"{left - 15:.0f}"]]

    loss = ["--quick", "--jobs", "2"] if dry else ["--device", "cuda", "--tokens", "8192,32768"]
    return [
        Step("setup", 40, lambda left: ([install] if wheels else []) + [environment]),
        Step("tests", 110, lambda left: [tests]),
        Step("throughput", 170, throughput),
        Step("longest_row", 120, longest_row),
        Step("loss_memory", 40, lambda left: [[PYTHON, "benchmark/loss_memory.py", *loss]]),
    ]


def _stop(process: subprocess.Popen) -> None:
    """Stop a command and everything it started: SIGTERM to its process group, SIGKILL after a grace period."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_SECONDS), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_step(step: Step, deadline: float, out: Path, env: dict[str, str]) -> StepResult:
    """Run a step's commands until one fails or the deadline (`time.monotonic()`) passes; log into `<name>.log`."""
    result, started = StepResult(step.name), time.monotonic()
    result.commands = step.commands(deadline - started)
    lock = threading.Lock()
    with open(out / f"{step.name}.log", "w", encoding="utf-8") as log:

        def pump(stream, echo: bool) -> None:
            for line in stream:
                with lock:
                    log.write(line)
                    if echo:
                        result.stdout.append(line.rstrip("\n"))
                        print(f"  {step.name}| {line}", end="", flush=True)

        for command in result.commands:
            log.write(f"$ {shown(command)}\n")
            log.flush()
            process = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                errors="replace", start_new_session=True,
            )  # fmt: skip
            pumps = [threading.Thread(target=pump, args=(process.stdout, True)),
                     threading.Thread(target=pump, args=(process.stderr, False))]  # fmt: skip
            for thread in pumps:
                thread.start()
            try:
                returncode = process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                _stop(process)
                returncode = None
            for thread in pumps:
                thread.join(timeout=KILL_GRACE_SECONDS)
            if returncode is None:
                result.status = f"cut at its deadline ({deadline - started:.0f} s)"
                break
            if returncode != 0:
                result.status = f"failed (exit status {returncode})"
                break
    result.seconds = time.monotonic() - started
    if not result.ok:
        result.log_tail = (out / f"{step.name}.log").read_text(encoding="utf-8").splitlines()[-LOG_TAIL_LINES:]
    return result


def run_steps(steps: list[Step], out: Path, env: dict[str, str], after_setup=None) -> list[StepResult]:
    """Every step in turn, each with its deadline; `after_setup(result)` may return a reason to skip the rest."""
    results, clock, skip = [], time.monotonic(), None
    deadline = clock
    for step in steps:
        deadline += step.share
        if skip:
            results.append(StepResult(step.name, status=f"skipped: {skip}"))
            continue
        print(f"[gpu_check] {step.name}: started, {deadline - time.monotonic():.0f} s to its deadline", flush=True)
        result = run_step(step, deadline, out, env)
        print(f"[gpu_check] {step.name}: {result.status} in {result.seconds:.0f} s", flush=True)
        results.append(result)
        if step.name == "setup" and after_setup is not None:
            skip = after_setup(result)
    return results


def environment_facts(result: StepResult) -> dict[str, str]:
    """The `key: value` lines the environment command printed."""
    return dict(line.split(": ", 1) for line in result.stdout if ": " in line and not line.startswith(" "))


def _markdown(lines: list[str]) -> list[str]:
    """Tables as they are; every other run of lines in a code fence."""
    output: list[str] = []
    block: list[str] = []

    def close_block() -> None:
        text = "\n".join(block).strip("\n")
        if text:
            output.extend(["```", text, "```"])
        block.clear()

    for line in lines:
        if line.startswith("|"):
            close_block()
            output.append(line)
        else:
            block.append(line)
    close_block()
    return output


def _test_report(junit: Path) -> list[str]:
    """Counts, failures (with their first message line) and skip reasons from pytest's JUnit XML."""
    if not junit.exists():
        return ["(no JUnit report was written)"]
    root = ElementTree.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    lines = [
        f"{passed} passed, {counts['failures']} failed, {counts['errors']} errors, {counts['skipped']} skipped "
        f"({float(suite.get('time', 0)):.0f} s)",
        "",
    ]
    skipped: dict[str, int] = {}
    for case in suite.iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        for kind in ("failure", "error"):
            for problem in case.findall(kind):
                message = (problem.get("message") or problem.text or "").strip().splitlines()
                lines.append(f"- {kind.upper()} `{name}`: {message[0][:300] if message else ''}")
        for skip in case.findall("skipped"):
            reason = (skip.get("message") or "").strip()
            skipped[reason] = skipped.get(reason, 0) + 1
    lines += [f"- skipped x{count}: {reason}" for reason, count in skipped.items()]
    return lines


def summary(results: list[StepResult], facts: dict[str, str], out: Path, argv: list[str]) -> str:
    """`summary.md`: what ran where, each step's status, and every figure."""
    keys = ("device", "gpu memory", "torch", "cuda", "transformers", "trl", "datasets", "peft", "accelerate",
            "flash-attn", "attention")  # fmt: skip
    lines = [
        "# GPU check",
        "",
        f"- command: `python3 benchmark/gpu_check.py {shlex.join(argv)}`",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; commit: {_commit()}",
        *[f"- {key}: {facts[key]}" for key in keys if key in facts],
        "",
        "| step | status | seconds |",
        "|---|---|---|",
        *[f"| {result.name} | {result.status} | {result.seconds:.0f} |" for result in results],
    ]
    for result in results:
        lines += ["", f"## {result.name}", ""]
        lines += [f"`$ {shown(command)}`  " for command in result.commands]
        if result.name == "tests" and result.commands:
            lines += ["", *_test_report(out / "tests.xml")]
        elif result.stdout:
            lines += ["", *_markdown(result.stdout)]
        if result.log_tail:
            lines += ["", f"End of `{result.name}.log`:", "", "```", *result.log_tail, "```"]
    return "\n".join(lines) + "\n"


def shown(command: list[str]) -> str:
    """A command as the summary shows it: `python3` for this interpreter, the carried wheels as one glob."""
    words = ["python3" if word == PYTHON else word for word in command if not word.endswith(".whl")]
    if len(words) < len(command):
        words.append(".whl/*.whl")
    return shlex.join(words)


def _commit() -> str:
    def git(*words: str) -> str | None:
        try:
            completed = subprocess.run(["git", *words], cwd=REPO, capture_output=True, text=True)
        except OSError:
            return None
        return completed.stdout.strip() if completed.returncode == 0 else None

    commit = git("rev-parse", "--short", "HEAD")
    if commit is None:
        return "unknown (no git repository here)"
    return commit + (" + uncommitted changes" if git("status", "--porcelain") else "")


def print_environment(site: str) -> None:
    """The `--environment` command: versions, device and attention choice as `key: value` lines."""
    import importlib
    import importlib.metadata
    import importlib.util

    import torch

    cuda = torch.cuda.is_available()
    print(f"python: {sys.version.split()[0]}")
    print(f"cuda available: {'yes' if cuda else 'no'}")
    if cuda:
        properties = torch.cuda.get_device_properties(0)
        print(f"device: {properties.name} (compute capability {properties.major}.{properties.minor})")
        print(f"gpu memory: {properties.total_memory / 2**30:.1f} GiB")
        print(f"cuda: {torch.version.cuda}")
    else:
        print("device: CPU (no CUDA device)")
    failed = []
    for name in ("torch", "transformers", "trl", "datasets", "peft", "accelerate", "huggingface_hub", "tokenizers"):
        try:
            module = importlib.import_module(name)
        except Exception as error:  # noqa: BLE001  (every import is tried, so one run shows every problem)
            print(f"{name}: import failed: {type(error).__name__}: {error}")
            failed.append(name)
            continue
        where = " (carried)" if site and str(Path(module.__file__).resolve()).startswith(site) else ""
        print(f"{name}: {module.__version__}{where}")
    if importlib.util.find_spec("flash_attn") is None:
        print("flash-attn: not installed")
    else:
        try:
            print(f"flash-attn: {importlib.import_module('flash_attn').__version__}")
        except Exception as error:  # noqa: BLE001  (a build for another torch fails here; say so, go on)
            print(f"flash-attn: installed but cannot be imported: {type(error).__name__}: {error}")
    print(f"torch varlen_attn: {'yes' if importlib.util.find_spec('torch.nn.attention.varlen') else 'no'}")
    try:
        from longalign_hf.training.attention import choose_attention

        print("attention: {} ({})".format(*choose_attention()))
    except Exception as error:  # noqa: BLE001
        print(f"attention: longalign_hf could not be imported: {type(error).__name__}: {error}")
        failed.append("longalign_hf")
    sys.path.insert(0, str(Path(__file__).parent))
    from fetch_gpu_wheels import installed_version, unmet_requirements

    carried = {
        dist.metadata["Name"]: dist.requires or [] for dist in importlib.metadata.distributions(path=[site])
    }  # fmt: skip
    unmet, unverified = unmet_requirements(carried, installed_version)
    print(f"carried wheels: {len(carried)}; unmet requirements: {len(unmet)}")
    for line in unmet + unverified:
        print(f"  {line}")
    if failed:
        sys.exit(f"could not import {', '.join(failed)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="output folder (default: $OUT when set, else gpu_check_out/)")
    parser.add_argument("--wheels", default=str(REPO / ".whl"), help="the carried wheels (default: .whl/)")
    parser.add_argument("--site", help="where the wheels are installed (default: a new temporary folder)")
    parser.add_argument("--steps", help="comma-separated steps to run after setup (default: all)")
    parser.add_argument("--dry-run", action="store_true", help="every step on the CPU with tiny sizes")
    parser.add_argument("--environment", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.environment:
        print_environment(args.site or "")
        return 0
    argv = sys.argv[1:] if argv is None else argv
    out = Path(args.out or os.environ.get("OUT") or REPO / "gpu_check_out")
    out.mkdir(parents=True, exist_ok=True)
    args.out = str(out)
    temporary_site = None if args.site else tempfile.mkdtemp(prefix="longalign_site_")
    args.site = args.site or temporary_site
    steps = plan(args)
    if args.steps:
        wanted = {"setup", *args.steps.split(",")}
        unknown = wanted - {step.name for step in steps}
        if unknown:
            parser.error(f"unknown steps {sorted(unknown)}; the steps are {', '.join(step.name for step in steps)}")
        steps = [step for step in steps if step.name in wanted]
    # The carried packages come first on the path, then the repository itself (not installed on the GPU machine);
    # a dry run keeps its own environment's packages (the wheels are for Python 3.12).
    path = ([] if args.dry_run else [args.site]) + [str(REPO), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, **OFFLINE, "PYTHONPATH": os.pathsep.join(filter(None, path))}
    print(f"[gpu_check] {len(steps)} steps, {sum(step.share for step in steps):.0f} s at most; output in {out}")

    def after_setup(result: StepResult) -> str | None:
        if args.dry_run or environment_facts(result).get("cuda available") != "no":
            return None
        return "no CUDA device (`--dry-run` runs the steps on the CPU)"

    try:
        results = run_steps(steps, out, env, after_setup)
    finally:
        if temporary_site:
            shutil.rmtree(temporary_site, ignore_errors=True)
    text = summary(results, environment_facts(results[0]), out, argv)
    (out / "summary.md").write_text(text, encoding="utf-8")
    print("\n" + text, flush=True)
    failed = [result.name for result in results if not result.ok and not result.status.startswith("skipped")]
    print(f"[gpu_check] {'failed or cut: ' + ', '.join(failed) if failed else 'every step passed'}; see {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
