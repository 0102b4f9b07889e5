"""Ulysses sequence parallelism (DeepSpeed engine, gloo on CPU) vs. per-sample references, for the SP tests.

Launched as `DS_ACCELERATOR=cpu torchrun --nproc_per_node P tests/sp_check.py CASES.json OUT.pt OUTPUT_DIR`: trains
`LongAlignSFTTrainer` for one epoch on the samples of `grad_check` that have targets (6 packs) under `ParallelismConfig(sp_size=S,
sp_backend="deepspeed")` and DeepSpeed ZeRO, with the real `UlyssesSPAttentionHF` (and the trainer's own train loader).
Rank 0 writes, for every optimizer step, the gradient DeepSpeed applied (after its reductions: read when `engine.step`
starts, or, under ZeRO-1/2, from what its optimizer receives) and the loss the Trainer logged, next to the gradient and
value of the LongAlign objective over the step's samples, each sample run alone, unpacked, through the plain model with
full logits. Then it checks isolation: a packed
row sliced over the SP group, each slice's logits gathered, against every sample's logits alone.

A case gives `sp_size`, `loss_weighting`, `accumulation`, the `zero` settings (DeepSpeed's `zero_optimization`), and
optionally `data_parallel`, `moe` (the tiny Qwen2-MoE, whose router loss the reference adds, `reference_router_loss`),
`gradient_only` (skip evaluation and the isolation check, which do not depend on the ZeRO settings) and `refused`
(only build the trainer, which must refuse the settings: the result is its error message). Several cases run in one
launch (process start-up dominates): between them, DeepSpeed's SP groups, the attention function its wrapper replaced
and transformers' DeepSpeed config are put back, as a fresh process would have them.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from unittest import mock

import torch
import torch.distributed as dist
from accelerate.parallelism_config import ParallelismConfig
from accelerate.utils import DeepSpeedSequenceParallelConfig
from grad_check import (
    MAX_LENGTH,
    _all_ranks,
    _LossCapture,
    _samples_of,
    build_dataset,
    build_moe_model,
    reference_eval,
    reference_loss,
)

from longalign_hf import LongAlignConfig, LongAlignSFTTrainer
from longalign_hf.tiny import build_byte_tokenizer, build_tiny_model
from longalign_hf.training import packed_attention
from longalign_hf.training.distributed import run_then_exit
from longalign_hf.training.sequence_parallel import restore_kv_head_groups


class _SPRecorder(LongAlignSFTTrainer):
    """Records, for every optimizer step, the weights it starts from and the slices it trains on (`record_step`), and
    the gradient DeepSpeed applies (to the trained parameters)."""

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not self.step_grads_captured:
            self._capture_step_gradients(self.model_wrapped)
            self.step_grads_captured = True
        if batches:
            model = self.accelerator.unwrap_model(self.model)
            self.step_weights.append(_full_state_dict(model))
            self.record_step(batches)
        return batches, num_items

    def record_step(self, batches: list[dict]) -> None:
        self.step_slices.append([(b["input_ids"][0].tolist(), b["position_ids"][0].tolist()) for b in batches])

    def _capture_step_gradients(self, engine) -> None:
        from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer
        from deepspeed.utils import safe_get_full_grad

        if isinstance(engine.optimizer, DeepSpeedZeroOptimizer):
            self._capture_partition_gradients(engine)
            return
        step = engine.step

        def step_and_capture(*args, **kwargs):
            # After the backward of the last micro-step, DeepSpeed has reduced the gradients; `step` applies them.
            self.step_grads.append({
                name: safe_get_full_grad(p).detach().clone()
                for name, p in engine.module.named_parameters() if p.requires_grad
            })  # fmt: skip
            return step(*args, **kwargs)

        engine.step = step_and_capture

    def _capture_partition_gradients(self, engine) -> None:
        """ZeRO-1/2: the flat fp32 gradient partition each rank hands its optimizer, gathered and cut back into
        parameters (DeepSpeed's `safe_get_full_grad` mixes parameters up under `round_robin_gradients`)."""
        optimizer = engine.optimizer
        names = {id(p): name for name, p in engine.module.named_parameters()}
        optimizer_step = optimizer._optimizer_step

        def step_and_capture(group_index):
            partition = optimizer.single_partition_of_fp32_groups[group_index].grad
            group = optimizer.real_dp_process_group[group_index]
            parts = [torch.empty_like(partition) for _ in range(dist.get_world_size(group))]
            dist.all_gather(parts, partition.contiguous(), group=group)
            flat = torch.cat(parts)  # the group's parameters, flattened in DeepSpeed's (round-robin) order
            if group_index == 0:
                self.step_grads.append({})
            params = zip(optimizer.round_robin_bit16_groups[group_index],
                         optimizer.round_robin_bit16_offsets[group_index])  # fmt: skip
            for param, offset in params:
                self.step_grads[-1][names[id(param)]] = flat.narrow(0, offset, param.numel()).view_as(param).clone()
            return optimizer_step(group_index)

        optimizer._optimizer_step = step_and_capture


def _full_state_dict(model) -> dict[str, torch.Tensor]:
    """The model's weights, gathered first where ZeRO-3 partitions them (a collective: every rank calls it)."""
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        return {name: p.detach().clone() for name, p in model.named_parameters()}


def _load(model, weights: dict[str, torch.Tensor]) -> None:
    """Load every parameter (buffers such as rotary frequencies stay as built)."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    parameters = {name for name, _ in model.named_parameters()}
    assert not unexpected and not parameters & set(missing), (missing, unexpected)


def _full_rows(slices_by_rank: list[list], sp_size: int) -> list[tuple[list[int], list[int]]]:
    """Every micro-batch row of a step, rebuilt from its SP group's slices (SP groups are consecutive ranks)."""
    rows = []
    for group_start in range(0, len(slices_by_rank), sp_size):
        group = slices_by_rank[group_start : group_start + sp_size]
        for micro in range(len(group[0])):
            ids = [token for rank in group for token in rank[micro][0]]
            positions = [position for rank in group for position in rank[micro][1]]
            rows.append((ids, positions))
    return rows


def _build(case: dict, output_dir: str):
    tokenizer = build_byte_tokenizer()
    if case.get("moe"):
        model = build_moe_model(tokenizer)
    else:
        model = build_tiny_model(tokenizer, seed=0, max_position_embeddings=MAX_LENGTH)
    model.config._attn_implementation = "sdpa"
    # The per-sample reference runs on a copy outside DeepSpeed (ZeRO-3 partitions the trained model's weights).
    reference_model = copy.deepcopy(model)
    dataset = build_dataset(tokenizer)
    args = LongAlignConfig(
        output_dir=output_dir, batching="pack", loss_weighting=case["loss_weighting"], max_length=MAX_LENGTH,
        per_device_train_batch_size=1, gradient_accumulation_steps=case["accumulation"], num_train_epochs=1,
        max_grad_norm=0.0, learning_rate=1e-3, lr_scheduler_type="constant", bf16=False, report_to="none",
        save_strategy="no", logging_steps=1, seed=0,
        deepspeed={
            "zero_optimization": case["zero"],
            "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
            "train_batch_size": "auto", "gradient_clipping": "auto",
        },
        parallelism_config=ParallelismConfig(
            sp_size=case["sp_size"], sp_backend="deepspeed", dp_shard_size=case.get("data_parallel", 1),
            sp_handler=DeepSpeedSequenceParallelConfig(sp_attn_implementation="sdpa"),
        ),
    )  # fmt: skip
    losses = _LossCapture()
    trainer = _SPRecorder(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[losses]
    )
    return tokenizer, dataset, trainer, losses, reference_model


def _isolation(trainer, dataset, sp_size: int) -> dict[str, float]:
    """Largest difference between a packed sample's logits (row sliced over the SP group, through Ulysses) and its
    logits alone; also with the core attention forced to run causal over the whole row (a control that must fail)."""
    from deepspeed.utils import groups

    model = trainer.accelerator.unwrap_model(trainer.model)
    group, sp_rank = groups._get_sequence_parallel_group(), groups._get_sequence_parallel_rank()
    features, total = [], 0
    for row in sorted(dataset, key=lambda row: row["length"]):  # one row of the shortest samples that fit
        if total + row["length"] <= MAX_LENGTH:
            features.append(row)
            total += row["length"]
    assert len(features) >= 3
    batch = trainer._sp_collator(features)
    chunk = batch["input_ids"].shape[1] // sp_size
    part = slice(chunk * sp_rank, chunk * (sp_rank + 1))

    def packed_logits() -> torch.Tensor:
        model.train()  # Ulysses runs in training mode only (accelerate disables it for evaluation)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"][:, part], position_ids=batch["position_ids"][:, part],
                           use_cache=False).logits  # fmt: skip
        slices = [torch.empty_like(logits) for _ in range(sp_size)]
        dist.all_gather(slices, logits.contiguous(), group=group)
        return torch.cat(slices, dim=1)[0]

    def worst(logits: torch.Tensor) -> float:
        model.eval()
        restore_kv_head_groups(model)
        start, error = 0, 0.0
        with torch.no_grad():
            for feature in features:
                ids = torch.tensor([feature["input_ids"]])
                alone = model(input_ids=ids, use_cache=False).logits[0]
                error = max(error, (logits[start : start + ids.shape[1]] - alone).abs().max().item())
                start += ids.shape[1]
        return error

    isolated = worst(packed_logits())
    with mock.patch.object(packed_attention, "_sample_bounds", lambda *args: None):
        mixed = worst(packed_logits())
    return {"isolated": isolated, "causal_over_row": mixed}


