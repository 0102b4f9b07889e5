"""LongAlign supervised fine-tuning: `accelerate launch recipes/sft.py [--config recipes/configs/<model>.yaml] [--key value ...]`.

With no arguments it trains the embedded default: a tiny Llama-architecture model (random weights) and a byte-level
tokenizer built in code, on generated long-tailed chat data, on a CPU in a few minutes. Every option of
`LongAlignConfig` (TRL's `SFTConfig` + LongAlign's), TRL's `ModelConfig`, `DatasetMixtureConfig` and the script
arguments below works from a YAML file (`--config`) and from the command line.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from dataclasses import dataclass, field

import datasets
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.trainer_utils import get_last_checkpoint
from trl import (
    DatasetMixtureConfig,
    ModelConfig,
    ScriptArguments,
    TrlParser,
    get_peft_config,
    get_quantization_config,
)

from longalign_hf import LongAlignConfig, LongAlignSFTTrainer
from longalign_hf.command_args import check_can_create, looks_like_a_path, one_line
from longalign_hf.data.sft_data import check_conversations, load_chat_dataset, mix_datasets
from longalign_hf.data.synthetic import long_tailed_chat_data
from longalign_hf.errors import UserInputError
from longalign_hf.tiny import build_byte_tokenizer, build_tiny_model
from longalign_hf.training.attention import choose_attention
from longalign_hf.training.distributed import end_training, run_then_exit, tell_launcher
from longalign_hf.training.preparation import cache_writers_first

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
    """TRL's script arguments plus the generated data: whether a real model trains on it, and its size."""

    generated_data: bool = field(
        default=False,
        metadata={
            "help": "Train --model_name_or_path on the data made in code from the Python documentation "
            "(longalign_hf.data.synthetic, sized by the default_* options), as the embedded default always does."
        },
    )
    default_num_short: int = field(default=240, metadata={"help": "Generated data: short chat samples."})
    default_num_long: int = field(default=40, metadata={"help": "Generated data: long retrieval samples."})
    default_min_long_chars: int = field(
        default=1000, metadata={"help": "Generated data: shortest long sample, in characters (~4.4 per real token)."}
    )
    default_max_long_chars: int = field(default=4000, metadata={"help": "Generated data: longest long sample."})
    default_num_facts: int = field(
        default=1, metadata={"help": "Generated data: facts per long sample, one asked, the others distractors."}
    )


def make_parser() -> TrlParser:
    return TrlParser((LongAlignScriptArguments, LongAlignConfig, ModelConfig, DatasetMixtureConfig))


def parse_args(argv: list[str] | None = None):
    """Parse the command line and `--config`; without a model, apply the embedded default's settings first."""
    argv = sys.argv[1:] if argv is None else argv
    parser = make_parser()
    script_args, training_args, model_args, mixture = parser.parse_args_and_config(argv)
    if model_args.model_name_or_path is None:
        # Command-line values still win: the defaults only replace the unset options.
        defaults = dict(TINY_DEFAULTS)
        if _given(argv, "gradient_checkpointing"):
            defaults.pop("activation_checkpointing")  # the user set checkpointing through its deprecated alias
        parser = make_parser()
        unused = parser.set_defaults_with_config(**defaults)
        if unused:
            raise ValueError(f"embedded default options unknown to this TRL/transformers: {unused}")
        script_args, training_args, model_args, mixture = parser.parse_args_and_config(argv)
    return script_args, training_args, model_args, mixture


def _given(argv: list[str], option: str) -> bool:
    """Whether `option` is set on the command line or in the `--config` YAML."""
    if any(arg == f"--{option}" or arg.startswith(f"--{option}=") for arg in argv):
        return True
    if "--config" in argv[:-1]:
        import yaml

        with open(argv[argv.index("--config") + 1], encoding="utf-8") as handle:
            return option in (yaml.safe_load(handle) or {})
    return False


def check_inputs(training_args: LongAlignConfig) -> None:
    """Refuse, before any model or data loads, the paths that cannot work: an `--output_dir` that cannot be written,
    a `--resume_from_checkpoint` that is no checkpoint, a missing `--chat_template_path` file or folder."""
    check_can_create(training_args.output_dir, "--output_dir")
    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is not None and not os.path.isfile(os.path.join(checkpoint, "trainer_state.json")):
        reason = "no such folder" if not os.path.isdir(checkpoint) else "no trainer_state.json in it"
        last = get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
        raise UserInputError(
            f"--resume_from_checkpoint {checkpoint}: {reason}, so it is not a checkpoint of a run. Pass a "
            "checkpoint-N folder that a run saved (`--save_strategy steps`); "
            + (f"the last one in --output_dir is {last}" if last else "--output_dir holds none")
        )
    template = training_args.chat_template_path
    if template is None:
        return
    if template.endswith((".jinja", ".j2")) and not os.path.isfile(template):
        raise UserInputError(
            f"--chat_template_path {template}: no such file; pass a Jinja template file, or a tokenizer folder or Hub "
            "id whose chat template to use"
        )
    if looks_like_a_path(template) and not os.path.exists(os.path.expanduser(template)):
        raise UserInputError(
            f"--chat_template_path {template}: no such folder; pass a tokenizer folder or Hub id whose chat template "
            "to use, or a .jinja file"
        )


