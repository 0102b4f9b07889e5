"""Fetch into `.whl/` (git-ignored) the wheels a GPU machine without network needs for `benchmark/gpu_check.py`.

The GPU machines we borrow run Python 3.12 with torch 2.11 (CUDA), transformers 5.17, huggingface_hub 1.33,
accelerate 1.15, peft, numpy, pyarrow and pandas, but no trl or datasets, and nothing can be installed there except
wheels that travel with the working tree. This script downloads, for CPython 3.12 manylinux x86_64 and without
dependencies, the versions the test suite runs against here (`CARRY`), then checks that every requirement of every
carried wheel is met by another carried wheel or by the machine's image (`IMAGE`, from the workplace's package list):
it exits 1 when one is not. Requirements met by an image package whose version is unknown here are listed; the GPU
check verifies them on the machine (`unmet_requirements`).

One version per package: wheels of other versions in the folder are deleted (two versions would stop the install).

    python benchmark/fetch_gpu_wheels.py            # downloads into .whl/ and checks (needs PyPI)
    python benchmark/fetch_gpu_wheels.py --check    # checks what .whl/ holds, offline
"""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
WHEEL_DIR = REPO / ".whl"

# The versions the test suite runs against here (setup.py's lower bounds), and what they need that the image lacks.
CARRY = {
    "transformers": "5.24.0",  # the image's 5.17 is below setup.py's >=5.24
    "trl": "1.16.0",
    "datasets": "5.2.0",
    "peft": "0.21.2",  # the image's version is unknown
    "huggingface-hub": "2.4.0",  # the image's 1.33 would do for transformers, but 2.4 is what the tests run with
    # huggingface-hub 2.4's HTTP client (absent from the image) and the recent versions it needs.
    "httpx2": "2.16.2",
    "httpcore2": "2.16.2",
    "truststore": "0.10.5",
    "anyio": "4.16.0",
    "idna": "3.20",
    "h11": "0.16.0",
    "typing-extensions": "4.16.0",  # anyio 4.16 needs >= 4.16
    "hf-xet": "1.8.0",
    # datasets: dill and multiprocess are absent from the image; fsspec must be <= 2026.9.0.
    "dill": "0.4.1",
    "multiprocess": "0.70.19",
    "fsspec": "2026.9.0",
    "regex": "2026.11.19",  # transformers checks regex>=2025.10.22 at import; the image's version is unknown
}

# The image's packages that carried wheels depend on, by version where the workplace's package list gives one.
IMAGE = {
    "accelerate": "1.15.0",
    "numpy": "2.5.2",
    "safetensors": "0.8.0",
    "tokenizers": "0.23.2",
    "torch": "2.11.0",
    "triton": "3.6.0",
}
IMAGE_UNKNOWN_VERSION = (
    "certifi click filelock jinja2 packaging pandas psutil pyarrow pyyaml tqdm typer xxhash".split()
)

PYTHON = "3.12"
# The machine's glibc is 2.39 (Ubuntu 24.04): any manylinux tag up to it runs there; pip matches tags exactly.
PLATFORMS = ["manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64"] + [
    f"manylinux_2_{minor}_x86_64" for minor in range(5, 40)
]
MARKER_ENVIRONMENT = {
    "python_version": PYTHON,
    "python_full_version": f"{PYTHON}.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}


def wheel_requirements(wheel: Path) -> list[str]:
    """The `Requires-Dist` lines of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        metadata = archive.read(name).decode("utf-8")
    return [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]


def unmet_requirements(
    requirements: dict[str, Iterable[str]], version_of: Callable[[str], str | None]
) -> tuple[list[str], list[str]]:
    """`(unmet, unverified)` for `{package: [Requires-Dist, ...]}` on Linux x86_64 CPython 3.12, extras left out.

    `version_of(name)` gives the installed version of a package, `None` when it is present at an unknown version, and
    raises `KeyError` when it is absent. Used here with the carried wheels + the image's list, and on the GPU machine
    with what is installed (`importlib.metadata`).
    """
    unmet, unverified = [], []
    for package, lines in sorted(requirements.items()):
        for line in lines:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate(MARKER_ENVIRONMENT):
                continue
            try:
                version = version_of(canonicalize_name(requirement.name))
            except KeyError:
                unmet.append(f"{package} needs {requirement}: absent")
                continue
            if version is None:
                if requirement.specifier:
                    unverified.append(f"{package} needs {requirement}: version unknown")
            elif not requirement.specifier.contains(Version(version), prereleases=True):
                unmet.append(f"{package} needs {requirement}: found {version}")
    return unmet, unverified


def installed_version(name: str) -> str:
    """The version `importlib.metadata` finds first on `sys.path`; `KeyError` when the package is absent."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        raise KeyError(name) from None


def carried_wheels(folder: Path) -> dict[str, Path]:
    """The wheels of `folder` by canonical package name."""
    return {canonicalize_name(parse_wheel_filename(path.name)[0]): path for path in sorted(folder.glob("*.whl"))}


def download(folder: Path) -> None:
    """Download `CARRY` (no dependencies) into `folder` and delete wheels of other packages or versions."""
    folder.mkdir(exist_ok=True)
    wanted = {canonicalize_name(name): Version(version) for name, version in CARRY.items()}
    for path in folder.glob("*.whl"):
        name, version, *_ = parse_wheel_filename(path.name)
        if wanted.get(canonicalize_name(name)) != version:
            print(f"removing {path.name} (not in CARRY at that version)")
            path.unlink()
    platforms = [flag for platform in PLATFORMS for flag in ("--platform", platform)]
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
        "--python-version", PYTHON, "--implementation", "cp", *platforms, "--dest", str(folder),
        *(f"{name}=={version}" for name, version in CARRY.items()),
    ]  # fmt: skip
    subprocess.run(command, check=True)


def check(folder: Path) -> int:
    """Print what `folder` holds and whether the carried wheels' requirements are met; 1 when some are not."""
    wheels = carried_wheels(folder)
    missing = sorted(set(map(canonicalize_name, CARRY)) - set(wheels))
    for name, version in CARRY.items():
        try:
            local = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            local = None
        if local is not None and Version(local) != Version(version):
            print(f"note: {name} is {local} here but CARRY pins {version}; the GPU runs test {version}")
    versions = {name: str(parse_wheel_filename(path.name)[1]) for name, path in wheels.items()}
    image = {canonicalize_name(name): version for name, version in IMAGE.items()}
    image.update(dict.fromkeys(IMAGE_UNKNOWN_VERSION))

    def version_of(name: str) -> str | None:
        return versions[name] if name in versions else image[name]

    unmet, unverified = unmet_requirements({name: wheel_requirements(path) for name, path in wheels.items()},
                                           version_of)  # fmt: skip
    size = sum(path.stat().st_size for path in wheels.values())
    print(f"{len(wheels)} wheels in {folder}, {size / 2**20:.1f} MiB:")
    for path in wheels.values():
        print(f"  {path.name}")
    for line in unverified:
        print(f"unverified here (checked on the GPU machine): {line}")
    for line in [f"{name} is in CARRY but has no wheel in {folder}" for name in missing] + unmet:
        print(f"ERROR: {line}")
    return 1 if missing or unmet else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=WHEEL_DIR, help="wheel folder (default: .whl/ in the repo)")
    parser.add_argument("--check", action="store_true", help="check the folder only, download nothing")
    args = parser.parse_args(argv)
    if not args.check:
        download(args.dest)
    return check(args.dest)


if __name__ == "__main__":
    sys.exit(main())
