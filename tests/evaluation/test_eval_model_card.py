"""`longalign eval ... --model FOLDER` adds its results to the folder's model card: in place, replaced on rerun, the
rest of the card untouched."""

import datetime
import logging
import re
import shutil

import datasets
import pytest
import yaml
from huggingface_hub import EvalResult, ModelCard
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results
from longbench_chat_source import write_source
from loopback_server import LoopbackServer

from longalign_hf import LongAlignConfig, LongAlignSFTTrainer, cli
from longalign_hf.evaluation.longbench_chat.scoring import JUDGE_SYSTEM_PROMPT
from longalign_hf.evaluation.model_card import record_in_model_card, update_model_card
from longalign_hf.tiny import build_byte_tokenizer, build_tiny_model

TODAY = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory):
    """A tiny model trained one step by `LongAlignSFTTrainer` and saved: weights, tokenizer and its card."""
    tokenizer = build_byte_tokenizer()
    model = build_tiny_model(tokenizer, max_position_embeddings=2048)
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a" * i}]}
            for i in range(1, 7)]  # fmt: skip
    folder = tmp_path_factory.mktemp("trained") / "tiny-longalign"
    args = LongAlignConfig(output_dir=str(folder), max_length=128, max_steps=1, report_to="none")
    trainer = LongAlignSFTTrainer(model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                                  processing_class=tokenizer)  # fmt: skip
    trainer.train()
    trainer.save_model()
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def model_folder(trained_folder, tmp_path):
    folder = tmp_path / "tiny-longalign"
    shutil.copytree(trained_folder, folder)
    return folder


def _section(text: str, key: str) -> str:
    [section] = re.findall(rf"<!-- longalign:{re.escape(key)} -->.*?<!-- /longalign:{re.escape(key)} -->", text, re.S)
    return section


def _needle(folder, out, *extra):
    argv = ["eval", "needle", "--model", str(folder), "--lengths", "700", "--max-new-tokens", "2"]
    return cli.main([*argv, "--output-dir", str(out), *extra])


def test_needle_adds_its_heatmap_and_table_and_a_rerun_replaces_them(model_folder, tmp_path):
    original = (model_folder / "README.md").read_text(encoding="utf-8")
    assert _needle(model_folder, tmp_path / "first", "--depths", "0,100") == 0
    content = (model_folder / "README.md").read_text(encoding="utf-8")
    section = _section(content, "needle")
    assert content.replace(section + "\n\n", "") == original  # inserted above the anchor, nothing else touched
    assert content.index(section) < content.index("<!-- longalign:evaluation -->") < content.index("## Framework")
    table, notes = (tmp_path / "first" / "summary.md").read_text(encoding="utf-8").strip().split("\n\n")
    # The summary's notes as a list; the card names the model by its folder only.
    assert notes.startswith(f"model: {model_folder}; ")
    assert table in section and f"\n- {notes.replace(str(model_folder), model_folder.name)}\n" in section
    assert f"`longalign eval needle`, {TODAY}: probes single at 2 depths" in section
    assert "](needle_heatmap_single.png)" in section
    heatmap = (model_folder / "needle_heatmap_single.png").read_bytes()
    assert heatmap == (tmp_path / "first" / "heatmap_single.png").read_bytes()

    # A rerun with a judge and other depths: the section is replaced, the judge's heatmap joins the first.
    with LoopbackServer(lambda request: "Rating: [[7]]") as server:
        judge = ["--judge-model", "loopback-judge", "--judge-base-url", server.base_url]
        assert _needle(model_folder, tmp_path / "second", "--depths", "0,50,100", *judge) == 0
    content = (model_folder / "README.md").read_text(encoding="utf-8")
    section = _section(content, "needle")  # exactly one
    assert "at 3 depths" in section and "at 2 depths" not in content
    assert "the judge `loopback-judge` also rated the single needle 1-10" in section
    assert "| single (judge 1-10) | 7.00 | 7.00 |" in section
    assert (model_folder / "needle_heatmap_single_judge.png").exists()
    assert content.replace(section + "\n\n", "") == original
    card = ModelCard(content)
    assert card.data.eval_results is None  # needle results are a section, not model-index entries

    # Without the judge again: its heatmap, no longer linked, goes.
    assert _needle(model_folder, tmp_path / "third", "--depths", "0,100") == 0
    assert not (model_folder / "needle_heatmap_single_judge.png").exists()
    assert (model_folder / "needle_heatmap_single.png").exists()