def reference_router_loss(model, rows: list[tuple[list[int], list[int]]], sp_size: int) -> torch.Tensor:
    """The router loss of a step as LongAlign defines it under SP, built without the trainer or DeepSpeed: the
    coefficient times the mean, over every SP rank's slice of every row of the step, of the model's load-balancing
    loss over that slice's tokens (what each rank's routers see). A packed sample's router logits are those of the
    sample alone (samples are isolated), so each row's come from its samples (the padding included) run one by one."""
    from transformers.models.qwen2_moe.modeling_qwen2_moe import load_balancing_loss_func

    config = model.config
    losses = []
    for ids, positions in rows:
        row = {"input_ids": torch.tensor([ids]), "position_ids": torch.tensor([positions])}
        per_sample = [
            model(input_ids=torch.tensor([sample]), output_router_logits=True, use_cache=False).router_logits
            for sample in _samples_of(row)
        ]
        per_layer = [torch.cat(layer) for layer in zip(*per_sample)]  # [row tokens, experts] per layer
        chunk = len(ids) // sp_size
        for rank in range(sp_size):
            part = tuple(layer[chunk * rank : chunk * (rank + 1)] for layer in per_layer)
            losses.append(load_balancing_loss_func(part, config.num_experts, config.num_experts_per_tok))
    return config.router_aux_loss_coef * torch.stack(losses).mean()


