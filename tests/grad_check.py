"""One optimizer step of `LongAlignSFTTrainer` vs. an independent per-sample reference, for the loss tests.

Runs in-process (`run_case`) or under `accelerate launch --num_processes 2 tests/grad_check.py CASES.json OUT.pt`,
where rank 0 writes, for every case, the gradient the trainer applied, the loss it logged and the reference.

The reference never uses the trainer's loss code: every sample is run alone, unpacked, through the plain model forward
(full logits), and `(1/M) sum_i L_i / N_i` or `sum_i L_i / sum_i N_i` is built by hand.
"""

from __future__ import annotations

import json
import os
import sys

import datasets
import torch
from transformers import TrainerCallback

from longalign_hf import LongAlignConfig, LongAlignSFTTrainer, pack_dataset
from longalign_hf.data.sft_data import prepare_sft_dataset
from longalign_hf.tiny import build_byte_tokenizer, build_tiny_model
from longalign_hf.training.collator import BOOKKEEPING_KEYS
from longalign_hf.training.distributed import run_then_exit

NUM_SAMPLES = 12  # 11 with targets + 1 without (which the trainer drops)
NUM_PACKS = 6
MAX_LENGTH = 256


def _conversation(rng: torch.Generator, index: int) -> list[dict[str, str]]:
    def text(low, high):
        n = int(torch.randint(low, high, (1,), generator=rng))
        return "".join(chr(97 + int(c)) for c in torch.randint(0, 26, (n,), generator=rng))

    # Prompts and answers of very different lengths, so the two weightings differ.
    if index % 3 == 0:
        return [{"role": "user", "content": text(5, 20)}, {"role": "assistant", "content": text(60, 120)}]
    if index % 3 == 1:
        return [{"role": "user", "content": text(60, 150)}, {"role": "assistant", "content": text(1, 6)}]
    return [
        {"role": "user", "content": text(5, 30)},
        {"role": "assistant", "content": text(5, 30)},
        {"role": "user", "content": text(5, 30)},
        {"role": "assistant", "content": text(10, 40)},
    ]


def build_dataset(tokenizer) -> datasets.Dataset:
    """12 tokenized samples (one without any target token, which the trainer drops) that `bfd` packs into exactly 6
    packs of <= 256 tokens."""
    for seed in range(1000):
        rng = torch.Generator().manual_seed(seed)
        records = [{"messages": _conversation(rng, i)} for i in range(NUM_SAMPLES - 1)]
        tokenized, _ = prepare_sft_dataset(datasets.Dataset.from_list(records), tokenizer, MAX_LENGTH)
        no_target = {**tokenized[0], "input_ids": tokenized[0]["input_ids"][:40], "labels": [-100] * 40}
        no_target.update(truncated=0, length=40, num_target_tokens=0)
        dataset = datasets.concatenate_datasets(
            [tokenized, datasets.Dataset.from_list([no_target]).cast(tokenized.features)]
        )
        if len(pack_dataset(dataset, MAX_LENGTH)) == NUM_PACKS:
            return dataset
    raise RuntimeError("no seed gives 6 packs")


def reference_loss(model, dataset: datasets.Dataset, loss_weighting: str) -> torch.Tensor:
    """The LongAlign objective from each sample alone: plain forward, full logits, summed by hand."""
    per_sample = []
    for row in dataset:
        input_ids = torch.tensor([row["input_ids"]])
        labels = torch.tensor(row["labels"][1:])
        logits = model(input_ids=input_ids, use_cache=False).logits[0, :-1].float()
        mask = labels != -100
        if mask.sum() == 0:
            continue
        log_probs = torch.log_softmax(logits[mask], dim=-1).gather(-1, labels[mask][:, None])
        per_sample.append((-log_probs.sum(), mask.sum()))
    if loss_weighting == "sequence":
        return sum(total / count for total, count in per_sample) / len(per_sample)
    return sum(total for total, _ in per_sample) / sum(count for _, count in per_sample)


class _GradCapture(TrainerCallback):
    """The gradient each optimizer step applies (after DDP's all-reduce, before the optimizer)."""

    def __init__(self):
        self.grads: list[dict[str, torch.Tensor]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append(
            {
                name.removeprefix("module."): p.grad.detach().clone()
                for name, p in model.named_parameters()
                if p.grad is not None
            }
        )


class _LossCapture(TrainerCallback):
    def __init__(self):
        self.losses: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])


