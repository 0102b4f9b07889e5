"""LongBenchChatBuilder on a small source made here (the published schema, not the published data)."""

import argparse
import errno
import logging
import os

import datasets
import pytest
from longbench_chat_source import CASES, CHINESE_ONLY, ENGLISH_ONLY, FEW_SHOTS, TEMPLATE, write_source

from longalign_hf import cli
from longalign_hf.data import build_subparsers, hub
from longalign_hf.data.longbench_chat import builder as longbench_chat_builder
from longalign_hf.data.longbench_chat.builder import FEATURES, LongBenchChatBuilder
from longalign_hf.data.longbench_chat.hub_folder import write_hub_folder
from longalign_hf.data.longbench_chat.source import git_blob_sha1
from longalign_hf.errors import UserInputError


# The published template has nine positional slots: question, reference, (answer, score) x 3, answer to rate.
def _build(source, config, tmp_path):
    builder = LongBenchChatBuilder(config_name=config, data_dir=str(source), cache_dir=str(tmp_path / "cache"))
    builder.download_and_prepare()
    return builder.as_dataset(split="test")


def test_records_are_typed_and_configs_split_by_language(tmp_path):
    source = write_source(tmp_path / "source")
    everything = _build(source, "all", tmp_path)
    assert everything.features == FEATURES
    assert everything["idx"] == [1, 2, 3]
    assert everything["language"] == ["en", "zh", "en"]
    assert everything["length"] == [len(case["prompt"]) for case in CASES]
    first = everything[0]
    assert {key: first[key] for key in ("query", "prompt", "answer")} == {
        key: CASES[0][key] for key in ("query", "prompt", "answer")
    }
    assert first["few_shots"] == [
        {"answer": "example 0 answer 0", "score": 2},
        {"answer": "example 0 answer 1", "score": 5},
        {"answer": "example 0 answer 2", "score": 8},
    ]
    assert everything[2]["few_shots"][0]["answer"] == "example 2 answer 0"  # few_shots[idx - 1]
    assert set(everything["judge_template"]) == {TEMPLATE}
    assert _build(source, "en", tmp_path)["idx"] == [1, 3]
    assert _build(source, "zh", tmp_path)["idx"] == [2]


def test_git_blob_sha1_matches_git_hash_object():
    assert (
        git_blob_sha1(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"
    )  # `echo hello | git hash-object --stdin`
    assert git_blob_sha1(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"  # the empty blob


def test_a_local_copy_unlike_the_published_one_is_flagged(tmp_path, caplog):
    source = write_source(tmp_path / "source")
    with caplog.at_level(logging.WARNING, logger="longalign_hf.data.longbench_chat.source"):
        _build(source, "all", tmp_path)
    assert "not the published LongBench-Chat test cases" in caplog.text
    assert git_blob_sha1((source / "test_cases.json").read_bytes()) in caplog.text


def _without(key, case):
    return {k: v for k, v in case.items() if k != key}


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda s: (s / "few_shots.json").unlink(), UserInputError, r"few_shots.json: .*not found.*--source"),
        (lambda s: (s / "prompt_fs.txt").unlink(), UserInputError, r"prompt_fs.txt: .*not found"),
        (
            lambda s: (s / "test_cases.json").write_text('[{"idx": 1,\n "query": }]'),
            UserInputError,
            r"test_cases.json: not valid JSON \(line 2, column 11",
        ),
        (lambda s: (s / "test_cases.json").write_text(""), UserInputError, r"test_cases.json is empty; download"),
        (lambda s: (s / "few_shots.json").write_text("\n "), UserInputError, r"few_shots.json is empty; download"),
        (lambda s: write_source(s, few_shots=FEW_SHOTS[:2]), UserInputError, r"case idx 3 has no few-shot list"),
        (
            lambda s: write_source(s, few_shots=[*FEW_SHOTS, FEW_SHOTS[0]]),
            UserInputError,
            r"few_shots.json has 4 few-shot lists but .*test_cases.json has 3 cases",
        ),
        (
            lambda s: write_source(s, few_shots=[FEW_SHOTS[0], FEW_SHOTS[1][:2], FEW_SHOTS[2]]),
            UserInputError,
            r"few_shots.json: list 1 \(for case idx 2\) has 2 entries, but the judge template .* takes 3",
        ),
        (
            lambda s: write_source(s, few_shots=[FEW_SHOTS[0], FEW_SHOTS[1], [*FEW_SHOTS[2][:2], {"answer": "x"}]]),
            UserInputError,
            r"list 2 \(for case idx 3\), example 2: `score` is None",
        ),
        (
            lambda s: write_source(s, cases=[CASES[0], _without("query", CASES[1]), CASES[2]]),
            UserInputError,
            r"test_cases.json: case idx 2: `query` is None",
        ),
        (
            lambda s: write_source(s, cases=[CASES[0], CASES[0], CASES[2]]),
            UserInputError,
            r"case idx 1 appears twice",
        ),
        (
            lambda s: write_source(s, cases=[CASES[0], {**CASES[1], "idx": "2"}, CASES[2]]),
            UserInputError,
            r"test_cases.json: case 1 has idx '2'",
        ),
        (
            lambda s: write_source(s, template=TEMPLATE.replace("[Answer]\n{}", "[Answer]\n{answer}")),
            UserInputError,
            r"prompt_fs.txt: not a LongBench-Chat judge prompt template: .*\{answer\}",
        ),
    ],
    ids=[
        "missing-few-shots",
        "missing-template",
        "malformed-json",
        "empty-test-cases",
        "empty-few-shots",
        "case-without-few-shots",
        "extra-few-shot-list",
        "short-few-shot-list",
        "bad-score",
        "missing-query",
        "duplicate-idx",
        "string-idx",
        "named-slot",
    ],
)
def test_bad_sources_fail_naming_file_case_and_problem(tmp_path, change, error, message):
    source = write_source(tmp_path / "source")
    change(source)
    with pytest.raises(error, match=message):
        _build(source, "all", tmp_path)


