"""The model card a LongAlign run writes on save: it parses, and what it says is what the run did."""

import importlib.metadata
import re

import datasets
import pytest
import transformers
from huggingface_hub import ModelCard

from longalign_hf import LongAlignConfig, LongAlignSFTTrainer
from longalign_hf.data.longbench_chat.format import CITATION
from longalign_hf.data.sft_data import prepare_sft_dataset
from longalign_hf.data.synthetic import long_tailed_chat_data
from longalign_hf.tiny import build_byte_tokenizer, build_tiny_model
from longalign_hf.training.packing import pack_stats, plan_packs

# Not the defaults: a card that printed defaults instead of the run's settings would fail.
OPTIONS = ["--pack_planner", "next_fit", "--pack_schedule", "random", "--loss_weighting", "token"]
ARGV = ["--default_num_short", "24", "--default_num_long", "4", "--max_length", "1024", "--max_steps", "3", *OPTIONS]


def card_rows(text: str) -> dict[str, str]:
    """First column -> second column of every two-column Markdown table row in `text`."""
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 2 and not set(cells[1]) <= {"-"}:
            rows[cells[0]] = cells[1]
    return rows


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory):
    """The recipe's embedded default, trained and saved once: (trainer, output folder)."""
    from test_recipe import _recipe

    recipe = _recipe()
    output_dir = tmp_path_factory.mktemp("runs") / "longalign-tiny"
    trainer = recipe.main(*recipe.parse_args([*ARGV, "--output_dir", str(output_dir)]))
    return trainer, output_dir