def launcher_sp_size(training_args: LongAlignConfig) -> int:
    """The Ulysses degree the run will have: from the training arguments, else from the accelerate launcher, which
    passes its config file's `parallelism_config` to the processes as environment variables."""
    if training_args.parallelism_config is not None:
        return training_args.parallelism_config.sp_size
    if os.environ.get("ACCELERATE_USE_PARALLELISM_CONFIG", "false").lower() != "true":
        return 1
    return int(os.environ.get("PARALLELISM_CONFIG_SP_SIZE", "1"))


def check_heads_split(config, sp_size: int) -> None:
    """Refuse an `sp_size` that Ulysses cannot split the model's attention heads by (DeepSpeed would refuse it only
    inside `train()`, after the data is prepared): it must divide the query heads, and divide or be a multiple of
    the key/value heads."""
    if sp_size <= 1:
        return
    text = config.get_text_config()
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads

    def splits(size: int) -> bool:
        return heads % size == 0 and (kv_heads % size == 0 or size % kv_heads == 0)

    if not splits(sp_size):
        sizes = ", ".join(str(size) for size in range(2, heads + 1) if splits(size))
        raise UserInputError(
            f"sp_size {sp_size} cannot split the model's {heads} attention heads ({kv_heads} key/value heads) over "
            "the ranks of a sequence-parallel group: Ulysses gives each rank heads / sp_size of them. Set "
            f"`parallelism_config_sp_size` in the accelerate config to one of {sizes or 'none: this model cannot'} "
            "(and the number of processes to a multiple of it)"
        )


def _from_pretrained(load, name: str, flag: str, what: str, fix: str, **kwargs):
    """`load(name, **kwargs)`; what cannot be loaded is said in one line: `flag`, `what` it is, why, and the `fix`."""
    try:
        return load(name, **kwargs)
    except (OSError, ValueError, ImportError) as error:  # no such id or folder, offline, unreadable, unsupported
        missing = looks_like_a_path(name) and not os.path.exists(os.path.expanduser(name))
        reason = "no such folder" if missing else one_line(error)
        raise UserInputError(f"{flag} {name}: cannot load {what} ({reason}); {fix}") from None


def load_tokenizer_and_model(model_args: ModelConfig, training_args: LongAlignConfig):
    """The user's model by Hub id or path, or the embedded tiny one; the attention backend is chosen and logged.

    The model's config is read first: an id that cannot be loaded, or attention heads that the sequence-parallel
    degree cannot split, stop the run before the weights (and the data) load."""
    try:
        attention, reason = choose_attention(model_args.attn_implementation)
    except ValueError as error:  # a backend this machine cannot run
        raise UserInputError(str(error)) from None
    logger.info("Attention backend: %s (%s)", attention, reason)
    quantization = get_quantization_config(model_args)
    sp_size = launcher_sp_size(training_args)
    if model_args.model_name_or_path is None:
        if quantization is not None:
            raise UserInputError(
                "--load_in_4bit / --load_in_8bit quantize a pretrained model: give --model_name_or_path (the embedded "
                "default is built in code, in full precision)"
            )
        tokenizer = build_byte_tokenizer()
        model = build_tiny_model(tokenizer, seed=training_args.seed, max_position_embeddings=training_args.max_length)
        check_heads_split(model.config, sp_size)
        model.config._attn_implementation = attention
        logger.info(
            "No --model_name_or_path: training the embedded tiny Llama (%d parameters)", model.num_parameters()
        )
        return tokenizer, model
    name, flag = model_args.model_name_or_path, "--model_name_or_path"
    hub = {"revision": model_args.model_revision, "trust_remote_code": training_args.trust_remote_code}
    unreachable = (
        "check the Hub id (and --model_revision), your network connection and login (for a gated model), or pass a "
        "local model folder"
    )
    config = _from_pretrained(AutoConfig.from_pretrained, name, flag, "a model config", unreachable, **hub)
    check_heads_split(config, sp_size)
    no_tokenizer = "pass a model folder or Hub id that has its tokenizer files"
    tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, name, flag, "a tokenizer", no_tokenizer, **hub)
    path = training_args.chat_template_path
    if path and path.endswith((".jinja", ".j2")):
        with open(path, encoding="utf-8") as handle:
            tokenizer.chat_template = handle.read()
    elif path:
        fix = "pass a tokenizer folder or Hub id whose chat template to use, or a .jinja file"
        source = _from_pretrained(AutoTokenizer.from_pretrained, path, "--chat_template_path", "a tokenizer", fix)
        tokenizer.chat_template = source.chat_template
    if not tokenizer.chat_template:
        raise UserInputError(f"{name} has no chat template; set --chat_template_path to a tokenizer or .jinja file")
    return tokenizer, _from_pretrained(
        AutoModelForCausalLM.from_pretrained, name, flag, "the model",
        "check --dtype, --attn_implementation and --load_in_4bit/8bit (and that their packages are installed)",
        attn_implementation=attention,
        dtype=model_args.dtype or "auto",
        quantization_config=quantization,
        # A quantized model is placed when loaded: each process on its own GPU.
        device_map={"": training_args.local_process_index} if quantization is not None else None,
        **hub,
        **(training_args.model_init_kwargs or {}),
    )  # fmt: skip