def test_cli_writes_a_folder_that_load_dataset_reads(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    source = write_source(tmp_path / "source")
    out = tmp_path / "built"
    with caplog.at_level(logging.WARNING):
        assert cli.main(["data", "build", "longbench-chat", "--source", str(source), "--out", str(out)]) == 0
    assert caplog.text.count("not the published LongBench-Chat test cases") == 1  # once, not once per config
    assert sorted(path.name for path in tmp_path.iterdir()) == ["built", "source"]  # no staging folder left

    english = datasets.load_dataset(str(out), "en", split="test")
    assert english.features == FEATURES
    assert english.to_list() == _build(source, "en", tmp_path).to_list()
    assert datasets.load_dataset(str(out), "zh", split="test")["query"] == [CASES[1]["query"]]
    assert datasets.load_dataset(str(out), split="test")["idx"] == [1, 2, 3]  # `all` is the default config

    card = (out / "README.md").read_text(encoding="utf-8")
    header = card.split("---")[1]
    for expected in ("license: apache-2.0", "config_name: en", "path: zh/test-*.parquet", "name: few_shots"):
        assert expected in header
    assert "@inproceedings{bai2024longalign" in card and "THUDM/LongAlign" in card
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.parquet")) == [
        "all/test-00000-of-00001.parquet",
        "en/test-00000-of-00001.parquet",
        "zh/test-00000-of-00001.parquet",
    ]


@pytest.mark.parametrize(
    ("cases", "present", "absent"),
    [(ENGLISH_ONLY, "en", "zh"), (CHINESE_ONLY, "zh", "en")],
    ids=["en-only", "zh-only"],
)
def test_a_single_language_source_builds_without_the_empty_config(
    tmp_path, monkeypatch, caplog, cases, present, absent
):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    source = write_source(tmp_path / "source", cases=cases, few_shots=FEW_SHOTS[: len(cases)])
    out = tmp_path / "built"
    with caplog.at_level(logging.WARNING):
        assert cli.main(["data", "build", "longbench-chat", "--source", str(source), "--out", str(out)]) == 0
    assert f"config '{absent}' left out: the source has no" in caplog.text
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.parquet")) == [
        "all/test-00000-of-00001.parquet",
        f"{present}/test-00000-of-00001.parquet",
    ]
    queries = [case["query"] for case in cases]
    assert datasets.load_dataset(str(out), present, split="test")["query"] == queries
    assert datasets.load_dataset(str(out), split="test")["query"] == queries
    with pytest.raises(ValueError, match=rf"BuilderConfig '{absent}' not found"):
        datasets.load_dataset(str(out), absent, split="test")
    card = (out / "README.md").read_text(encoding="utf-8")
    assert f"config_name: {absent}" not in card and f"there is no `{absent}` config" in card
    assert f'load_dataset("path/to/this/folder", "{present}", split="test")' in card

    # The builder's empty config is refused, naming the file and the configs that exist.
    with pytest.raises(UserInputError, match=rf"test_cases.json has no \w+ case, so config '{absent}' would be empty"):
        _build(source, absent, tmp_path)