def run_case(case: dict, output_dir: str) -> dict:
    if case.get("refused"):
        # Settings the trainer must refuse when it is built (before any training), from the config it really gets.
        try:
            _build(case, output_dir)
        except ValueError as error:
            return {"refusal": str(error)}
        return {"refusal": None}
    tokenizer, dataset, trainer, losses, reference_model = _build(case, output_dir)
    trainer.step_weights, trainer.step_slices, trainer.step_grads = [], [], []
    trainer.step_grads_captured = False
    trainer.train()
    result = {"world_size": dist.get_world_size(), "steps": [],
              "core_attention": trainer.model.config._attn_implementation}  # fmt: skip
    model = reference_model.eval()
    if not case.get("gradient_only"):
        # Evaluation runs whole rows, Ulysses off (after training left DeepSpeed's head replication on the modules).
        eval_loss = trainer.evaluate(dataset)["eval_loss"]
        final_weights = _full_state_dict(trainer.accelerator.unwrap_model(trainer.model))
        result["isolation"] = _isolation(trainer, dataset, case["sp_size"])
        if dist.get_rank() == 0:
            _load(model, final_weights)
            result["eval_loss"] = (eval_loss, reference_eval(model, dataset, case["loss_weighting"])["loss"])
    by_rank = _all_ranks(trainer.step_slices)
    if dist.get_rank() != 0:
        return result
    rows = {tuple(ids): index for index, ids in enumerate(dataset["input_ids"])}
    for step in range(len(trainer.step_slices)):
        full_rows = _full_rows([rank[step] for rank in by_rank], case["sp_size"])
        samples = [s for ids, positions in full_rows
                   for s in _samples_of({"input_ids": torch.tensor([ids]), "position_ids": torch.tensor([positions])})]  # fmt: skip
        padding = [s for s in samples if set(s) == {tokenizer.pad_token_id}]
        trained = dataset.select([rows[s] for s in samples if s not in padding])
        _load(model, trainer.step_weights[step])
        model.zero_grad(set_to_none=True)
        reference = reference_loss(model, trained, case["loss_weighting"])
        if case.get("moe"):
            reference = reference + reference_router_loss(model, full_rows, case["sp_size"])
        reference.backward()
        result["steps"].append({
            "grads": trainer.step_grads[step],
            "reference_grads": {name: p.grad.detach().clone() for name, p in model.named_parameters()},
            "loss": losses.losses[step],
            "reference_loss": reference.item(),
            "num_samples": sum(n > 0 for n in trained["num_target_tokens"]),
            "rows": len(full_rows),
        })  # fmt: skip
    return result


def _reset_sequence_parallel() -> None:
    """What `UlyssesSPAttentionHF.register_with_transformers` changed in this process: its SP groups (it refuses to
    build them twice) and the attention function it wrapped (a second wrap would exchange heads twice); and the
    DeepSpeed config transformers keeps (after ZeRO-3, the next case's models would be built partitioned)."""
    import deepspeed.runtime.sequence_parallel.parallel_state_sp as parallel_state
    from accelerate.state import AcceleratorState
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    parallel_state._release_sequence_parallel_groups()
    ALL_ATTENTION_FUNCTIONS[packed_attention.PACKED_SDPA] = packed_attention.packed_sdpa_attention_forward
    AcceleratorState._reset_state()
    unset_hf_deepspeed_config()


if __name__ == "__main__":
    cases_path, output_path, output_dir = sys.argv[1:4]
    with open(cases_path) as handle:
        cases = json.load(handle)

    def main():
        results = []
        for index, case in enumerate(cases):
            if index:
                _reset_sequence_parallel()
            results.append(run_case(case, os.path.join(output_dir, str(index))))
        if dist.get_rank() == 0:
            torch.save(results, output_path)

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    run_then_exit(main)
