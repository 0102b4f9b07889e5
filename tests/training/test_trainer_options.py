"""Inherited `SFTConfig` / `SFTTrainer` options: each one is honoured or refused with the reason, never ignored."""

import json

import datasets
import pytest
import torch
from accelerate.parallelism_config import ParallelismConfig
from grad_check import build_dataset

from longalign_hf import LongAlignConfig, LongAlignSFTTrainer
from longalign_hf.tiny import build_tiny_model

ONE_ROW = [{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}]
CHAT = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]


def _config(tmp_path, **options):
    return LongAlignConfig(output_dir=str(tmp_path), max_length=64, use_cpu=True, report_to="none", **options)


def _trainer(tokenizer, args, rows=ONE_ROW, trainer_class=LongAlignSFTTrainer, **kwargs):
    model = build_tiny_model(tokenizer, max_position_embeddings=256)
    return trainer_class(
        model=model, args=args, train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer, **kwargs
    )


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"loss_type": "dft"}, "`loss_type='dft'` is not supported"),
        ({"label_smoothing_factor": 0.1}, "label smoothing needs the full logits"),
        ({"average_tokens_across_devices": False}, "counts samples and tokens over every device"),
        ({"truncation_mode": "keep_end"}, "`truncation_mode='keep_end'` is not supported"),
        ({"packing_strategy": "wrapped"}, "choose the planner with `pack_planner`"),
        ({"completion_only_loss": False}, "pass tokenized `input_ids` with `labels`"),
        ({"dataset_kwargs": {"add_special_tokens": False}}, r"\['add_special_tokens'\] would have no effect"),
        ({"batching": "sort", "train_sampling_strategy": "group_by_length"}, "orders the samples itself"),
    ],
)
def test_options_the_loss_or_data_path_would_ignore_are_refused(tmp_path, options, match):
    with pytest.raises(ValueError, match=match):
        _config(tmp_path, **options)


def test_options_we_honour_are_accepted(tmp_path):
    args = _config(
        tmp_path, batching="naive", train_sampling_strategy="group_by_length", completion_only_loss=True,
        dataset_kwargs={"skip_prepare_dataset": True}, router_aux_loss_coef=0.0,
    )  # fmt: skip
    assert args.train_sampling_strategy == "group_by_length"


@pytest.mark.parametrize("name", ["compute_metrics", "preprocess_logits_for_metrics", "compute_loss_func"])
def test_trainer_arguments_that_need_logits_or_another_loss_are_refused(tokenizer, tmp_path, name):
    with pytest.raises(ValueError, match=f"`{name}` is not supported"):
        _trainer(tokenizer, _config(tmp_path), **{name: lambda *args, **kwargs: {}})


def test_predict_is_refused_with_what_to_use_instead(tokenizer, tmp_path):
    trainer = _trainer(tokenizer, _config(tmp_path))
    with pytest.raises(NotImplementedError, match="never builds the logits"):
        trainer.predict(trainer.train_dataset)


class _ParallelismFromLauncher(LongAlignSFTTrainer):
    """What `accelerate launch` with a parallelism section in its YAML gives: a config on the accelerator only."""

    launcher_config: ParallelismConfig

    def create_accelerator_and_postprocess(self):
        super().create_accelerator_and_postprocess()
        self.accelerator.state.parallelism_config = self.launcher_config


@pytest.mark.parametrize(
    ("sizes", "match"),
    [
        ({"cp_size": 2}, "cannot keep packed samples apart.*sp_size"),
        ({"tp_size": 2}, "tensor parallelism"),
        ({"sp_size": 2, "sp_backend": "deepspeed"}, "needs DeepSpeed"),
    ],
)
def test_parallelism_set_in_the_launcher_config_is_refused_too(tokenizer, tmp_path, sizes, match):
    args = _config(tmp_path)
    assert args.parallelism_config is None  # what the launcher's YAML leaves in the training arguments
    _ParallelismFromLauncher.launcher_config = ParallelismConfig(**sizes)
    try:
        with pytest.raises(ValueError, match=match):
            _trainer(tokenizer, args, trainer_class=_ParallelismFromLauncher)
    finally:
        from accelerate.state import AcceleratorState

        AcceleratorState().parallelism_config = None  # the state is shared by every later Accelerator


def test_the_callers_config_is_not_changed(tokenizer, tmp_path):
    args = _config(tmp_path)
    trainer = _trainer(tokenizer, args, rows=CHAT)
    assert args.dataset_kwargs is None and not args.assistant_only_loss
    assert trainer.args.dataset_kwargs == {"skip_prepare_dataset": True}