def load_data(
    script_args: LongAlignScriptArguments, mixture: DatasetMixtureConfig, embedded: bool, seed: int, check_rows: bool
):
    """The training data: a mixture (shuffled with `seed`), one data set (Hub id, file or folder), or the embedded
    default's (also with --generated_data). With `check_rows`, a row without a usable conversation stops the run with
    its source and row."""
    if script_args.generated_data and (mixture.datasets or script_args.dataset_name):
        raise UserInputError("--generated_data and a `datasets:` mixture or --dataset_name are both set; use one")
    if mixture.datasets and script_args.dataset_name:
        raise UserInputError(
            "both a `datasets:` mixture and --dataset_name are set; use one (copy the recipe YAML without its "
            "`datasets:` list to train on --dataset_name)"
        )
    if mixture.streaming or script_args.dataset_streaming:
        raise UserInputError("streaming is not supported: packing and sorting plan over the whole data set")
    if mixture.datasets and mixture.test_split_size is not None:
        raise UserInputError(
            "`test_split_size` is not supported; give the evaluation set as --dataset_name's --dataset_test_split"
        )
    if mixture.datasets:
        parts = []
        for d in mixture.datasets:
            part = load_chat_dataset(d.path, name=d.name, split=d.split, data_dir=d.data_dir, data_files=d.data_files)
            part = part if d.columns is None else part.select_columns(d.columns)
            if check_rows:
                check_conversations(part, source=d.path)
            parts.append(part)
        fractions = [d.fraction for d in mixture.datasets]
        return mix_datasets(parts, None if all(f is None for f in fractions) else fractions, seed=seed)
    if script_args.dataset_name:
        dataset = load_chat_dataset(
            script_args.dataset_name, name=script_args.dataset_config, split=script_args.dataset_train_split
        )
        if check_rows:
            check_conversations(dataset, source=script_args.dataset_name)
        return dataset
    if embedded or script_args.generated_data:
        records = long_tailed_chat_data(
            script_args.default_num_short,
            script_args.default_num_long,
            max_chars=script_args.default_max_long_chars,
            min_long_chars=script_args.default_min_long_chars,
            num_facts=script_args.default_num_facts,
        )
        return datasets.Dataset.from_list(records)
    raise UserInputError(
        "no training data: set --dataset_name (Hub id, .jsonl/.json/.parquet file or folder), `datasets:`, or "
        "--generated_data"
    )


def load_eval_data(script_args: LongAlignScriptArguments, mixture: DatasetMixtureConfig, check_rows: bool):
    """The evaluation set (`--dataset_test_split` of `--dataset_name`), when `--eval_strategy` asks for evaluation."""
    if not script_args.dataset_name:
        raise UserInputError(
            "evaluation (--eval_strategy) needs --dataset_name with a --dataset_test_split; a `datasets:` mixture and "
            "the embedded default have no evaluation split"
        )
    dataset = load_chat_dataset(
        script_args.dataset_name, name=script_args.dataset_config, split=script_args.dataset_test_split
    )
    if check_rows:
        check_conversations(dataset, source=f"{script_args.dataset_name} [{script_args.dataset_test_split}]")
    return dataset


