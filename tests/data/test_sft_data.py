import json

import datasets
import pytest

from longalign_hf.data import sft_data
from longalign_hf.data.sft_data import load_chat_dataset, mix_datasets, prepare_sft_dataset
from longalign_hf.errors import UserInputError

GOOD = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_load_by_file_type_and_folder(tmp_path):
    rows = [GOOD, GOOD]
    jsonl = _write_jsonl(tmp_path / "d.jsonl", rows)
    (tmp_path / "d.json").write_text(json.dumps(rows))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    folder = tmp_path / "shards"
    folder.mkdir()
    datasets.Dataset.from_list(rows * 2).to_parquet(str(folder / "train-00000.parquet"))
    for path, size in [(jsonl, 2), (str(tmp_path / "d.json"), 2), (str(tmp_path / "d.parquet"), 2),
                       (str(tmp_path / "saved"), 2), (str(folder), 4)]:  # fmt: skip
        loaded = load_chat_dataset(path)
        assert len(loaded) == size and loaded[0]["messages"] == GOOD["messages"]


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(UserInputError, match="missing.jsonl' does not exist"):
        load_chat_dataset(str(tmp_path / "missing.jsonl"))
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(UserInputError, match="unsupported data file type '.csv'"):
        load_chat_dataset(str(tmp_path / "data.csv"))


LINES = [json.dumps(GOOD), json.dumps(GOOD), '{"messages": [{"role": "user", "content": "q"}', json.dumps(GOOD)]


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("empty.jsonl", "", r"empty.jsonl is empty: it holds no rows"),
        ("empty.json", "", r"empty.json is empty: it holds no rows"),
        ("blank.jsonl", "\n \n", r"blank.jsonl is empty: it holds no rows"),
        ("bad.jsonl", "\n".join(LINES) + "\n", r"bad.jsonl, line 3: not valid JSON \(.*\); fix or delete that line"),
        ("bad.json", '[\n  {"messages": []},\n  {"messages": [}\n]', r"bad.json, line 3: not valid JSON"),
        ("no_rows.json", "[]", r"no_rows.json holds no rows"),
        ("scalar.json", "3", r"scalar.json: could not be read as JSON data \(.*\); a .jsonl file holds one JSON"),
        ("garbage.parquet", "not parquet\n", r"garbage.parquet: could not be read as PARQUET data \(ArrowInvalid"),
    ],
)
def test_bad_files_name_the_file_the_line_and_the_fix(tmp_path, name, text, match):
    (tmp_path / name).write_text(text)
    with pytest.raises(UserInputError, match=match):
        load_chat_dataset(str(tmp_path / name))


def test_bad_folders_name_the_folder_or_the_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        UserInputError, match=r"/empty: could not load this folder as a data set \(.*\); give a folder of"
    ):
        load_chat_dataset(str(tmp_path / "empty"))
    shards = tmp_path / "shards"
    shards.mkdir()
    _write_jsonl(shards / "a.jsonl", [GOOD])
    (shards / "b.jsonl").write_text("\n".join(LINES) + "\n")
    with pytest.raises(UserInputError, match=r"shards/b.jsonl, line 3: not valid JSON"):
        load_chat_dataset(str(shards))
    datasets.DatasetDict({"train": datasets.Dataset.from_list([GOOD])}).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(UserInputError, match=r"saved has no split 'test'; choose one of train"):
        load_chat_dataset(str(tmp_path / "saved"), split="test")


def test_json_lines_under_a_json_name_load(tmp_path):
    path = _write_jsonl(tmp_path / "lines.json", [GOOD, GOOD, GOOD])
    assert load_chat_dataset(path)["messages"] == [GOOD["messages"]] * 3


def test_a_hub_id_that_cannot_be_loaded_says_what_to_do(monkeypatch):
    offline = ConnectionError("Couldn't reach 'THUDM/LongAlign-10k' on the Hub (OfflineModeIsEnabled)")

    def load_dataset(*args, **kwargs):
        raise offline

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    match = (
        r"could not load data set 'THUDM/LongAlign-10k' from the Hugging Face Hub \(ConnectionError: Couldn't reach "
        r".*network connection.*or give a local .jsonl/.json/.parquet file or folder"
    )
    with pytest.raises(UserInputError, match=match) as caught:
        load_chat_dataset("THUDM/LongAlign-10k")
    assert caught.value.__cause__ is offline


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"messages": None}, "no `messages`"),
        ({"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]}, "role 'tool'"),
        ({"messages": [{"role": "user", "content": "only a question"}]}, "no assistant turn"),
    ],
)
def test_bad_rows_fail_with_source_row_and_reason(tokenizer, bad, reason):
    dataset = datasets.Dataset.from_list([GOOD, GOOD, bad, GOOD])
    with pytest.raises(UserInputError, match=rf"^data/train.jsonl: row 2: .*{reason}.*bad_rows='skip'"):
        prepare_sft_dataset(dataset, tokenizer, max_length=64, source="data/train.jsonl")
    kept, report = prepare_sft_dataset(dataset, tokenizer, max_length=64, bad_rows="skip", source="data/train.jsonl")
    assert len(kept) == 3 and report.dropped == {"bad row": 1}
    assert report.summary().startswith("data/train.jsonl: 4 rows") and "row 2: " in report.summary()


