"""`longalign data build sft` on hand-written rows: ShareGPT normalization, cleaning, the mix, the Hub-ready folder."""

import json
import logging

import datasets
import huggingface_hub
import pytest
import yaml

from longalign_hf import cli
from longalign_hf.data.sft import build
from longalign_hf.data.sft.build import build_sft_dataset
from longalign_hf.data.sft.conversations import clean_conversation, normalize_conversation
from longalign_hf.data.sft.length_stats import token_lengths
from longalign_hf.data.sft_data import load_chat_dataset, prepare_sft_dataset
from longalign_hf.data.tokenizer import load_tokenizer
from longalign_hf.errors import UserInputError


def _turn(role, content):
    return {"role": role, "content": content}


def _long_rows(n=4):
    """LongAlign-10k style rows (what `longalign data generate` writes: `messages` plus metadata)."""
    return [
        {
            "messages": [
                _turn("user", f"long doc {i} " + "text " * (300 * (i + 1))),
                _turn("assistant", f"a{i}\u200b"),
            ],
            "doc_id": f"d{i}",
            "questions": ["q"] * 5,
        }
        for i in range(n)
    ]


def _sharegpt_rows(n=10):
    return [
        {
            "id": f"s{i}",
            "conversations": [{"from": "human", "value": f"hi {i}"}, {"from": "gpt", "value": f"hello {i}"}],
        }
        for i in range(n)
    ]


def _write(tmp_path, long_rows, short_rows):
    long_path, short_path = tmp_path / "long.jsonl", tmp_path / "sharegpt.json"
    long_path.write_text("".join(json.dumps(row) + "\n" for row in long_rows), encoding="utf-8")
    short_path.write_text(json.dumps(short_rows), encoding="utf-8")
    return str(long_path), str(short_path)


def test_sharegpt_normalization():
    turns = [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello"},
        {"from": "user", "value": "And?"},
        {"from": "chatgpt", "value": "More"},
        {"from": "Bard", "value": "Even more"},
        {"from": "assistant", "value": None},
        {"role": "user", "content": "mixed formats are fine"},
    ]
    assert normalize_conversation(turns) == [
        _turn("system", "Be brief."),
        _turn("user", "Hi"),
        _turn("assistant", "Hello"),
        _turn("user", "And?"),
        _turn("assistant", "More"),
        _turn("assistant", "Even more"),
        _turn("assistant", ""),
        _turn("user", "mixed formats are fine"),
    ]
    with pytest.raises(ValueError, match=r"turn 1 has `from` 'tool'; expected one of human, user, gpt"):
        normalize_conversation([{"from": "human", "value": "x"}, {"from": "tool", "value": "y"}])
    with pytest.raises(ValueError, match=r"turn 0 has `role` 'function'"):
        normalize_conversation([_turn("function", "x")])
    with pytest.raises(ValueError, match=r"turn 0 has a int content, expected a string"):
        normalize_conversation([{"from": "gpt", "value": 3}])
    with pytest.raises(ValueError, match=r"expected a list of turns, got NoneType"):
        normalize_conversation(None)


def test_zero_width_characters_leave_assistant_turns_only():
    messages = [_turn("user", "a\u200bb\ufeff"), _turn("assistant", "\ufeffx\u200by\u200cz\u200d")]
    cleaned, characters, turns = clean_conversation(messages)
    assert cleaned == [_turn("user", "a\u200bb\ufeff"), _turn("assistant", "xyz")]
    assert (characters, turns) == (4, 0)
    assert messages[1]["content"] == "\ufeffx\u200by\u200cz\u200d"  # the input is not modified


def test_empty_assistant_turns_go_with_their_questions():
    messages = [
        _turn("system", "sys"),
        _turn("user", "q1"),
        _turn("assistant", "  \u200b\n"),  # empty once zero-width characters are gone
        _turn("user", "q2"),
        _turn("assistant", "a2"),
        _turn("user", "q3"),
        _turn("assistant", ""),
        _turn("user", "q4, never answered"),
    ]
    cleaned, characters, turns = clean_conversation(messages)
    assert cleaned == [_turn("system", "sys"), _turn("user", "q2"), _turn("assistant", "a2")]
    assert (characters, turns) == (1, 2)
    assert clean_conversation([_turn("user", "q"), _turn("assistant", " ")]) == ([], 0, 1)


