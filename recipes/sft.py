"""LongAlign supervised fine-tuning: `accelerate launch recipes/sft.py [--config recipes/configs/<model>.yaml] [--key value ...]`.

With no arguments it trains the embedded default: a tiny Llama-architecture model (random weights) and a byte-level
tokenizer built in code, on generated long-tailed chat data, on a CPU in a few minutes. Every option of
`LongAlignConfig` (TRL's `SFTConfig` + LongAlign's), TRL's `ModelConfig`, `DatasetMixtureConfig` and the script
arguments below works from a YAML file (`--config`) and from the command line.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

import datasets
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, TrlParser, get_peft_config

from longalign_hf import LongAlignConfig, LongAlignSFTTrainer
from longalign_hf.attention import choose_attention
from longalign_hf.distributed import end_training, run_then_exit
from longalign_hf.sft_data import load_chat_dataset, mix_datasets
from longalign_hf.synthetic import long_tailed_chat_data
from longalign_hf.tiny import build_byte_tokenizer, build_tiny_model

logger = logging.getLogger("longalign.sft")

# The embedded default: sized to train on a 2-core CPU in about a minute.
TINY_DEFAULTS = {
    "output_dir": "outputs/longalign-tiny",
    "max_length": 4096,
    "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": 2,
    "num_train_epochs": 1,
    "learning_rate": 1e-3,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.03,
    "logging_steps": 5,
    "save_strategy": "no",
    "bf16": False,
    "activation_checkpointing": False,
    "report_to": "none",
    "seed": 42,
}


@dataclass
class LongAlignScriptArguments(ScriptArguments):
    """TRL's script arguments plus the size of the embedded default data."""

    default_num_short: int = field(default=240, metadata={"help": "Embedded default: short chat samples."})
    default_num_long: int = field(default=40, metadata={"help": "Embedded default: long retrieval samples."})


def make_parser() -> TrlParser:
    return TrlParser((LongAlignScriptArguments, LongAlignConfig, ModelConfig, DatasetMixtureConfig))


def parse_args(argv: list[str] | None = None):
    """Parse the command line and `--config`; without a model, apply the embedded default's settings first."""
    argv = sys.argv[1:] if argv is None else argv
    parser = make_parser()
    script_args, training_args, model_args, mixture = parser.parse_args_and_config(argv)
    if model_args.model_name_or_path is None:
        # Command-line values still win: the defaults only replace the unset options.
        parser = make_parser()
        unused = parser.set_defaults_with_config(**TINY_DEFAULTS)
        if unused:
            raise ValueError(f"embedded default options unknown to this TRL/transformers: {unused}")
        script_args, training_args, model_args, mixture = parser.parse_args_and_config(argv)
    return script_args, training_args, model_args, mixture


def load_tokenizer_and_model(model_args: ModelConfig, training_args: LongAlignConfig):
    """The user's model by Hub id or path, or the embedded tiny one; the attention backend is chosen and logged."""
    attention, reason = choose_attention(model_args.attn_implementation)
    logger.info("Attention backend: %s (%s)", attention, reason)
    if model_args.model_name_or_path is None:
        tokenizer = build_byte_tokenizer()
        model = build_tiny_model(tokenizer, seed=training_args.seed, max_position_embeddings=training_args.max_length)
        model.config._attn_implementation = attention
        logger.info(
            "No --model_name_or_path: training the embedded tiny Llama (%d parameters)", model.num_parameters()
        )
        return tokenizer, model
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
    )
    if training_args.chat_template_path:
        path = training_args.chat_template_path
        if path.endswith((".jinja", ".j2")):
            with open(path, encoding="utf-8") as handle:
                tokenizer.chat_template = handle.read()
        else:
            tokenizer.chat_template = AutoTokenizer.from_pretrained(path).chat_template
    if not tokenizer.chat_template:
        raise ValueError(
            f"{model_args.model_name_or_path} has no chat template; set --chat_template_path to a tokenizer or .jinja"
        )
    model = AutoModelForCausalLM.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=attention,
        dtype=model_args.dtype or "auto",
        **(training_args.model_init_kwargs or {}),
    )
    return tokenizer, model


def load_data(script_args: LongAlignScriptArguments, mixture: DatasetMixtureConfig, embedded: bool, seed: int):
    """The training data: a mixture (shuffled with `seed`), one data set (Hub id, file or folder), or the embedded
    default's."""
    if mixture.datasets and script_args.dataset_name:
        raise ValueError(
            "both a `datasets:` mixture and --dataset_name are set; use one (copy the recipe YAML without its "
            "`datasets:` list to train on --dataset_name)"
        )
    if mixture.datasets and (mixture.streaming or mixture.test_split_size is not None):
        raise ValueError("`streaming` and `test_split_size` are not supported: packing plans over the whole data set")
    if mixture.datasets:
        parts = [
            load_chat_dataset(d.path, name=d.name, split=d.split, data_dir=d.data_dir, data_files=d.data_files)
            for d in mixture.datasets
        ]
        parts = [
            part if d.columns is None else part.select_columns(d.columns) for part, d in zip(parts, mixture.datasets)
        ]
        fractions = [d.fraction for d in mixture.datasets]
        return mix_datasets(parts, None if all(f is None for f in fractions) else fractions, seed=seed)
    if script_args.dataset_name:
        return load_chat_dataset(
            script_args.dataset_name, name=script_args.dataset_config, split=script_args.dataset_train_split
        )
    if embedded:
        records = long_tailed_chat_data(script_args.default_num_short, script_args.default_num_long)
        return datasets.Dataset.from_list(records)
    raise ValueError(
        "no training data: set --dataset_name (Hub id, .jsonl/.json/.parquet file or folder) or `datasets:`"
    )


def main(script_args, training_args: LongAlignConfig, model_args: ModelConfig, mixture: DatasetMixtureConfig):
    # Only the main process reports; the others speak up for warnings and errors.
    level = logging.INFO if training_args.process_index == 0 else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level)
    transformers.utils.logging.set_verbosity_warning()
    datasets.utils.logging.set_verbosity(level)
    logging.getLogger("longalign_hf").setLevel(level)
    embedded = model_args.model_name_or_path is None

    tokenizer, model = load_tokenizer_and_model(model_args, training_args)
    with training_args.main_process_first(desc="loading the data"):
        # The main process downloads and converts first; the others then read the `datasets` cache.
        train_dataset = load_data(script_args, mixture, embedded, training_args.seed)
    trainer = LongAlignSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {os.path.abspath(training_args.output_dir)}")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
        trainer.accelerator.print(f"Model pushed to https://huggingface.co/{trainer.hub_model_id}")
    if embedded:
        trainer.accelerator.print(
            "That was the embedded tiny default. To train a real model: accelerate launch --config_file "
            "recipes/accelerate/zero3.yaml recipes/sft.py --config recipes/configs/<model>.yaml"
        )
    end_training(trainer)
    return trainer


if __name__ == "__main__":
    # A gloo worker ends inside run_then_exit, with the trainer still referenced: no process-group teardown.
    run_then_exit(lambda: main(*parse_args()))
