"""More than one machine, simulated on loopback: two launchers on this machine, one process each, as machines 0 and 1.

DDP runs through `recipes/launch.slurm` for a 2-node allocation (Slurm's variables set here, `srun` and `scontrol`
replaced by stand-ins that start the node commands it builds), the machines sharing one disk; DeepSpeed ZeRO-3 runs as
two `accelerate launch --num_machines 2 --machine_rank R` by hand, each machine with its own `datasets` cache and
output folder, as two hosts without a shared disk, and `--push_to_hub` against a recording Hub client. Both must end
where the 1-process run ends (per-step losses, final weights with plain SGD), with one process writing the output,
card and push, and the data prepared once per `datasets` cache.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import datasets
import pytest
import yaml
from launch import free_port
from safetensors.torch import load_file

from longalign_hf.data.synthetic import long_tailed_chat_data
from longalign_hf.tiny import build_byte_tokenizer, build_tiny_model
from longalign_hf.training.distributed import run_with_deadline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-5
# 36 chats of 108-1000 tokens: 12 packs of 2-5 samples at max_length 1024, so 3 optimizer steps of 4 packs on
# 2 machines x 1 process x GA 2 (and on 1 process x 2 rows x GA 2), each step with its own number of samples.
TRAINING = {
    "max_length": 1024,
    "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": 2,
    "num_train_epochs": 1,
    "optim": "sgd",
    "learning_rate": 0.5,
    "lr_scheduler_type": "constant",
    "warmup_steps": 0,
    "logging_steps": 1,
    "save_strategy": "no",
    "report_to": "none",
    "activation_checkpointing": False,
}
# The data preparation each process runs rather than reads from its cache: one progress bar each.
PREPARATION = {"convert": r"Generating train split: 0 examples", "tokenize": r"Tokenizing train data set:\s+0%"}


@pytest.fixture(scope="module")
def recipe_config(tmp_path_factory):
    """The recipe YAML both runs train with: a tiny model folder, a chat data file, plain SGD."""
    folder = tmp_path_factory.mktemp("multinode-inputs")
    tokenizer = build_byte_tokenizer()
    build_tiny_model(tokenizer, max_position_embeddings=1024).save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    rows = long_tailed_chat_data(num_short=36, num_long=0)
    (folder / "chat.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    config = {"model_name_or_path": str(folder / "model"), "dataset_name": str(folder / "chat.jsonl"), **TRAINING}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return str(folder / "recipe.yaml")


@pytest.fixture(scope="module")
def one_process(recipe_config, tmp_path_factory):
    """The 1-process run (in this process): its per-step losses and final weights. Two rows per micro-batch, so the
    packs are planned for the same 2 slots as on 2 machines and each optimizer step holds the same 4 packs."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sft_recipe", os.path.join(ROOT, "recipes", "sft.py"))
    recipe = importlib.util.module_from_spec(spec)
    sys.modules["sft_recipe"] = recipe  # dataclasses look their module up while the file executes
    spec.loader.exec_module(recipe)
    folder = tmp_path_factory.mktemp("one-process")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", str(folder / "cache"))
        args = ["--config", recipe_config, "--per_device_train_batch_size", "2", "--output_dir", str(folder / "out")]
        trainer = recipe.main(*recipe.parse_args(args))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    order, samples = list(trainer._get_train_sampler()), trainer.train_dataset["num_samples"]
    per_step = [sum(samples[index] for index in order[start : start + 4]) for start in range(0, len(order), 4)]
    assert len(losses) == len(per_step) == 3 and len(set(per_step)) > 1, per_step  # M differs from step to step
    return losses, load_file(str(folder / "out" / "model.safetensors"))


def _assert_same_run(output_dir, one_process):
    losses, weights = one_process
    with open(os.path.join(output_dir, "trainer_state.json"), encoding="utf-8") as handle:
        logged = [entry["loss"] for entry in json.load(handle)["log_history"] if "loss" in entry]
    assert logged == pytest.approx(losses, rel=TOLERANCE)
    trained = load_file(os.path.join(output_dir, "model.safetensors"))
    assert set(trained) == set(weights)
    for name, expected in weights.items():
        difference = (trained[name] - expected).norm() / expected.norm().clamp(min=1e-12)
        assert difference <= TOLERANCE, f"{name}: relative difference {difference:.2e}"