def _samples_of(batch: dict) -> list[tuple[int, ...]]:
    """The token ids of every sample in a collated micro-batch: packed rows split where positions restart at 0, padded
    rows cut by their attention mask (no trainer code involved)."""
    if "attention_mask" in batch:
        return [tuple(ids[mask.bool()].tolist()) for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
    ids, positions = batch["input_ids"][0].tolist(), batch["position_ids"][0].tolist()
    starts = [index for index, position in enumerate(positions) if position == 0] + [len(ids)]
    return [tuple(ids[start:end]) for start, end in zip(starts, starts[1:])]


class _StepRecorder(LongAlignSFTTrainer):
    """Records, at the start of every optimizer step, the weights it starts from, the samples it trains on and its
    micro-batches' model inputs."""

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if batches:
            model = self.accelerator.unwrap_model(self.model)
            self.step_weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            self.step_samples.append([sample for batch in batches for sample in _samples_of(batch)])
            self.step_inputs.append([{k: v for k, v in b.items() if k not in BOOKKEEPING_KEYS} for b in batches])
        return batches, num_items


def build_moe_model(tokenizer, router_aux_loss_coef: float = 0.5):
    """A tiny Qwen2-MoE (4 experts, 2 per token) from a config; the router loss coefficient is raised so that the
    auxiliary loss moves the gradient measurably."""
    from transformers import AutoModelForCausalLM, Qwen2MoeConfig

    torch.manual_seed(0)
    config = Qwen2MoeConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
        shared_expert_intermediate_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        num_experts=4, num_experts_per_tok=2, router_aux_loss_coef=router_aux_loss_coef,
        max_position_embeddings=MAX_LENGTH, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    return AutoModelForCausalLM.from_config(config)


def _all_ranks(local: list) -> list[list]:
    """Every rank's list, by rank (one list on a single process)."""
    if not torch.distributed.is_initialized():
        return [local]
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, local)
    return gathered


def _rows_per_micro_step(case: dict, world: int) -> int:
    if "slots" in case:
        return case["slots"]
    if "micro_rows" in case:
        return case["micro_rows"]
    # One optimizer step over the whole data set.
    rows = NUM_PACKS if case["batching"] == "pack" else NUM_SAMPLES
    return rows // case["accumulation"]


def run_case(case: dict, output_dir: str) -> dict:
    """Train one epoch on the 12 samples and return, for every optimizer step, the trainer's and the reference's
    gradient and loss, and the samples (M) and target tokens (N) of the step.

    The reference for step k runs the samples that step trained on (on every process) from the weights it started
    from, each sample alone, and builds the objective by hand with M and N counted over that step only.
    """
    tokenizer = build_byte_tokenizer()
    if case.get("moe"):
        model = build_moe_model(tokenizer)
    else:
        model = build_tiny_model(tokenizer, seed=0, max_position_embeddings=MAX_LENGTH)
    model.config._attn_implementation = case.get("attn", "sdpa")
    dataset = build_dataset(tokenizer)
    world = int(os.environ.get("WORLD_SIZE", "1"))  # the process group starts inside the trainer
    args = LongAlignConfig(
        output_dir=output_dir,
        batching=case["batching"],
        loss_weighting=case["loss_weighting"],
        max_length=MAX_LENGTH,
        per_device_train_batch_size=_rows_per_micro_step(case, world) // world,
        gradient_accumulation_steps=case["accumulation"],
        activation_checkpointing=case.get("activation_checkpointing", False),
        num_train_epochs=1,
        max_grad_norm=0.0,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=0,
    )
    peft_config = None
    if case.get("lora"):
        from peft import LoraConfig

        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    grads, losses = _GradCapture(), _LossCapture()
    trainer = _StepRecorder(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config,
        callbacks=[grads, losses],
    )  # fmt: skip
    trainer.step_weights, trainer.step_samples, trainer.step_inputs = [], [], []
    trainer.train()
    by_rank = _all_ranks(trainer.step_samples)
    steps = [[sample for rank in by_rank for sample in rank[step]] for step in range(len(trainer.step_samples))]
    inputs_by_rank = _all_ranks(trainer.step_inputs) if case.get("moe") else None
    result = {"world_size": trainer.accelerator.num_processes, "steps": []}
    if not trainer.accelerator.is_main_process:
        return result
    rows = {tuple(ids): index for index, ids in enumerate(dataset["input_ids"])}
    model = trainer.accelerator.unwrap_model(trainer.model)
    for step, samples in enumerate(steps):
        trained = dataset.select([rows[sample] for sample in samples])
        model.load_state_dict(trainer.step_weights[step])
        model.zero_grad(set_to_none=True)
        reference = reference_loss(model, trained, case["loss_weighting"])
        if case.get("moe"):
            # TRL's weighting of the router loss: its mean over every micro-batch of every process, times the
            # coefficient (the model's own load-balancing loss on the very inputs the trainer ran).
            micro_batches = [inputs for rank in inputs_by_rank for inputs in rank[step]]
            router_losses = [
                model(**{k: v for k, v in inputs.items() if k != "labels"}, output_router_logits=True).aux_loss
                for inputs in micro_batches
            ]
            reference = reference + model.config.router_aux_loss_coef * torch.stack(router_losses).mean()
        reference.backward()
        result["steps"].append({
            "grads": grads.grads[step],
            "loss": losses.losses[step],
            "reference_grads": {
                name: param.grad.detach().clone() for name, param in model.named_parameters() if param.grad is not None
            },
            "reference_loss": reference.item(),
            "num_samples": sum(n > 0 for n in trained["num_target_tokens"]),
            "num_tokens": sum(trained["num_target_tokens"]),
        })  # fmt: skip
    return result