def judge(rating):
    """A loopback server's responder: the judge rates `rating`; as the generation server it answers a sentence."""

    def respond(request):
        if request.messages[0] == {"role": "system", "content": JUDGE_SYSTEM_PROMPT}:
            return f"Rating: [[{rating}]]"
        return "A served answer."

    return respond


@pytest.fixture
def dataset_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    out = tmp_path / "longbench_chat"
    cli.main(
        ["data", "build", "longbench-chat", "--source", str(write_source(tmp_path / "source")), "--out", str(out)]
    )
    return out


def _longbench_chat(folder, dataset_dir, out, rating, judge_model="loopback-judge", *extra):
    with LoopbackServer(judge(rating)) as server:
        argv = ["eval", "longbench-chat", "--model", str(folder), "--dataset", str(dataset_dir), "--tokenizer",
                str(folder), "--generation-base-url", server.base_url, "--judge-model", judge_model,
                "--judge-base-url", server.base_url, "--output-dir", str(out), *extra]  # fmt: skip
        return cli.main(argv)


def _model_index(content: str) -> list:
    return yaml.safe_load(content.split("---\n")[1])["model-index"]


def test_longbench_chat_adds_a_model_index_entry_that_a_rerun_replaces(model_folder, dataset_dir, tmp_path):
    assert _longbench_chat(model_folder, dataset_dir, tmp_path / "first", 6) == 0
    content = (model_folder / "README.md").read_text(encoding="utf-8")
    model_index = _model_index(content)
    name, [result] = model_index_to_eval_results(model_index)
    assert eval_results_to_model_index(name, [result]) == model_index  # a well-formed model-index, round trip
    assert name == "tiny-longalign"
    assert (result.task_type, result.dataset_type, result.dataset_name) == (
        "text-generation",
        "longbench-chat",
        "LongBench-Chat",
    )
    assert (result.dataset_config, result.dataset_split, result.metric_type) == ("all", "test", "longbench_chat")
    assert (result.metric_value, result.metric_config) == (6.0, "loopback-judge")
    assert result.metric_args == {
        "scale": "1-10",
        "judge_model": "loopback-judge",
        "judge_runs": 2,
        "cases": 3,
        "date": TODAY,
    }
    section = _section(content, "longbench-chat:all:loopback-judge")
    assert "| 6.00 |" in section and "| 3/3 |" in section and f"`longalign eval longbench-chat`, {TODAY}" in section
    assert "## LongAlign settings" in content and "## Packing (measured)" in content  # the training card stays

    # The same judge again: its entry and its section are replaced. Another judge: one more of each.
    assert _longbench_chat(model_folder, dataset_dir, tmp_path / "second", 8) == 0
    assert _longbench_chat(model_folder, dataset_dir, tmp_path / "third", 3, "other-judge") == 0
    content = (model_folder / "README.md").read_text(encoding="utf-8")
    _, results = model_index_to_eval_results(_model_index(content))
    assert sorted((r.metric_config, r.metric_value) for r in results) == [
        ("loopback-judge", 8.0),
        ("other-judge", 3.0),
    ]
    assert "| 8.00 |" in _section(content, "longbench-chat:all:loopback-judge") and "| 6.00 |" not in content
    assert "| 3.00 |" in _section(content, "longbench-chat:all:other-judge")
    assert ModelCard(content).data.eval_results == results


def test_a_smoke_test_run_leaves_the_card_alone(model_folder, dataset_dir, tmp_path, caplog):
    original = (model_folder / "README.md").read_bytes()
    with caplog.at_level(logging.INFO, logger="longalign_hf"):
        assert (
            _longbench_chat(model_folder, dataset_dir, tmp_path / "limited", 6, "loopback-judge", "--limit", "2") == 0
        )
    assert (model_folder / "README.md").read_bytes() == original
    assert "--limit 2 runs only the first cases" in caplog.text
    assert _longbench_chat(model_folder, dataset_dir, tmp_path / "off", 6, "loopback-judge", "--no-model-card") == 0
    assert (model_folder / "README.md").read_bytes() == original