def dataset_names(script_args: LongAlignScriptArguments, mixture: DatasetMixtureConfig, embedded: bool) -> list[str]:
    """How the model card names the training data: the mixture's sets, `--dataset_name`, or the embedded default."""
    if mixture.datasets:
        return [d.path for d in mixture.datasets]
    if script_args.dataset_name:
        return [script_args.dataset_name]
    if embedded or script_args.generated_data:
        return [
            f"{'embedded' if embedded else 'generated'} long-tailed chat data ({script_args.default_num_short} short"
            f" + {script_args.default_num_long} long samples, longalign_hf.data.synthetic)"
        ]
    return []


def main(script_args, training_args: LongAlignConfig, model_args: ModelConfig, mixture: DatasetMixtureConfig):
    # Only the main process reports; the others speak up for warnings and errors.
    level = logging.INFO if training_args.process_index == 0 else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level)
    transformers.utils.logging.set_verbosity_warning()
    datasets.utils.logging.set_verbosity(level)
    logging.getLogger("longalign_hf").setLevel(level)
    embedded = model_args.model_name_or_path is None

    check_inputs(training_args)
    tokenizer, model = load_tokenizer_and_model(model_args, training_args)
    if script_args.ignore_bias_buffers:
        # DDP cannot broadcast boolean buffers (e.g. causal masks kept as buffers): leave them out of its sync.
        model._ddp_params_and_buffers_to_ignore = [
            name for name, buffer in model.named_buffers() if buffer.dtype == torch.bool
        ]
    check_rows = training_args.bad_rows == "error"
    seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
    with cache_writers_first(training_args, desc="loading the data"):
        # Downloaded and converted once per `datasets` cache (per machine where the machines share no disk).
        train_dataset = load_data(script_args, mixture, embedded, seed, check_rows)
        evaluating = training_args.eval_strategy != "no"
        eval_dataset = load_eval_data(script_args, mixture, check_rows) if evaluating else None
    try:
        trainer = LongAlignSFTTrainer(
            model=model,
            args=training_args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            peft_config=get_peft_config(model_args),
            dataset_names=dataset_names(script_args, mixture, embedded),
        )
    except ValueError as error:
        # The trainer's refusals (a setting, model, backend or data set it cannot train exactly) are bad input too.
        raise UserInputError(str(error)) from None
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    # Every process takes part (ZeRO-3 and FSDP gather the weights); the ones that write (`should_save`: the first
    # process, or each machine's first with `save_on_each_node`) write the weights, tokenizer and card and say so.
    # With --push_to_hub, `save_model` then uploads the folder, from the first process only.
    trainer.save_model(training_args.output_dir)
    trainer.save_state()  # trainer_state.json: the log history (per-step losses) at full precision, by process 0
    if training_args.should_save:
        print(f"Model saved to {os.path.abspath(training_args.output_dir)}")
    if training_args.push_to_hub and trainer.is_world_process_zero():
        print(f"Model pushed to https://huggingface.co/{trainer.hub_model_id}")
    if embedded and trainer.is_world_process_zero():
        print(
            "That was the embedded tiny default. To train a real model: accelerate launch --config_file "
            "recipes/accelerate/zero3.yaml recipes/sft.py --config recipes/configs/<model>.yaml"
        )
    end_training(trainer)
    return trainer


def run_from_command_line():
    """`main` on the command line's options. Bad input (an unknown option, a refused setting, a path or model that
    cannot be used) prints one line and exits 2, as the `longalign` command does. Under a launcher only the first
    process of each machine prints it (each process meets the same input); the launcher's failure summary gives it
    as every process's reason, with their exit status 2, and the launcher itself exits 1 (`accelerate launch` and
    `torchrun` end with 1 whatever their workers' status)."""
    speaks = os.environ.get("LOCAL_RANK", "0") == "0"
    try:
        # argparse's own errors (a value of the wrong type) print the usage: once, too.
        with contextlib.nullcontext() if speaks else contextlib.redirect_stderr(io.StringIO()):
            try:
                arguments = parse_args()
            except ValueError as error:  # an unknown option or a refused combination: the options alone are wrong
                raise UserInputError(str(error)) from None
        return main(*arguments)
    except UserInputError as error:
        line = f"error: {' '.join(str(error).split())}"
        if speaks:
            print(line, file=sys.stderr)
        tell_launcher(line)  # a launcher's failure summary then gives it as each process's reason, with status 2
        raise SystemExit(2) from None


if __name__ == "__main__":
    # A gloo worker ends inside run_then_exit, with the trainer still referenced: no process-group teardown.
    run_then_exit(run_from_command_line)