def reference_eval(model, dataset: datasets.Dataset, loss_weighting: str) -> dict[str, float]:
    """Loss, mean entropy and top-1 accuracy over every target token of `dataset`, each sample alone, full logits."""
    with torch.no_grad():
        loss = reference_loss(model, dataset, loss_weighting).item()
        entropy, correct, tokens = 0.0, 0, 0
        for row in dataset:
            logits = model(input_ids=torch.tensor([row["input_ids"]]), use_cache=False).logits[0, :-1].float()
            labels = torch.tensor(row["labels"][1:])
            mask = labels != -100
            log_probs = torch.log_softmax(logits[mask], dim=-1)
            entropy += -(log_probs.exp() * log_probs).sum().item()
            correct += (logits[mask].argmax(-1) == labels[mask]).sum().item()
            tokens += int(mask.sum())
    return {"loss": loss, "entropy": entropy / tokens, "accuracy": correct / tokens}


def run_eval_case(case: dict, output_dir: str) -> dict:
    """`trainer.evaluate()` over the 12 samples with `eval_batch` rows per process, and the reference at the same
    weights: every sample counted once, however the rows are spread and repeated over the processes."""
    tokenizer = build_byte_tokenizer()
    model = build_tiny_model(tokenizer, seed=0, max_position_embeddings=MAX_LENGTH)
    dataset = build_dataset(tokenizer)
    args = LongAlignConfig(
        output_dir=output_dir, batching=case["batching"], loss_weighting=case["loss_weighting"], max_length=MAX_LENGTH,
        per_device_eval_batch_size=case["eval_batch"], bf16=False, use_cpu=True, report_to="none", seed=0,
    )  # fmt: skip
    trainer = LongAlignSFTTrainer(
        model=model, args=args, train_dataset=dataset, eval_dataset=dataset, processing_class=tokenizer
    )
    metrics = trainer.evaluate()
    result = {"world_size": trainer.accelerator.num_processes, "metrics": metrics}
    if trainer.accelerator.is_main_process:
        model = trainer.accelerator.unwrap_model(trainer.model)
        result["reference"] = reference_eval(model, dataset, case["loss_weighting"])
    return result


if __name__ == "__main__":
    cases_path, output_path, output_dir = sys.argv[1:4]
    with open(cases_path) as handle:
        cases = json.load(handle)

    def main():
        results = [(run_eval_case if "eval_batch" in case else run_case)(case, output_dir) for case in cases]
        if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
            torch.save(results, output_path)

    run_then_exit(main)