def _cpu_accelerate_config(name: str, folder) -> str:
    """recipes/accelerate/NAME cut to this CPU: fp32 (exact against the 1-process run)."""
    with open(os.path.join(ROOT, "recipes", "accelerate", name), encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    config["mixed_precision"] = "no"
    path = folder / name
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return str(path)


def _preparations(log: str, step: str) -> int:
    return len(re.findall(PREPARATION[step], log))


def _with_progress_bars(env) -> dict:
    """`env` without the switches that hide the progress bars `_preparations` counts."""
    return {
        key: value for key, value in env.items() if key not in ("HF_DATASETS_DISABLE_PROGRESS_BARS", "TQDM_DISABLE")
    }


def _deadline_failure(error: subprocess.TimeoutExpired, what: str):
    pytest.fail(f"{what} did not finish within {error.timeout:.0f} s:\n{(error.stderr or '')[-3000:]}")


def _read(path) -> str:
    return path.read_text(encoding="utf-8") if path.exists() else ""


def _write_standin(path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o755)


# `srun` for a simulated allocation: each node's command starts here, at once, with the node's SLURM_NODEID, its output
# in NODE_OUTPUT/node<i>.out and .err; the first node to fail stops the others and gives the status. It accepts only
# the options it knows.
SRUN = r"""#!/bin/bash
while [[ $1 == -* ]]; do
  case $1 in
    --nodes=*) nodes=${1#*=} ;;
    --ntasks=*) ntasks=${1#*=} ;;
    --ntasks-per-node=*) per_node=${1#*=} ;;
    --cpus-per-task=*) cpus=${1#*=} ;;
    --kill-on-bad-exit=1) ;;
    *) echo "srun stand-in: unexpected option $1" >&2; exit 2 ;;
  esac
  shift
done
if [[ $nodes != "$SLURM_JOB_NUM_NODES" || $ntasks != "$nodes" || $per_node != 1 || $cpus != "$SLURM_CPUS_ON_NODE" ]]; then
  echo "srun stand-in: expected one task with all the node's CPUs on each of the $SLURM_JOB_NUM_NODES nodes" >&2; exit 2
fi
printf '%s\n' "$@" > "$NODE_OUTPUT/command"
pids=()
for ((node = 0; node < nodes; node++)); do
  SLURM_NODEID=$node SLURM_PROCID=$node SLURM_LOCALID=0 "$@" > "$NODE_OUTPUT/node$node.out" 2> "$NODE_OUTPUT/node$node.err" &
  pids+=($!)
done
status=0
for _ in "${pids[@]}"; do
  wait -n && continue
  code=$?
  # --kill-on-bad-exit: the first node to fail stops the others; its status is the step's.
  if [[ $status == 0 ]]; then status=$code; kill "${pids[@]}" 2> /dev/null; fi
done
exit $status
"""
# `scontrol show hostnames LIST` for a comma-separated LIST.
SCONTROL = r"""#!/bin/bash
[[ $1 == show && $2 == hostnames ]] || { echo "scontrol stand-in: only 'show hostnames'" >&2; exit 2; }
tr ',' '\n' <<< "$3"
"""


def _slurm_env(tmp_path, **variables) -> dict:
    """This environment with `srun` and `scontrol` stand-ins first on PATH, then this interpreter's `accelerate`."""
    standins = tmp_path / "bin"
    standins.mkdir(exist_ok=True)
    _write_standin(standins / "srun", SRUN)
    _write_standin(standins / "scontrol", SCONTROL)
    path = os.pathsep.join([str(standins), os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    if shutil.which("accelerate", path=path) is None:
        pytest.skip("no `accelerate` command next to this interpreter")
    return {**_with_progress_bars(os.environ), "PATH": path, "NODE_OUTPUT": str(tmp_path), **variables}


def _launch_slurm(env: dict, args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    # From the repository root, as `sbatch` runs a job from where it was submitted.
    command = ["bash", "-c", 'cd "$0" && exec bash recipes/launch.slurm "$@"', ROOT, *args]
    try:
        return run_with_deadline(command, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as error:
        _deadline_failure(error, "recipes/launch.slurm")


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({}, "not in a Slurm job: submit with sbatch"),
        (
            {"SLURM_JOB_NODELIST": "a,b", "SLURM_JOB_NUM_NODES": "2", "SLURM_CPUS_ON_NODE": "64"},
            "the allocation has no GPUs: ask for them with sbatch --gpus-per-node=G",
        ),
    ],
)
def test_the_slurm_launcher_refuses_to_start_outside_a_gpu_allocation(tmp_path, variables, message):
    env = {key: value for key, value in _slurm_env(tmp_path).items() if not key.startswith("SLURM_")}
    config = os.path.join(ROOT, "recipes", "accelerate", "ddp.yaml")
    completed = _launch_slurm({**env, **variables}, [config, config], timeout=30)
    assert completed.returncode == 2 and completed.stderr.strip() == f"launch.slurm: {message}"
    assert not (tmp_path / "command").exists()  # nothing started


@pytest.mark.multiprocess
@pytest.mark.slow
def test_ddp_on_two_nodes_through_the_slurm_launcher_equals_one_process(recipe_config, one_process, tmp_path):
    # Two nodes sharing a disk: one `datasets` cache and one output folder for both.
    port = free_port()
    env = _slurm_env(
        tmp_path,
        SLURM_JOB_NODELIST="127.0.0.1,127.0.0.2",
        SLURM_JOB_NUM_NODES="2",
        SLURM_GPUS_ON_NODE="1",
        SLURM_CPUS_ON_NODE="2",
        MAIN_PROCESS_PORT=str(port),
        HF_DATASETS_CACHE=str(tmp_path / "cache"),
        OMP_NUM_THREADS="1",
    )
    output_dir = tmp_path / "out"
    config = _cpu_accelerate_config("ddp.yaml", tmp_path)
    completed = _launch_slurm(env, [config, recipe_config, "--output_dir", str(output_dir)])
    nodes = [tuple(_read(tmp_path / f"node{node}.{stream}") for stream in ("out", "err")) for node in (0, 1)]
    assert completed.returncode == 0, completed.stderr[-2000:] + "".join(err[-2000:] for _, err in nodes)
    # The command the launcher built: each node's rank from its own SLURM_NODEID, the rest from the allocation.
    command = (tmp_path / "command").read_text().splitlines()
    assert command[:3] == ["bash", "-c", 'exec accelerate launch --machine_rank "$SLURM_NODEID" "$@"']
    assert " ".join(command[4:]) == (
        f"--config_file {config} --num_machines 2 --num_processes 2 --main_process_ip 127.0.0.1 "
        f"--main_process_port {port} recipes/sft.py --config {recipe_config} --output_dir {output_dir}"
    )
    assert f"2 node(s) x 1 GPU(s) = 2 processes; main process on 127.0.0.1:{port}" in completed.stdout

    _assert_same_run(output_dir, one_process)
    assert {"model.safetensors", "README.md", "tokenizer.json", "trainer_state.json"} <= set(os.listdir(output_dir))
    assert nodes[0][0].count(f"Model saved to {output_dir}") == 1
    assert "Model saved" not in nodes[1][0] + nodes[1][1]
    # One cache for both nodes: the data is converted and tokenized once in all.
    log = "".join(out + err for out, err in nodes)
    assert (_preparations(log, "convert"), _preparations(log, "tokenize")) == (1, 1), log[-3000:]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_zero3_on_two_machines_without_a_shared_disk_equals_one_process(recipe_config, one_process, tmp_path):
    pytest.importorskip("deepspeed")
    config = _cpu_accelerate_config("zero3.yaml", tmp_path)
    port = free_port()
    hub_log = tmp_path / "hub.jsonl"

    def machine(rank: int) -> subprocess.CompletedProcess:
        # Each machine its own disk: a `datasets` cache and an `--output_dir` of its own.
        disk = tmp_path / f"machine{rank}"
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config, "--num_machines", "2",
                    "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
                    "--main_process_port", str(port)]  # fmt: skip
        recipe = [os.path.join(ROOT, "tests", "hub_stub_recipe.py"), "--config", recipe_config,
                  "--output_dir", str(disk / "out"), "--push_to_hub", "true"]  # fmt: skip
        env = {**_with_progress_bars(os.environ), "HF_DATASETS_CACHE": str(disk / "cache"), "HUB_STUB_LOG": str(hub_log),
               "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}  # fmt: skip
        try:
            return run_with_deadline([*launcher, *recipe], timeout=300, env=env)
        except subprocess.TimeoutExpired as error:
            _deadline_failure(error, f"machine {rank}")

    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(machine, (0, 1)))
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    written, unwritten = tmp_path / "machine0" / "out", tmp_path / "machine1" / "out"

    _assert_same_run(written, one_process)
    assert {"model.safetensors", "README.md", "tokenizer.json", "trainer_state.json"} <= set(os.listdir(written))
    assert not unwritten.exists()  # machine 1 wrote nothing
    # One push: the repository created and the folder uploaded once, by process 0, with the weights and the card.
    calls = [json.loads(line) for line in hub_log.read_text(encoding="utf-8").splitlines()]
    assert [(call["call"], call["rank"]) for call in calls] == [("create_repo", 0), ("upload_folder", 0)]
    assert calls[1]["folder"] == str(written) and {"model.safetensors", "README.md"} <= set(calls[1]["files"])
    assert runs[0].stdout.count(f"Model saved to {written}") == 1
    assert runs[0].stdout.count("Model pushed to https://huggingface.co/stub-user/out") == 1
    assert "Model saved" not in runs[1].stdout + runs[1].stderr and "Model pushed" not in runs[1].stdout
    # Each machine converted and tokenized the data once, into its own cache.
    for rank, run in enumerate(runs):
        log = run.stdout + run.stderr
        assert (_preparations(log, "convert"), _preparations(log, "tokenize")) == (1, 1), log[-3000:]
        cache = tmp_path / f"machine{rank}" / "cache"
        assert list(cache.rglob("json-train.arrow")) and list(cache.rglob("cache-*.arrow"))