def _listing(folder):
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_a_failed_build_leaves_out_as_it_was(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    source = write_source(tmp_path / "source")
    real_to_parquet = datasets.Dataset.to_parquet
    written = []

    def to_parquet_that_fails_second(self, path, *args, **kwargs):
        written.append(path)
        if len(written) == 2:
            raise OSError("No space left on device")
        return real_to_parquet(self, path, *args, **kwargs)

    # A new folder: absent after the failure, and nothing else left in its parent.
    monkeypatch.setattr(datasets.Dataset, "to_parquet", to_parquet_that_fails_second)
    with pytest.raises(OSError, match="No space left"):
        write_hub_folder(tmp_path / "new" / "built", source_dir=source)
    assert len(written) == 2 and not (tmp_path / "new").exists()

    # An earlier build, with a file of the user's: a failed rebuild changes nothing.
    monkeypatch.setattr(datasets.Dataset, "to_parquet", real_to_parquet)
    out = write_hub_folder(tmp_path / "built", source_dir=source)
    (out / "NOTES.md").write_text("mine", encoding="utf-8")
    before = _listing(out)
    written.clear()
    monkeypatch.setattr(datasets.Dataset, "to_parquet", to_parquet_that_fails_second)
    with pytest.raises(OSError, match="No space left"):
        write_hub_folder(out, source_dir=write_source(tmp_path / "other", cases=ENGLISH_ONLY, few_shots=FEW_SHOTS[:2]))
    assert _listing(out) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["built", "other", "source"]

    # A rebuild that succeeds replaces the earlier configs (the stale `zh` goes) and keeps the user's file.
    monkeypatch.setattr(datasets.Dataset, "to_parquet", real_to_parquet)
    write_hub_folder(out, source_dir=tmp_path / "other")
    assert sorted(_listing(out)) == [
        "NOTES.md",
        "README.md",
        "all/test-00000-of-00001.parquet",
        "en/test-00000-of-00001.parquet",
    ]
    assert datasets.load_dataset(str(out), split="test")["idx"] == [1, 2]


def test_missing_source_folder_or_download_failure_says_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(UserInputError, match=r"--source .*nowhere: no such folder; pass the folder that holds"):
        write_hub_folder(tmp_path / "built", source_dir=tmp_path / "nowhere")
    monkeypatch.setattr(longbench_chat_builder, "SOURCE_URL", "http://127.0.0.1:9/")  # nothing listens there
    with pytest.raises(UserInputError, match=r"could not download LongBench-Chat .* pass their folder as `--source`"):
        write_hub_folder(tmp_path / "built")
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_build_subcommands_are_shared_between_data_sets():
    parser = argparse.ArgumentParser()
    data = parser.add_subparsers(dest="command")
    # Another data set registered first (as `longalign data build sft` will): both end up under one `build`.
    build_subparsers(data).add_parser("sft").set_defaults(func="sft")
    build_subparsers(data).add_parser("longbench-chat").set_defaults(func="longbench-chat")
    assert parser.parse_args(["build", "sft"]).func == "sft"
    assert parser.parse_args(["build", "longbench-chat"]).func == "longbench-chat"


def test_a_source_file_instead_of_its_folder_says_to_pass_the_folder(tmp_path):
    source = write_source(tmp_path / "source")
    (source / "README.md").write_text("notes")
    for command in (["--source", str(source / "test_cases.json")], ["--source", str(source / "README.md")]):
        with pytest.raises(UserInputError) as error:
            cli.main(["--debug", "data", "build", "longbench-chat", *command, "--out", str(tmp_path / "built")])
        assert "is a file: pass the folder that holds test_cases.json, few_shots.json, prompt_fs.txt" in str(
            error.value
        )
        assert "no such folder" not in str(error.value)
    with pytest.raises(UserInputError, match=rf"--source \S+test_cases.json is a file: .* \(here: {source}\)"):
        write_hub_folder(tmp_path / "built", source_dir=source / "test_cases.json")
    with pytest.raises(UserInputError, match=r"--source \S+README.md is a file: pass the folder .*txt, or leave"):
        write_hub_folder(tmp_path / "built", source_dir=source / "README.md")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["source"]


def test_an_out_folder_that_cannot_be_made_names_the_flag_not_the_staging_folder(tmp_path, capsys, monkeypatch):
    source = write_source(tmp_path / "source")
    (tmp_path / "a-file").write_text("x")
    real_mkdtemp = hub.tempfile.mkdtemp

    def mkdtemp(suffix=None, prefix=None, dir=None):  # as in /proc: allowed by the permissions, refused by the system
        if prefix and "read-only" in prefix:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), f"{dir}/{prefix}abc123{suffix}")
        return real_mkdtemp(suffix, prefix, dir)

    monkeypatch.setattr(hub.tempfile, "mkdtemp", mkdtemp)
    # Below a file, or a name too long: refused before the build; refused by the file system: where it is made.
    for out, reason in [
        (tmp_path / "a-file" / "built", "a-file is a file, so nothing can be created below it; pass another path"),
        (tmp_path / ("x" * 300), "File name too long; pass another path"),
        (tmp_path / "read-only", "cannot write there (No such file or directory); pass a folder you can write to"),
    ]:
        status = cli.main(["data", "build", "longbench-chat", "--source", str(source), "--out", str(out)])
        err = capsys.readouterr().err
        assert status == 2 and err.startswith(f"longalign: error: --out {out}") and reason in err, err
        assert ".partial" not in err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file", "source"]