def test_build_round_trips_through_load_dataset_and_trains(tmp_path, tokenizer, capsys):
    short_rows = _sharegpt_rows(10)
    short_rows[3]["conversations"][1]["value"] = "\u200b"  # dropped: no reply left
    short_rows[5]["conversations"][1]["value"] = "hello\u200d 5"
    long, short = _write(tmp_path, _long_rows(4), short_rows)
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    out = tmp_path / "mix"
    cli.main(["data", "build", "sft", "--long", long, "--short", short, "--out", str(out)]
             + ["--tokenizer", str(tmp_path / "tokenizer")])  # fmt: skip
    printed = capsys.readouterr().out
    assert "| set | samples | mean | median | p90 | max | > 8k | > 32k |" in printed

    mix = datasets.load_dataset(str(out), split="train")  # offline, from the card's `configs:`
    assert mix.column_names == ["messages", "source"] and len(mix) == 4 + 9
    assert mix["source"].count("long") == 4
    by_text = {row["messages"][0]["content"]: row for row in mix}
    for row in _long_rows(4):
        kept = by_text[row["messages"][0]["content"]]
        assert kept["messages"][1] == _turn("assistant", row["messages"][1]["content"].replace("\u200b", ""))
        assert kept["source"] == "long"
    assert by_text["hi 5"]["messages"] == [_turn("user", "hi 5"), _turn("assistant", "hello 5")]
    assert "hi 3" not in by_text and by_text["hi 0"]["source"] == "short"
    assert mix["source"] != ["long"] * 4 + ["short"] * 9  # shuffled

    card = (out / "README.md").read_text(encoding="utf-8")
    header = yaml.safe_load(card.split("---")[1])
    assert header["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}
    ]
    assert header["license"] == "other"
    assert [(split["name"], split["num_examples"]) for split in header["dataset_info"]["splits"]] == [("train", 13)]
    assert [feature["name"] for feature in header["dataset_info"]["features"]] == ["messages", "source"]
    assert "![Histogram of sample lengths in tokens](length_histogram.png)" in card
    assert f"| long | `{long}` | 4 | 4 | 4 | 30.8% |" in card
    assert "| short | 0 | 1 | 1 | 2 |" in card  # bad rows, no reply, empty turns, zero-width characters
    assert "longalign data build sft --long" in card
    assert (out / "length_histogram.png").read_bytes().startswith(b"\x89PNG")

    lengths = token_lengths(mix["messages"], tokenizer)
    # By hand: "<|bos|><|user|>\n" + question + "<|end|>\n<|assistant|>\n" + answer + "<|end|>\n", one token a byte
    # and one per special token.
    assert lengths == [5 + 4 + sum(len(turn["content"].encode("utf-8")) for turn in m) for m in mix["messages"]]
    assert f"| all | 13 | {sum(lengths) / 13:,.0f} |" in card

    # What recipes/sft.py does with --dataset_name OUT: load_chat_dataset, then the trainer's prepare_sft_dataset.
    tokenized, report = prepare_sft_dataset(load_chat_dataset(str(out)), tokenizer, max_length=8192, source=str(out))
    assert report.kept == 13 and not report.dropped


def test_short_ratio_mix_and_seed(tmp_path, tokenizer):
    long, short = _write(tmp_path, _long_rows(4), _sharegpt_rows(20))
    report = build_sft_dataset(long, short, tmp_path / "a", short_ratio=0.75, tokenizer=tokenizer, seed=1)
    assert [(part.name, part.kept, part.in_mix) for part in report.parts] == [("long", 4, 4), ("short", 20, 12)]
    assert report.stats["all"]["count"] == 16 and report.stats["short"]["count"] == 12
    first = datasets.load_dataset(str(tmp_path / "a"), split="train")
    build_sft_dataset(long, short, tmp_path / "b", short_ratio=0.75, tokenizer=tokenizer, seed=1)
    assert datasets.load_dataset(str(tmp_path / "b"), split="train")["messages"] == first["messages"]
    build_sft_dataset(long, short, tmp_path / "c", short_ratio=0.75, tokenizer=tokenizer, seed=2)
    other = datasets.load_dataset(str(tmp_path / "c"), split="train")
    # Another seed: another random sample of 12 short rows (not the file's first 12), in another order.
    assert sorted(map(str, other["messages"])) != sorted(map(str, first["messages"]))
    with pytest.raises(UserInputError, match=r"--short-ratio must be between 0 and 1 \(exclusive\), got 1.0"):
        build_sft_dataset(long, short, tmp_path / "d", short_ratio=1.0, tokenizer=tokenizer)


