"""The `longalign` command: light to start, one line and exit 2 for bad input, a traceback only with --debug."""

import subprocess
import sys

import pytest

from longalign_hf import cli

HEAVY = ("torch", "transformers", "datasets", "evaluate", "openai", "matplotlib", "numpy", "trl")


def test_help_and_argument_errors_import_no_heavy_library():
    # A fresh interpreter: what `longalign --help` loads before it answers (torch alone takes seconds).
    probe = (
        "import sys\n"
        "from longalign_hf import cli\n"
        "parser = cli.build_parser()\n"
        "for argv in (['eval', 'needle', '--lengths', 'x'], ['data', 'generate', '--batch-size', 'two']):\n"
        "    try:\n"
        "        parser.parse_args(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print(sorted(name for name in {HEAVY!r} if name in sys.modules))\n"
    )
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


def test_every_command_has_help():
    parser = cli.build_parser()
    for group, commands in (
        ("data", ["generate", "build"]),
        ("eval", ["longbench-chat", "needle"]),
        ("model", ["fetch"]),
    ):
        for command in commands:
            with pytest.raises(SystemExit) as exit_info:
                parser.parse_args([group, command, "--help"])
            assert exit_info.value.code == 0


def _build_sft_with_a_missing_file(tmp_path, tokenizer) -> list[str]:
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    missing = tmp_path / "missing.jsonl"
    return ["data", "build", "sft", "--long", str(missing), "--short", str(missing), "--out", str(tmp_path / "out"),
            "--tokenizer", str(tmp_path / "tokenizer")]  # fmt: skip


def test_a_user_error_is_one_line_and_exit_2(tmp_path, tokenizer, capsys):
    status = cli.main(_build_sft_with_a_missing_file(tmp_path, tokenizer))
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("longalign: error: ") and "missing.jsonl" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["first", "last"])
def test_debug_shows_the_traceback(tmp_path, tokenizer, where):
    from longalign_hf.errors import UserInputError

    argv = _build_sft_with_a_missing_file(tmp_path, tokenizer)
    with pytest.raises(UserInputError, match="missing.jsonl"):
        cli.main(["--debug", *argv] if where == "first" else [*argv, "--debug"])


def test_a_bad_flag_value_is_one_line_and_exits_2_before_any_work(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", "needle", "--model", "m", "--lengths", "many"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("longalign eval needle: error: argument --lengths")
    assert err[0].endswith("(see `longalign eval needle --help`)")