def test_no_messages_column(tokenizer):
    dataset = datasets.Dataset.from_list([{"conversations": [{"from": "human", "value": "x"}]}])
    with pytest.raises(ValueError, match="no `messages` column \\(columns: conversations\\)"):
        prepare_sft_dataset(dataset, tokenizer, max_length=64)


def test_overflow_and_lost_targets_are_counted(tokenizer):
    long_answer = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a" * 100}]}
    long_prompt = {"messages": [{"role": "user", "content": "q" * 100}, {"role": "assistant", "content": "a"}]}
    dataset = datasets.Dataset.from_list([GOOD, long_answer, long_prompt])
    kept, report = prepare_sft_dataset(dataset, tokenizer, max_length=60)
    # The long answer is cut (and keeps targets); the long prompt loses its only reply to truncation.
    assert len(kept) == 2 and report.truncated == 1 and report.dropped == {"no target token left": 1}
    assert max(kept["length"]) == 60
    kept, report = prepare_sft_dataset(dataset, tokenizer, max_length=60, overflow="drop")
    assert len(kept) == 1 and report.dropped == {"over max_length": 2}
    for row in prepare_sft_dataset(dataset, tokenizer, max_length=None)[0]:
        assert row["num_target_tokens"] == sum(label != -100 for label in row["labels"])


def test_empty_replies_are_masked_and_counted(tokenizer):
    one_empty = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "},
                              {"role": "user", "content": "r"}, {"role": "assistant", "content": "a"}]}  # fmt: skip
    all_empty = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""},
                              {"role": "user", "content": "r"}, {"role": "assistant", "content": "\n"}]}  # fmt: skip
    kept, report = prepare_sft_dataset(datasets.Dataset.from_list([one_empty, all_empty, GOOD]), tokenizer, 256)
    assert report.empty_turns == 3 and report.dropped == {"no target token left": 1} and len(kept) == 2
    assert "3 empty assistant turns masked" in report.summary()
    assert "row 1: every assistant turn is empty" in report.summary()
    targets = [label for label in kept[0]["labels"] if label != -100]
    assert tokenizer.decode(targets) == "a<|end|>" and kept[0]["num_target_tokens"] == len(targets)
    assert "_empty" not in kept.column_names and "empty_turns" not in kept.column_names


def test_new_code_does_not_reuse_labels_cached_by_old_code(tokenizer, tmp_path, monkeypatch):
    # A file-backed data set, so `map` caches its result on disk, as it does for a user's data.
    dataset = load_chat_dataset(_write_jsonl(tmp_path / "d.jsonl", [GOOD]))
    old, _ = prepare_sft_dataset(dataset, tokenizer, max_length=64)

    def every_token_a_target(messages, tokenizer, max_length, overflow):
        ids = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
        return {"input_ids": ids, "labels": ids, "truncated": 0, "empty_turns": 0}

    monkeypatch.setattr(sft_data, "tokenize_conversation", every_token_a_target)
    monkeypatch.setattr(sft_data, "_CODE_DIGEST", "the digest of a later version")
    new, _ = prepare_sft_dataset(dataset, tokenizer, max_length=64)
    assert new["labels"] == new["input_ids"] != old["labels"]


def test_mixture_fractions_never_oversample():
    small = datasets.Dataset.from_list([GOOD] * 10)
    large = datasets.Dataset.from_list([{"messages": GOOD["messages"], "extra": 1}] * 40)
    assert len(mix_datasets([small, large])) == 50
    mixed = mix_datasets([small, large], fractions=[1, 3])
    assert len(mixed) == 40 and mixed.column_names == ["messages"]
    with pytest.raises(ValueError, match="one positive fraction per data set"):
        mix_datasets([small, large], fractions=[1])