def test_data_is_prepared_on_the_main_process_first(tokenizer, tmp_path, monkeypatch):
    # The other processes wait at the barriers until the main one has tokenized (and written the `datasets` cache):
    # the main process of the whole run first, then the main process of each machine (a cache per machine).
    events = []
    original = LongAlignConfig.main_process_first

    def recording(self, *args, **kwargs):
        events.append(f"enter local={kwargs.get('local', True)}")
        return original(self, *args, **kwargs)

    import longalign_hf.training.preparation as preparation_module

    prepare = preparation_module.prepare_sft_dataset

    def recording_prepare(*args, **kwargs):
        events.append("tokenize")
        return prepare(*args, **kwargs)

    monkeypatch.setattr(LongAlignConfig, "main_process_first", recording)
    monkeypatch.setattr(preparation_module, "prepare_sft_dataset", recording_prepare)
    _trainer(tokenizer, _config(tmp_path), rows=CHAT)
    assert events[:3] == ["enter local=False", "enter local=True", "tokenize"]


def test_a_chat_template_file_is_applied_before_tokenizing(tokenizer, tmp_path):
    template = tmp_path / "template.jinja"
    # Same turns as the tiny template, but a reply ends with ">>>" before its end token: the targets must show it.
    template.write_text(
        tokenizer.chat_template.replace(
            "message['content'] + '<|end|>' }}", "'<<<' + message['content'] + '>>><|end|>' }}", 1
        )
    )
    tokenizer = type(tokenizer).from_pretrained(_save(tokenizer, tmp_path))
    trainer = _trainer(tokenizer, _config(tmp_path, batching="naive", chat_template_path=str(template)), rows=CHAT)
    row = trainer.train_dataset[0]
    targets = tokenizer.decode([label for label in row["labels"] if label != -100])
    assert targets == "yo>>><|end|>"


def test_eos_token_is_applied_before_tokenizing(tokenizer, tmp_path):
    tokenizer = type(tokenizer).from_pretrained(_save(tokenizer, tmp_path))
    tokenizer.chat_template = tokenizer.chat_template.replace("'<|end|>'", "eos_token")
    trainer = _trainer(tokenizer, _config(tmp_path, batching="naive", eos_token="<|system|>"), rows=CHAT)
    targets = tokenizer.decode([label for label in trainer.train_dataset[0]["labels"] if label != -100])
    assert targets == "yo<|system|>"


def test_eval_packing_false_keeps_eval_rows_unpacked(tokenizer, tmp_path):
    dataset = build_dataset(tokenizer)
    model = build_tiny_model(tokenizer, max_position_embeddings=256)
    args = LongAlignConfig(
        output_dir=str(tmp_path), max_length=256, use_cpu=True, report_to="none", eval_packing=False
    )
    trainer = LongAlignSFTTrainer(
        model=model, args=args, train_dataset=dataset, eval_dataset=dataset, processing_class=tokenizer
    )
    with_targets = sum(count > 0 for count in dataset["num_target_tokens"])  # the others are dropped
    assert len(trainer.eval_dataset) == with_targets and len(trainer.train_dataset) < with_targets


def test_evaluate_prepares_a_data_set_passed_to_it(tokenizer, tmp_path):
    trainer = _trainer(tokenizer, _config(tmp_path), rows=CHAT)
    metrics = trainer.evaluate(eval_dataset=datasets.Dataset.from_list(CHAT * 3))
    assert torch.isfinite(torch.tensor(metrics["eval_loss"]))


def _save(tokenizer, tmp_path):
    path = tmp_path / "tokenizer"
    tokenizer.save_pretrained(path)
    json.loads((path / "tokenizer_config.json").read_text())
    return str(path)


def test_the_deprecated_checkpointing_name_is_honoured_and_contradictions_refused(tmp_path):
    assert _config(tmp_path).activation_checkpointing is True
    assert _config(tmp_path, gradient_checkpointing=False).activation_checkpointing is False
    assert _config(tmp_path, activation_checkpointing=False).activation_checkpointing is False
    with pytest.raises(ValueError, match="contradicts `activation_checkpointing=True`"):
        _config(tmp_path, gradient_checkpointing=False, activation_checkpointing=True)


def test_formatting_func_is_refused(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="`formatting_func` is not supported"):
        _trainer(tokenizer, _config(tmp_path), formatting_func=lambda row: row["text"])


@pytest.mark.parametrize("batching", ["sort", "pack"])
def test_data_seed_orders_the_batches(tokenizer, tmp_path, batching):
    dataset = build_dataset(tokenizer)
    model = build_tiny_model(tokenizer, max_position_embeddings=256)

    def order(**seeds):
        args = LongAlignConfig(
            output_dir=str(tmp_path), max_length=256, use_cpu=True, report_to="none", batching=batching,
            per_device_train_batch_size=1, **seeds,
        )  # fmt: skip
        trainer = LongAlignSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        return list(trainer._get_train_sampler())

    # One sample (or pack) per step: the shuffled order of the steps is the seed's doing.
    assert order(seed=1, data_seed=5) == order(seed=2, data_seed=5) == order(seed=5)
    assert order(seed=1, data_seed=5) != order(seed=1, data_seed=6)