def test_bad_rows_error_names_source_and_row_or_are_skipped(tmp_path, tokenizer, caplog):
    short_rows = _sharegpt_rows(6)
    short_rows[4]["conversations"][1]["from"] = "robot"
    long, short = _write(tmp_path, _long_rows(2), short_rows)
    with pytest.raises(
        UserInputError, match=rf"{short}: row 4 \(rows count from 0\): turn 1 has `from` 'robot'.*--bad-rows skip"
    ):
        build_sft_dataset(long, short, tmp_path / "out", tokenizer=tokenizer)
    with caplog.at_level(logging.INFO, logger="longalign_hf.data.sft.build"):
        report = build_sft_dataset(long, short, tmp_path / "out", tokenizer=tokenizer, bad_rows="skip")
    assert (report.parts[1].bad_rows, report.parts[1].kept) == (1, 5)
    assert "dropped 1 bad rows" in caplog.text and "row 4: turn 1 has `from` 'robot'" in caplog.text

    (tmp_path / "plain.jsonl").write_text(json.dumps({"prompt": "x", "completion": "y"}) + "\n")
    with pytest.raises(
        UserInputError, match=r"--short .*plain.jsonl: no `messages` or `conversations` column \(columns: prompt"
    ):
        build_sft_dataset(long, str(tmp_path / "plain.jsonl"), tmp_path / "out", tokenizer=tokenizer)


def test_push_to_hub_uploads_the_folder(tmp_path, tokenizer, monkeypatch):
    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs["repo_id"], kwargs))
            return type("Commit", (), {"commit_url": "https://hf.co/datasets/org/mix/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    long, short = _write(tmp_path, _long_rows(2), _sharegpt_rows(3))
    report = build_sft_dataset(long, short, tmp_path / "out", tokenizer=tokenizer, push_to_hub="org/mix", private=True)
    assert report.url == "https://hf.co/datasets/org/mix/commit/1"
    assert [call[:2] for call in calls] == [("create_repo", "org/mix"), ("upload_folder", "org/mix")]
    assert calls[0][2] == {"repo_type": "dataset", "private": True, "exist_ok": True}
    assert calls[1][2]["folder_path"] == str(tmp_path / "out") and calls[1][2]["repo_type"] == "dataset"
    assert 'load_dataset("org/mix", split="train")' in (tmp_path / "out" / "README.md").read_text()


def test_bad_row_of_a_jsonl_file_is_named_by_its_line(tmp_path, tokenizer):
    rows = _long_rows(3)
    rows[1]["messages"][1]["role"] = "robot"
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps(rows[0]) + "\n\n" + "\n".join(map(json.dumps, rows[1:])), encoding="utf-8")
    short = tmp_path / "short.jsonl"
    short.write_text("".join(json.dumps(row) + "\n" for row in _sharegpt_rows(2)), encoding="utf-8")
    with pytest.raises(UserInputError, match=rf"^{long}, line 3: turn 1 has `role` 'robot'.*--bad-rows skip"):
        build_sft_dataset(str(long), str(short), tmp_path / "out", tokenizer=tokenizer)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"short.jsonl is empty"),
        ('{"messages": []}\n\n{"messages": [}\n', r"short.jsonl, line 3: not valid JSON"),
    ],
    ids=["empty", "malformed-line"],
)
def test_unreadable_sources_name_file_and_line_and_leave_no_output(tmp_path, tokenizer, text, message):
    long, _ = _write(tmp_path, _long_rows(2), [])
    (tmp_path / "short.jsonl").write_text(text, encoding="utf-8")
    out = tmp_path / "new" / "mix"
    with pytest.raises(UserInputError, match=message):
        build_sft_dataset(long, str(tmp_path / "short.jsonl"), out, tokenizer=tokenizer)
    with pytest.raises(UserInputError, match=r"'\./no-such-file.jsonl' does not exist"):
        build_sft_dataset("./no-such-file.jsonl", long, out, tokenizer=tokenizer)
    assert not (tmp_path / "new").exists()