def test_the_card_parses_and_carries_metadata_versions_and_citation(embedded_run):
    trainer, output_dir = embedded_run
    card = ModelCard.load(output_dir / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert {"longalign", "trl", "sft", "long-context"} <= set(card.data.tags)
    assert card.data.base_model is None and card.data.datasets is None  # built in code, generated data: no Hub ids
    assert card.data.eval_results is None  # no evaluation yet
    assert card.text.lstrip().startswith("# longalign-tiny\n")
    assert "initialised at random in code" in card.text and "no pretrained base model" in card.text
    assert "`embedded long-tailed chat data (24 short + 4 long samples, longalign_hf.data.synthetic)`" in card.text
    for name in ("transformers", "trl", "torch", "datasets", "accelerate"):
        assert f"- {name}: {importlib.metadata.version(name)}\n" in card.text
    assert CITATION.strip() in card.text and "<!-- longalign:evaluation -->" in card.text


def test_the_card_reports_the_settings_the_run_used(embedded_run):
    trainer, output_dir = embedded_run
    rows = card_rows((output_dir / "README.md").read_text(encoding="utf-8"))
    assert rows["batching"] == "`pack`"
    assert rows["loss weighting"].startswith("`token`: every target token counts equally")
    assert rows["pack planner"] == "`next_fit`" and rows["pack schedule"] == "`random`"
    assert rows["max length"] == "1,024" and rows["overflow"] == "`truncate`"
    assert rows["attention"] == f"`{trainer.model.config._attn_implementation}`"
    assert rows["global batch"].startswith(
        "2 packs (1 per device x 2 accumulation steps x 1 data-parallel replica(s))"
    )
    assert rows["optimizer"].startswith(f"{trainer.args.optim.value}, learning rate 0.001, cosine schedule")
    assert rows["seed"] == "42" and rows["precision"] == "fp32"


def test_the_card_reports_the_data_and_packing_the_run_measured(embedded_run):
    trainer, output_dir = embedded_run
    rows = card_rows((output_dir / "README.md").read_text(encoding="utf-8"))
    # An independent reference: the same data tokenized and planned here, without the trainer.
    records = long_tailed_chat_data(24, 4)
    tokenized, _ = prepare_sft_dataset(datasets.Dataset.from_list(records), build_byte_tokenizer(), 1024)
    lengths = tokenized["length"]
    stats = pack_stats(plan_packs(lengths, 1024, strategy="next_fit"), lengths, 1024)
    assert rows["rows read"] == "28" and rows["samples trained"] == f"{len(lengths):,}"
    assert rows["rows dropped (bad row, over max_length, no target token)"] == f"{28 - len(lengths)}"
    assert rows["tokens"] == f"{sum(lengths):,}"
    assert rows["target (assistant) tokens"] == f"{sum(tokenized['num_target_tokens']):,}"
    assert rows["sample length in tokens: min / median / mean / p90 / max"].startswith(f"{min(lengths)} / ")
    assert rows["sample length in tokens: min / median / mean / p90 / max"].endswith(f" / {max(lengths)}")
    assert rows["packs"] == f"{stats['num_packs']}" and rows["samples"] == f"{stats['num_samples']}"
    assert rows["fill (tokens / (packs x max length))"] == f"{stats['fill']:.4f}"
    assert rows["samples per pack: mean / min / max"] == (
        f"{stats['samples_per_pack_mean']:.2f} / {stats['samples_per_pack_min']} / {stats['samples_per_pack_max']}"
    )
    # ... and the packed data set the trainer trained on.
    packed = trainer.train_dataset
    assert stats["fill"] == sum(packed["length"]) / (len(packed) * 1024)


def test_the_card_reports_hardware_and_time(embedded_run):
    trainer, output_dir = embedded_run
    rows = card_rows((output_dir / "README.md").read_text(encoding="utf-8"))
    summary = next(entry for entry in trainer.state.log_history if "train_runtime" in entry)
    assert rows["devices"].startswith("1 x CPU (") and rows["engine"] == "single process"
    assert rows["training time"].endswith(f"({summary['train_runtime']:.1f} s)")
    assert rows["optimizer steps"] == "3 of 3" and trainer.state.global_step == 3
    assert rows["tokens trained (padding excluded)"] == f"{trainer._total_train_tokens:,}"
    assert rows["final training loss (mean over the run)"] == f"{summary['train_loss']:.4f}"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", rows["card written"])


class RecordingHub:
    """Stands in for the Hub client: records the card each upload would send."""

    def __init__(self):
        self.cards = []

    def upload_folder(self, folder_path, **kwargs):
        self.cards.append(ModelCard.load(f"{folder_path}/README.md"))


def test_push_to_hub_uploads_our_card_not_trls(embedded_run, tmp_path, monkeypatch):
    trainer, _ = embedded_run
    hub = RecordingHub()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: hub)
    monkeypatch.setattr(trainer.args, "output_dir", str(tmp_path / "push"))
    monkeypatch.setattr(trainer, "hub_model_id", "someone/longalign-tiny")
    monkeypatch.setattr(trainer.args, "hub_model_id", "someone/longalign-tiny")
    trainer.push_to_hub(dataset_name="someone/long-chat")
    [card] = hub.cards
    assert "## LongAlign settings" in card.text and "## Packing (measured)" in card.text
    assert "## Quick start" not in card.text and "It has been trained using [TRL]" not in card.text
    assert card.data.datasets == ["someone/long-chat"]  # the pushed data set, a Hub id, is in the metadata
    assert card.text.lstrip().startswith("# longalign-tiny\n")


def test_only_a_process_that_saves_writes_the_card(embedded_run, tmp_path, monkeypatch):
    trainer, _ = embedded_run
    monkeypatch.setattr(type(trainer.args), "should_save", property(lambda self: False))
    trainer.save_model(str(tmp_path / "elsewhere"))
    trainer.create_model_card()
    assert not (tmp_path / "elsewhere" / "README.md").exists()
    assert not any(tmp_path.rglob("README.md"))


def test_a_lora_run_is_carded_as_an_adapter_on_its_base(tmp_path):
    from peft import LoraConfig

    tokenizer = build_byte_tokenizer()
    base_dir = tmp_path / "base"
    build_tiny_model(tokenizer, max_position_embeddings=256).save_pretrained(base_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(base_dir)
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a" * i}]}
            for i in range(1, 7)]  # fmt: skip
    args = LongAlignConfig(output_dir=str(tmp_path / "out"), max_length=64, max_steps=1, report_to="none")
    trainer = LongAlignSFTTrainer(
        model, args=args, train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]), dataset_names=["data/chat.jsonl"],
    )  # fmt: skip
    trainer.train()
    trainer.save_model()
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model is None  # a local base is no Hub id
    assert "This is a LORA (r=4, alpha=8) adapter on the local checkpoint `base` (" in card.text  # no path
    assert "Data sets: `chat.jsonl`." in card.text
    assert (tmp_path / "out" / "adapter_config.json").exists()  # PEFT saved the adapter; our card replaced its own
