import json

import datasets
import pytest

from longalign_hf.sft_data import load_chat_dataset, mix_datasets, prepare_sft_dataset

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
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_chat_dataset(str(tmp_path / "missing.jsonl"))
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported data file type '.csv'"):
        load_chat_dataset(str(tmp_path / "data.csv"))


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
    with pytest.raises(ValueError, match=rf"train.jsonl: row 2: .*{reason}.*bad_rows='skip'"):
        prepare_sft_dataset(dataset, tokenizer, max_length=64, source="train.jsonl")
    kept, report = prepare_sft_dataset(dataset, tokenizer, max_length=64, bad_rows="skip", source="train.jsonl")
    assert len(kept) == 3 and report.dropped == {"bad row": 1} and "row 2" in report.summary()


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


def test_mixture_fractions_never_oversample():
    small = datasets.Dataset.from_list([GOOD] * 10)
    large = datasets.Dataset.from_list([{"messages": GOOD["messages"], "extra": 1}] * 40)
    assert len(mix_datasets([small, large])) == 50
    mixed = mix_datasets([small, large], fractions=[1, 3])
    assert len(mixed) == 40 and mixed.column_names == ["messages"]
    with pytest.raises(ValueError, match="one positive fraction per data set"):
        mix_datasets([small, large], fractions=[1])