THIRD_PARTY = """---
license: mit
language:
- en
model-index:
- name: someone/their-model
  results:
  - task:
      type: text-generation
    dataset:
      name: MMLU
      type: cais/mmlu
    metrics:
    - type: accuracy
      value: 0.61
---

# Their model

Their own words, kept as written.
"""


def _result(value, judge_model="judge-a"):
    return EvalResult(
        task_type="text-generation", dataset_type="longbench-chat", dataset_name="LongBench-Chat",
        dataset_config="all", dataset_split="test", metric_type="longbench_chat", metric_value=value,
        metric_config=judge_model,
    )  # fmt: skip


def test_a_third_party_card_keeps_its_content_and_results(tmp_path):
    (tmp_path / "README.md").write_text(THIRD_PARTY, encoding="utf-8")
    update_model_card(tmp_path, "needle", "### Needle\n\nno metadata change")
    content = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert content.startswith(THIRD_PARTY)  # metadata byte for byte, the text as it was, the section after it
    assert content.endswith("## Evaluation (longalign-hf)\n\n<!-- longalign:needle -->\n\n### Needle\n\nno metadata "
                            "change\n\n<!-- /longalign:needle -->\n\n<!-- longalign:evaluation -->\n")  # fmt: skip

    update_model_card(tmp_path, "lbc", "### LBC 1", [_result(5.0)])
    update_model_card(tmp_path, "lbc", "### LBC 2", [_result(6.5)])
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.license == "mit" and card.data.language == ["en"]
    assert card.data.model_name == "someone/their-model"
    assert [(r.dataset_name, r.metric_value) for r in card.data.eval_results] == [
        ("MMLU", 0.61),
        ("LongBench-Chat", 6.5),
    ]
    assert "# Their model\n\nTheir own words, kept as written.\n" in card.text
    assert card.text.count("<!-- longalign:needle -->") == 1 and card.text.count("<!-- longalign:lbc -->") == 1
    assert "### LBC 2" in card.text and "### LBC 1" not in card.text


def test_a_folder_without_a_card_gets_a_minimal_one(tmp_path):
    folder = tmp_path / "some-model"
    folder.mkdir()
    update_model_card(folder, "lbc", "### LBC", [_result(4.0)])
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "transformers" and card.data.model_name == "some-model"
    assert [r.metric_value for r in card.data.eval_results] == [4.0]
    assert "created by `longalign eval`" in card.text and "### LBC" in card.text


def test_cards_that_are_left_alone(tmp_path, caplog):
    (tmp_path / "README.md").write_text("---\n- not a mapping\n---\nbody\n", encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="longalign_hf"):
        assert record_in_model_card(str(tmp_path), "needle", "### Needle") is None
        assert record_in_model_card("someone/hub-model", "needle", "### Needle") is None
    assert (tmp_path / "README.md").read_text(encoding="utf-8") == "---\n- not a mapping\n---\nbody\n"
    assert "Could not add the needle results to the model card" in caplog.text
    assert "someone/hub-model is not a local folder" in caplog.text


def test_a_linked_card_is_replaced_not_written_through(tmp_path):
    # The Hub cache links a snapshot's files to shared blobs: the blob must not change.
    blob = tmp_path / "blob"
    blob.write_text("# Cached card\n", encoding="utf-8")
    folder = tmp_path / "snapshot"
    folder.mkdir()
    (folder / "README.md").symlink_to(blob)
    update_model_card(folder, "needle", "### Needle")
    assert blob.read_text(encoding="utf-8") == "# Cached card\n"
    assert not (folder / "README.md").is_symlink() and "### Needle" in (folder / "README.md").read_text()


def test_a_card_with_windows_line_endings_keeps_them(tmp_path):
    original = THIRD_PARTY.replace("\n", "\r\n")
    (tmp_path / "README.md").write_bytes(original.encode())
    update_model_card(tmp_path, "needle", "### Needle")
    assert (tmp_path / "README.md").read_bytes().startswith(original.encode())
