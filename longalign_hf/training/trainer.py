"""`LongAlignSFTTrainer`: TRL's `SFTTrainer` with LongAlign batching and exact loss weighting on any number of devices."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence

import datasets
import torch
from transformers import AutoTokenizer
from trl import SFTTrainer

from longalign_hf.training.checks import check_parallelism, refuse_unsupported_arguments, set_packing_attention
from longalign_hf.training.collator import (
    BOOKKEEPING_KEYS,
    LOSS_NUM_TARGETS,
    LOSS_SAMPLE_FEATURES,
    LOSS_SAMPLE_IDS,
    LongAlignDataCollator,
)
from longalign_hf.training.config import LongAlignConfig
from longalign_hf.training.deepspeed_checks import check_deepspeed, gradient_divisor
from longalign_hf.training.engines import describe_engine, requested_engine
from longalign_hf.training.loss import ROW_TERMS, row_loss_terms, weighted_nll_sum
from longalign_hf.training.model_card import data_statistics
from longalign_hf.training.packed_dataset import column_array
from longalign_hf.training.preparation import (
    apply_template_settings,
    cache_writers_first,
    pack_with_costs,
    tokenize,
    tokenize_eval,
)
from longalign_hf.training.sampler import SortedBatchSampler
from longalign_hf.training.saving import SavingHooks
from longalign_hf.training.sequence_parallel import (
    LOSS_SAMPLE_STARTS,
    LOSS_SHIFT_NUM_TARGETS,
    SequenceParallelCollator,
    check_sequence_parallel,
    restore_kv_head_groups,
    sequence_parallel_size,
    weighted_nll_sum_per_token,
)
from longalign_hf.training.train_loader import LOSS_REAL_TOKENS, TrainLoaderHooks
from longalign_hf.training.trained_tokens import trained_tokens

logger = logging.getLogger(__name__)


class LongAlignSFTTrainer(TrainLoaderHooks, SavingHooks, SFTTrainer):
    r"""
    [`trl.SFTTrainer`] with LongAlign batching (naive, sorted, packed) and loss weighting, exact on any number of
    devices and gradient-accumulation steps.

    For one optimizer step over the global batch (every process, every accumulation micro-step) of M samples, sample i
    having N_i target tokens and summed token loss L_i, the applied gradient is that of `(1/M) * sum_i L_i / N_i`
    (`loss_weighting="sequence"`) or `sum_i L_i / sum_i N_i` (`"token"`). M and N are counted on the fly from the
    collator's bookkeeping, gathered across processes before the first micro-step; samples without a target token
    count in neither. The loss comes from TRL's chunked log-probabilities (the fused LM head), so the
    `[tokens, vocab]` logits are never materialized.

    `train_dataset` can hold `messages` conversations (tokenized here, assistant tokens only as targets) or already
    tokenized `input_ids` + `labels`. With `batching="pack"` it is packed once, up front. `dataset_names` (Hub ids,
    paths or descriptions of the training data) are named in the model card that `save_model` writes next to the
    weights (`README.md`: the recipe, the data's token statistics, the measured packing, hardware, time, versions).

    Example:
        ```python
        from longalign_hf import LongAlignConfig, LongAlignSFTTrainer

        args = LongAlignConfig(output_dir="out", max_length=65536, batching="pack", loss_weighting="sequence")
        trainer = LongAlignSFTTrainer(model="Qwen/Qwen2.5-7B-Instruct", args=args, train_dataset=dataset)
        trainer.train()
        ```
    """

    # `compute_loss` already divides by the global sample / token count of the optimizer step.
    loss_is_scaled_for_ga = True
    _tag_names = ["trl", "sft", "longalign"]

    def __init__(self, model, args: LongAlignConfig | None = None, data_collator=None, train_dataset=None,
                 eval_dataset=None, processing_class=None, *, dataset_names: Sequence[str] | None = None,
                 **kwargs):  # fmt: skip
        name = model if isinstance(model, str) else model.config._name_or_path
        if args is None:
            args = LongAlignConfig(f"{name.split('/')[-1]}-LongAlign")
        if not isinstance(args, LongAlignConfig):
            raise TypeError(f"LongAlignSFTTrainer needs a LongAlignConfig, got {type(args).__name__}")
        if data_collator is not None:
            raise ValueError(
                "LongAlignSFTTrainer builds its own LongAlignDataCollator (loss weighting needs its per-sample "
                "bookkeeping); do not pass `data_collator`."
            )
        refuse_unsupported_arguments(kwargs)
        check_parallelism(getattr(args, "parallelism_config", None))
        check_deepspeed(args, kwargs.get("optimizers"), kwargs.get("optimizer_cls_and_kwargs"))
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(name, trust_remote_code=args.trust_remote_code)
        model = apply_template_settings(model, processing_class, args)
        if processing_class.pad_token is None:
            processing_class.pad_token = processing_class.eos_token
        # The caller's config stays as given: TRL must skip its own data preparation, but only in our copy.
        args = copy.copy(args)
        args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
        args.assistant_only_loss = False  # TRL's switch for its own preparation; ours always trains assistant tokens
        collator = LongAlignDataCollator(
            pad_token_id=processing_class.convert_tokens_to_ids(args.pad_token or processing_class.pad_token),
            padding_free=args.batching == "pack",
            pad_to_multiple_of=args.pad_to_multiple_of,
        )
        rows = len(train_dataset) if isinstance(train_dataset, datasets.Dataset) else 0
        with cache_writers_first(args, desc="LongAlign data preparation"):
            # Tokenized once per `datasets` cache (the first process of each machine without a shared disk).
            train_dataset = tokenize(train_dataset, processing_class, args, "train")
            eval_dataset = tokenize_eval(eval_dataset, processing_class, args)
        statistics = data_statistics(rows, train_dataset) if train_dataset is not None else None
        super().__init__(
            model, args=args, data_collator=collator, train_dataset=train_dataset, eval_dataset=eval_dataset,
            processing_class=processing_class, **kwargs,
        )  # fmt: skip
        # A parallelism config from the accelerate launcher (YAML or environment) never reaches `args`.
        parallelism = self.accelerator.parallelism_config
        check_parallelism(parallelism)
        self._sp_size = sequence_parallel_size(parallelism)
        self._replicas = self.accelerator.num_processes // self._sp_size  # the SP ranks of a replica share its packs
        self._sp_collator = None
        logger.info("Engine: %s", describe_engine(self.accelerator, self._sp_size))
        if self._sp_size > 1:
            deepspeed_config = (
                self.accelerator.state.deepspeed_plugin.deepspeed_config if self.is_deepspeed_enabled else None
            )
            check_sequence_parallel(args, parallelism, self.accelerator.num_processes, deepspeed_config)
            self._sp_collator = SequenceParallelCollator(collator, args.max_length)
        if args.batching == "pack":
            set_packing_attention(self.model, parallelism, self.accelerator.num_processes, args.max_length)
        if self.model.get_output_embeddings() is None:
            raise ValueError(
                f"{type(self.model).__name__} has no LM head, so the loss has no token log-probabilities to weight. "
                "Load the model with `AutoModelForCausalLM` (not `AutoModel`)."
            )
        self._packing_statistics = None
        with cache_writers_first(args, desc="LongAlign packing"):
            if args.batching == "pack":
                # Train packs divide evenly over the replicas: accelerate would otherwise repeat packs in the last
                # round (evaluation drops repeated rows itself).
                slots = 1 if args.dataloader_drop_last else self._replicas * args.per_device_train_batch_size
                self.train_dataset, self._packing_statistics = self._pack(self.train_dataset, multiple_of=slots)
            self.eval_dataset = self._pack_eval(self.eval_dataset)
        self._step_totals: tuple[torch.Tensor, torch.Tensor] | None = None
        self._throughput_mark: tuple[float, int] | None = None
        self._eval_totals: torch.Tensor | None = None
        self._data_statistics = statistics
        self._dataset_names = list(dataset_names or [])

    def create_accelerator_and_postprocess(self) -> None:
        with requested_engine(self.args):  # FSDP asked for on CPU processes runs as FSDP, not as DDP
            super().create_accelerator_and_postprocess()

    # ---- data -------------------------------------------------------------------------------------------------

    def _packs_eval(self) -> bool:
        return self.args.batching == "pack" if self.args.eval_packing is None else bool(self.args.eval_packing)

    def _pack_eval(self, eval_dataset):
        if isinstance(eval_dataset, dict):
            return {key: self._pack_eval(value) for key, value in eval_dataset.items()}
        if eval_dataset is None or not self._packs_eval() or "seq_lengths" in eval_dataset.column_names:
            return eval_dataset
        return self._pack(eval_dataset)[0]

    def _pack(self, dataset: datasets.Dataset, multiple_of: int = 1) -> tuple[datasets.Dataset, dict]:
        return pack_with_costs(
            dataset, self.args, self._attention_cost_constant(), self._data_seed, self._replicas, multiple_of
        )

    def _attention_cost_constant(self) -> float:
        if self.args.attention_cost_constant is not None:
            return self.args.attention_cost_constant
        return 6.0 * self.model.config.get_text_config().hidden_size

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["input_ids", "labels", "seq_lengths", "length", "cost"]

    @property
    def _data_seed(self) -> int:
        # Like transformers' samplers: `data_seed` when set, else `seed`.
        return self.args.data_seed if self.args.data_seed is not None else self.args.seed

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.args.batching == "naive" or (self.args.batching == "pack" and self.args.pack_schedule == "random"):
            return super()._get_train_sampler(dataset)
        keys = column_array(dataset, "cost" if self.args.batching == "pack" else "length").tolist()
        return SortedBatchSampler(
            keys,
            batch_size=self.args.per_device_train_batch_size,
            num_replicas=self._replicas,
            gradient_accumulation_steps=self.args.gradient_accumulation_steps,
            seed=self._data_seed,
            drop_last=self.args.dataloader_drop_last,
        )

    # ---- loss -------------------------------------------------------------------------------------------------

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        # One device transfer for the whole step, not one sync per micro-batch.
        if self._sp_size > 1:
            # Slices of rows: each sample's start marker, target token and real token sit on exactly one rank.
            local = torch.tensor(
                [
                    sum(int(batch[LOSS_SAMPLE_STARTS].sum()) for batch in batch_samples),
                    sum(int((batch["shift_labels"] != -100).sum()) for batch in batch_samples),
                    sum(batch.pop(LOSS_REAL_TOKENS) for batch in batch_samples),
                ],
                dtype=torch.float64,
                device=device,
            )
        else:
            counts = [batch[LOSS_NUM_TARGETS] for batch in batch_samples]
            num_targets = torch.cat(counts) if counts else torch.zeros(0, dtype=torch.long)
            # Padding (of a padded batch or a packed row) belongs to no sample.
            real_tokens = torch.as_tensor(sum((batch[LOSS_SAMPLE_IDS] >= 0).sum() for batch in batch_samples))
            local = torch.stack([(num_targets > 0).sum(), num_targets.sum(), real_tokens]).to(device, torch.float64)
        totals = self.accelerator.reduce(local, reduction="sum") if self.accelerator.num_processes > 1 else local
        if batch_samples and totals[0] == 0:
            raise ValueError(
                "no sample in this optimizer step has a target token (every label is -100), so there is no loss to "
                "weight. Check the assistant turns of your data and `max_length` (targets may have been truncated)."
            )
        self._step_totals = (totals[0], totals[1])
        if self._throughput_mark is None:
            self._throughput_mark = (time.perf_counter(), self._total_train_tokens)
        self._total_train_tokens += int(totals[2])
        self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return batch_samples, num_items_in_batch

    @property
    def _total_train_tokens(self) -> int:
        # TRL's token count, kept by a callback that saves it in checkpoints and takes it back on resume.
        return trained_tokens(self).tokens

    @_total_train_tokens.setter
    def _total_train_tokens(self, tokens: int) -> None:
        trained_tokens(self).tokens = tokens

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._throughput_mark is not None:
            # Tokens of every process (padding excluded) per second since the last log.
            now, tokens = time.perf_counter(), self._total_train_tokens
            logs["tokens_per_second"] = round(
                (tokens - self._throughput_mark[1]) / (now - self._throughput_mark[0]), 1
            )
            self._throughput_mark = (now, tokens)
        super().log(logs, start_time)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self._sp_size > 1 and self.model.training:
            return self._compute_sequence_parallel_loss(model, inputs, return_outputs)
        missing = [key for key in BOOKKEEPING_KEYS if key not in inputs]
        if missing:
            raise ValueError(
                f"the batch lacks {', '.join(missing)}: LongAlignSFTTrainer needs LongAlignDataCollator's loss "
                "bookkeeping (`return_loss_bookkeeping=True`)."
            )
        sample_ids, num_targets = inputs.pop(LOSS_SAMPLE_IDS), inputs.pop(LOSS_NUM_TARGETS)
        sample_features = inputs.pop(LOSS_SAMPLE_FEATURES)
        outputs = self._fused_forward(model, inputs)
        loss_sum = weighted_nll_sum(
            outputs.log_probs, outputs.label_mask, sample_ids, num_targets, self.args.loss_weighting
        )
        if self.model.training and self._step_totals is not None:
            num_samples, num_tokens = self._step_totals
            # DDP, FSDP and DeepSpeed (the settings `check_deepspeed` accepts) average gradients over processes; the
            # global sum needs the factor back.
            scale = self.accelerator.num_processes
        else:
            num_samples, num_tokens, scale = (num_targets > 0).sum(), num_targets.sum(), 1
        loss = loss_sum * scale / self._denominator(num_samples, num_tokens).to(loss_sum.dtype)
        if self.aux_loss_enabled:
            if self.model.training:
                # As TRL weighs it: the router loss is a per-micro-batch mean that DDP averages over processes, so
                # the step applies its mean over processes and accumulation steps.
                loss = loss + self.router_aux_loss_coef * outputs.aux_loss / self.current_gradient_accumulation_steps
        if self.model.training:
            self._log_token_metrics(outputs)
        else:
            self._add_eval_terms(outputs, sample_ids, num_targets, sample_features)
        return (loss, outputs) if return_outputs else loss

    def _fused_forward(self, model, inputs):
        """The forward through TRL's fused LM head (per-token log-probabilities, no logits), with the router logits
        of MoE models; logs the router loss."""
        inputs["use_cache"] = False
        if self.aux_loss_enabled:
            inputs["output_router_logits"] = True
        outputs = model(**inputs, fused_lm_head=True)
        if self.aux_loss_enabled:
            self._metrics["train" if self.model.training else "eval"]["aux_loss"].append(
                self.accelerator.gather_for_metrics(outputs.aux_loss.detach()).mean().item()
            )
        return outputs

    def _denominator(self, num_samples: torch.Tensor, num_tokens: torch.Tensor) -> torch.Tensor:
        """M (sequence weighting) or N (token weighting), at least 1."""
        return (num_samples if self.args.loss_weighting == "sequence" else num_tokens).clamp(min=1)

    def _compute_sequence_parallel_loss(self, model, inputs, return_outputs):
        """This rank's slice of the step's loss: its tokens' weighted NLL over the step's global M or N, scaled by
        what DeepSpeed divides the gradient summed over all ranks by (`gradient_divisor`)."""
        shift_num_targets = inputs.pop(LOSS_SHIFT_NUM_TARGETS)
        inputs.pop(LOSS_SAMPLE_STARTS)
        outputs = self._fused_forward(model, inputs)
        loss_sum = weighted_nll_sum_per_token(
            outputs.log_probs, outputs.label_mask, shift_num_targets, self.args.loss_weighting
        )
        share = loss_sum / self._denominator(*self._step_totals).to(loss_sum.dtype)
        # Gradient: undo DeepSpeed's division of the summed gradient. Value: the Trainer logs the mean over all
        # processes, so each reports its share times the number of processes (as without SP).
        processes = self.accelerator.num_processes
        divisor = gradient_divisor(self.model_wrapped, processes, self._sp_size)
        gradient, value = share * divisor, share.detach() * processes
        if self.aux_loss_enabled:
            # The step's router loss is the mean of every rank's slice's over processes and accumulation steps: each
            # rank adds 1/processes of its own, times DeepSpeed's divisor (1/sp_size of it under ZeRO 0-2, all of it
            # under ZeRO-3).
            aux = self.router_aux_loss_coef * outputs.aux_loss / self.current_gradient_accumulation_steps
            gradient, value = gradient + aux * divisor / processes, value + aux.detach()
        loss = gradient + (value - gradient).detach()
        self._log_token_metrics(outputs)
        return (loss, outputs) if return_outputs else loss

    def _add_eval_terms(self, outputs, sample_ids, num_targets, sample_features) -> None:
        terms = row_loss_terms(
            -outputs.log_probs * outputs.label_mask, outputs.entropy, outputs.is_top1, outputs.label_mask, sample_ids,
            num_targets, sample_features, int(sample_features.max()) + 1,
        )  # fmt: skip
        # One entry per data set row: on the last batch, `gather_for_metrics` drops the rows that were repeated to
        # give every process a full batch.
        terms = self.accelerator.gather_for_metrics(terms).sum(0)
        self._eval_totals = terms if self._eval_totals is None else self._eval_totals + terms

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # The fused LM head never builds logits, so evaluation returns the loss alone.
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):  # fmt: skip
        """Trainer's loop, with the loss and token metrics replaced by their exact values over the evaluation set:
        `(1/M) sum_i L_i/N_i` or `sum_i L_i / sum_i N_i` over every sample once, not a mean of per-batch means."""
        self._eval_totals = None
        if self._sp_size > 1:
            restore_kv_head_groups(self.accelerator.unwrap_model(self.model))
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self._eval_totals is not None:
            totals = dict(zip(ROW_TERMS, self._eval_totals.tolist()))
            if self.args.loss_weighting == "sequence":
                loss = totals["sequence_sum"] / max(totals["samples"], 1.0)
            else:
                loss = totals["token_sum"] / max(totals["tokens"], 1.0)
            output.metrics[f"{metric_key_prefix}_loss"] = loss
            tokens = max(totals["tokens"], 1.0)
            self._metrics["eval"]["entropy"] = [totals["entropy_sum"] / tokens]
            self._metrics["eval"]["mean_token_accuracy"] = [totals["correct"] / tokens]
        return output

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        # A data set passed here is prepared like the ones given at construction (TRL's preparation is skipped).
        if eval_dataset is not None and not isinstance(eval_dataset, str):
            eval_dataset = self._pack_eval(tokenize_eval(eval_dataset, self.processing_class, self.args))
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    def predict(self, *args, **kwargs):
        raise NotImplementedError(
            "LongAlignSFTTrainer computes the loss from chunked log-probabilities and never builds the logits that "
            "`predict` returns. Use `evaluate()` for the exact loss, `model.generate` for outputs, or `longalign eval`."
        )

    def _log_token_metrics(self, outputs) -> None:
        gather = self.accelerator.gather_for_metrics
        num_valid = gather(outputs.label_mask.sum()).sum()
        if num_valid > 0:
            self._metrics["train"]["entropy"].append((gather(outputs.entropy.detach().sum()).sum() / num_valid).item())
            self._metrics["train"]["mean_token_accuracy"].append(
                (gather(outputs.is_top1.sum()).sum() / num_valid).item()
            )
