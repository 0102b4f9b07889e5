"""`LongAlignSFTTrainer`: TRL's `SFTTrainer` with LongAlign batching and exact loss weighting on any number of devices."""

from __future__ import annotations

import logging
import time

import datasets
import numpy as np
import torch
from transformers import AutoTokenizer
from trl import SFTTrainer

from .collator import BOOKKEEPING_KEYS, LOSS_NUM_TARGETS, LOSS_SAMPLE_IDS, LongAlignDataCollator
from .config import LongAlignConfig
from .loss import weighted_nll_sum
from .packed_attention import PACKED_SDPA
from .packed_dataset import pack_dataset
from .packing import balanced_pack_order, sample_cost, step_efficiency
from .sampler import SortedBatchSampler
from .sft_data import prepare_sft_dataset

logger = logging.getLogger(__name__)

# Attention backends that keep packed samples apart: eager/sdpa through the block-diagonal mask that transformers
# derives from restarting position ids, FlashAttention through `cu_seq_lens`.
ISOLATING_ATTENTION = ("eager", "sdpa", PACKED_SDPA, "flash_attention_2", "flash_attention_3")


class LongAlignSFTTrainer(SFTTrainer):
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
    tokenized `input_ids` + `labels`. With `batching="pack"` it is packed once, up front.

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
                 eval_dataset=None, processing_class=None, **kwargs):  # fmt: skip
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
        self._check_parallelism(args)
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(name)
        if processing_class.pad_token is None:
            processing_class.pad_token = processing_class.eos_token
        args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
        collator = LongAlignDataCollator(
            pad_token_id=processing_class.pad_token_id,
            padding_free=args.batching == "pack",
            pad_to_multiple_of=args.pad_to_multiple_of,
        )
        train_dataset = self._tokenize(train_dataset, processing_class, args, "train")
        if isinstance(eval_dataset, dict):
            eval_dataset = {
                key: self._tokenize(value, processing_class, args, key) for key, value in eval_dataset.items()
            }
        else:
            eval_dataset = self._tokenize(eval_dataset, processing_class, args, "eval")
        super().__init__(
            model, args=args, data_collator=collator, train_dataset=train_dataset, eval_dataset=eval_dataset,
            processing_class=processing_class, **kwargs,
        )  # fmt: skip
        self._check_attention_isolation()
        if self.model.get_output_embeddings() is None:
            raise ValueError(
                f"{type(self.model).__name__} has no LM head, so the loss has no token log-probabilities to weight. "
                "Load the model with `AutoModelForCausalLM` (not `AutoModel`)."
            )
        if args.batching == "pack":
            # Train packs divide evenly over the devices: accelerate would otherwise repeat packs in the last round
            # (evaluation drops repeated samples itself).
            slots = 1 if args.dataloader_drop_last else args.world_size * args.per_device_train_batch_size
            self.train_dataset = self._pack(self.train_dataset, multiple_of=slots)
            if isinstance(self.eval_dataset, dict):
                self.eval_dataset = {key: self._pack(value) for key, value in self.eval_dataset.items()}
            elif self.eval_dataset is not None:
                self.eval_dataset = self._pack(self.eval_dataset)
        self._step_totals: tuple[torch.Tensor, torch.Tensor] | None = None
        self._throughput_mark: tuple[float, int] | None = None

    # ---- data -------------------------------------------------------------------------------------------------

    @staticmethod
    def _check_parallelism(args: LongAlignConfig) -> None:
        config = getattr(args, "parallelism_config", None)
        if config is not None and (config.tp_size > 1 or config.cp_size > 1 or getattr(config, "sp_size", 1) > 1):
            raise ValueError(
                "LongAlign loss weighting is exact for data parallelism (DDP, DeepSpeed ZeRO, FSDP) only; tensor, "
                "context and sequence parallelism split samples across ranks. Turn them off in the parallelism config."
            )

    @staticmethod
    def _tokenize(dataset, tokenizer, args: LongAlignConfig, split: str):
        if dataset is None:
            return None
        if not isinstance(dataset, datasets.Dataset):
            raise TypeError(
                f"the {split} data set must be a `datasets.Dataset` (streaming is not supported for packing)"
            )
        if "input_ids" in dataset.column_names:
            if "labels" not in dataset.column_names:
                raise ValueError(
                    f"the tokenized {split} data set has `input_ids` but no `labels`; add labels (-100 on non-target "
                    "tokens) or pass `messages` conversations and let the trainer tokenize them"
                )
            if "length" not in dataset.column_names:
                dataset = dataset.map(lambda row: {"length": len(row["input_ids"])}, desc=f"Measuring {split}")
            too_long = [i for i, n in enumerate(dataset["length"]) if args.max_length and n > args.max_length]
            if too_long:
                raise ValueError(
                    f"{len(too_long)} tokenized {split} samples are over max_length={args.max_length} (first: row "
                    f"{too_long[0]}); truncate or drop them, or pass `messages` so the `overflow` policy applies"
                )
            return dataset
        tokenized, _ = prepare_sft_dataset(
            dataset, tokenizer, args.max_length, overflow=args.overflow, bad_rows=args.bad_rows,
            num_proc=args.dataset_num_proc, source=f"{split} data set",
        )  # fmt: skip
        return tokenized

    def _attention_cost_constant(self) -> float:
        if self.args.attention_cost_constant is not None:
            return self.args.attention_cost_constant
        return 6.0 * self.model.config.get_text_config().hidden_size

    def _pack(self, dataset: datasets.Dataset, multiple_of: int = 1) -> datasets.Dataset:
        constant = self._attention_cost_constant()
        packed = pack_dataset(
            dataset, self.args.max_length, strategy=self.args.pack_planner, multiple_of=multiple_of,
            attention_constant=constant,
        )  # fmt: skip
        costs = [float(sample_cost(np.asarray(lengths), constant).sum()) for lengths in packed["seq_lengths"]]
        packed = packed.add_column("cost", costs)
        num_samples = np.asarray(packed["num_samples"])
        devices, per_device = self.args.world_size, self.args.per_device_train_batch_size
        packs_per_step = devices * per_device * self.args.gradient_accumulation_steps
        balance = {
            name: step_efficiency(
                costs, balanced_pack_order(costs, packs_per_step, self.args.seed, balanced), devices, per_device
            )
            for name, balanced in (("balanced", True), ("random", False))
        }
        fill = np.sum(packed["length"]) / (len(packed) * self.args.max_length)
        logger.info(
            "Packing: %d samples in %d packs (%.1f samples/pack, fill %.4f of max_length=%d); %s schedule. Estimated "
            "step balance on %d device(s) (useful / held compute, cost L + L^2/%.0f): balanced %.3f, random %.3f",
            num_samples.sum(), len(packed), num_samples.mean(), fill, self.args.max_length, self.args.pack_schedule,
            devices, constant, balance["balanced"], balance["random"],
        )  # fmt: skip
        return packed

    def _check_attention_isolation(self) -> None:
        if self.args.batching != "pack":
            return
        backend = self.model.config._attn_implementation
        if backend == "sdpa":
            # Same kernels, but attention per sample instead of a block-diagonal mask over the whole pack.
            self.model.set_attn_implementation(PACKED_SDPA)
            logger.info("Packed rows: attention %r -> %r (SDPA per sample, no pack-wide mask)", backend, PACKED_SDPA)
            return
        if backend not in ISOLATING_ATTENTION:
            raise ValueError(
                f"attention backend {backend!r} cannot keep packed samples apart, so they would attend to each other. "
                f"Use one of {', '.join(ISOLATING_ATTENTION)} (`--attn_implementation`), or `--batching sort`."
            )

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["input_ids", "labels", "seq_lengths", "length", "cost"]

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.args.batching == "naive" or (self.args.batching == "pack" and self.args.pack_schedule == "random"):
            return super()._get_train_sampler(dataset)
        keys = dataset["cost"] if self.args.batching == "pack" else dataset["length"]
        return SortedBatchSampler(
            keys,
            batch_size=self.args.per_device_train_batch_size,
            num_replicas=self.args.world_size,
            gradient_accumulation_steps=self.args.gradient_accumulation_steps,
            seed=self.args.seed,
            drop_last=self.args.dataloader_drop_last,
        )

    # ---- loss -------------------------------------------------------------------------------------------------

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        # One device transfer for the whole step, not one sync per micro-batch.
        counts = [batch[LOSS_NUM_TARGETS] for batch in batch_samples]
        num_targets = torch.cat(counts) if counts else torch.zeros(0, dtype=torch.long)
        local = torch.stack([(num_targets > 0).sum(), num_targets.sum()]).to(device, torch.float64)
        totals = self.accelerator.reduce(local, reduction="sum") if self.accelerator.num_processes > 1 else local
        if batch_samples and totals[0] == 0:
            raise ValueError(
                "no sample in this optimizer step has a target token (every label is -100), so there is no loss to "
                "weight. Check the assistant turns of your data and `max_length` (targets may have been truncated)."
            )
        self._step_totals = (totals[0], totals[1])
        if self._throughput_mark is None:
            self._throughput_mark = (time.perf_counter(), self._total_train_tokens)
        return batch_samples, num_items_in_batch

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
        missing = [key for key in BOOKKEEPING_KEYS if key not in inputs]
        if missing:
            raise ValueError(
                f"the batch lacks {', '.join(missing)}: LongAlignSFTTrainer needs LongAlignDataCollator's loss "
                "bookkeeping (`return_loss_bookkeeping=True`)."
            )
        sample_ids, num_targets = inputs.pop(LOSS_SAMPLE_IDS), inputs.pop(LOSS_NUM_TARGETS)
        inputs["use_cache"] = False
        outputs = model(**inputs, fused_lm_head=True)
        loss_sum = weighted_nll_sum(
            outputs.log_probs, outputs.label_mask, sample_ids, num_targets, self.args.loss_weighting
        )
        if self.model.training and self._step_totals is not None:
            num_samples, num_tokens = self._step_totals
            # DDP, FSDP and DeepSpeed average gradients over processes; the global sum needs the factor back.
            scale = self.accelerator.num_processes
        else:
            num_samples, num_tokens, scale = (num_targets > 0).sum(), num_targets.sum(), 1
        denominator = num_samples if self.args.loss_weighting == "sequence" else num_tokens
        loss = loss_sum * scale / denominator.clamp(min=1).to(loss_sum.dtype)
        self._log_token_metrics(outputs, inputs)
        return (loss, outputs) if return_outputs else loss

    def _log_token_metrics(self, outputs, inputs) -> None:
        mode = "train" if self.model.training else "eval"
        gather = self.accelerator.gather_for_metrics
        num_valid = gather(outputs.label_mask.sum()).sum()
        if num_valid > 0:
            self._metrics[mode]["entropy"].append((gather(outputs.entropy.detach().sum()).sum() / num_valid).item())
            self._metrics[mode]["mean_token_accuracy"].append((gather(outputs.is_top1.sum()).sum() / num_valid).item())
        if mode == "train":
            mask = inputs.get("attention_mask")
            local_tokens = mask.sum() if mask is not None else torch.tensor(inputs["input_ids"].numel())
            self._total_train_tokens += gather(local_tokens.to(num_valid.device)).sum().item()
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