def test_a_failed_build_leaves_out_as_it_was(tmp_path, tokenizer, monkeypatch):
    long, short = _write(tmp_path, _long_rows(4), _sharegpt_rows(6))

    def plot_fails(*args):
        raise OSError("No space left on device")

    out = tmp_path / "mix"
    with monkeypatch.context() as patch:
        patch.setattr(build, "plot_lengths", plot_fails)
        with pytest.raises(OSError, match="No space left"):
            build_sft_dataset(long, short, out, tokenizer=tokenizer)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["long.jsonl", "sharegpt.json"]

    build_sft_dataset(long, short, out, tokenizer=tokenizer, seed=1)
    (out / "NOTES.md").write_text("mine", encoding="utf-8")
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    with monkeypatch.context() as patch:
        patch.setattr(build, "plot_lengths", plot_fails)
        with pytest.raises(OSError, match="No space left"):
            build_sft_dataset(long, short, out, tokenizer=tokenizer, seed=2, short_ratio=0.5)
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["long.jsonl", "mix", "sharegpt.json"]

    build_sft_dataset(long, short, out, tokenizer=tokenizer, seed=2, short_ratio=0.5)
    assert len(datasets.load_dataset(str(out), split="train")) == 8  # 4 long + 4 short: the new mix replaced the old
    assert (out / "NOTES.md").read_text(encoding="utf-8") == "mine"


def test_a_tokenizer_that_cannot_be_loaded_says_to_pass_tokenizer(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as offline: never touch the network
    long, short = _write(tmp_path, _long_rows(2), _sharegpt_rows(2))
    with pytest.raises(UserInputError, match=r"the tokenizer 'longalign-tests/no-such-tokenizer' \(.*\); pass "
                       r"`--tokenizer PATH_OR_ID`.*a local folder"):  # fmt: skip
        build_sft_dataset(long, short, tmp_path / "out", tokenizer="longalign-tests/no-such-tokenizer")
    with pytest.raises(UserInputError, match=r"the tokenizer '\./no-such-folder' \(no such folder\)"):
        load_tokenizer("./no-such-folder")
    with pytest.raises(UserInputError, match=rf"the tokenizer '{tmp_path}' \(.*\); pass `--tokenizer PATH_OR_ID`"):
        load_tokenizer(str(tmp_path))  # a folder without tokenizer files
    assert not (tmp_path / "out").exists()


def test_an_out_that_is_a_file_is_refused_before_the_sets_are_loaded(tmp_path, tokenizer, monkeypatch):
    long, short = _write(tmp_path, _long_rows(2), _sharegpt_rows(2))
    (tmp_path / "mix").write_text("mine", encoding="utf-8")

    def load_fails(*args, **kwargs):
        raise AssertionError("the sets were loaded before --out was checked")

    monkeypatch.setattr("longalign_hf.data.sft_data.load_chat_dataset", load_fails)
    with pytest.raises(UserInputError, match=r"--out \S+mix is a file: pass a folder to write the data set to"):
        build_sft_dataset(long, short, tmp_path / "mix", tokenizer=tokenizer)
    with pytest.raises(UserInputError, match=r"--out \S+mix/data: \S+mix is a file, so nothing can be created below"):
        build_sft_dataset(long, short, tmp_path / "mix" / "data", tokenizer=tokenizer)
    assert (tmp_path / "mix").read_text(encoding="utf-8") == "mine"


def test_a_tokenizer_folder_without_tokenizer_files_says_what_it_lacks(tmp_path, tokenizer):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(UserInputError, match=r"model' \(the folder holds no tokenizer file: none of tokenizer.json"):
        load_tokenizer(str(tmp_path / "model"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--short-ratio", "1"], "argument --short-ratio: '1' is not a number between 0 and 1"),
        (["--short-ratio", "0"], "argument --short-ratio: '0' is not a number between 0 and 1"),
        (["--seed", "-1"], "argument --seed: '-1' is not a seed"),
    ],
)
def test_bad_numbers_are_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(["data", "build", "sft", "--long", "l", "--short", "s", "--out", "o", *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_bad_parquet_source_is_one_message_without_the_librarys_own_error_lines(tmp_path, tokenizer, caplog):
    long, _ = _write(tmp_path, _long_rows(2), [])
    (tmp_path / "short.parquet").write_text("not parquet", encoding="utf-8")
    with caplog.at_level(logging.DEBUG), pytest.raises(UserInputError, match=r"short.parquet: could not be read"):
        build_sft_dataset(long, str(tmp_path / "short.parquet"), tmp_path / "mix", tokenizer=tokenizer)
    # The library's own error lines (its INFO lines depend on the verbosity earlier code set, and are not the point).
    assert not [r for r in caplog.records if r.name.startswith("datasets") and r.levelno >= logging.WARNING]
    assert logging.getLogger("datasets").level != logging.CRITICAL + 1  # restored
