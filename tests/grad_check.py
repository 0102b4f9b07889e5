"""One optimizer step of `LongAlignSFTTrainer` vs. an independent per-sample reference, for the loss tests.

Runs in-process (`run_case`) or under `accelerate launch --num_processes 2 tests/grad_check.py CASES.json OUT.pt`,
where rank 0 writes, for every case, the gradient the trainer applied, the loss it logged and the reference.

The reference never uses the trainer's loss code: every sample is run alone, unpacked, through the plain model forward
(full logits), and `(1/M) sum_i L_i / N_i` or `sum_i L_i / sum_i N_i` is built by hand.
"""

from __future__ import annotations

import copy
import json
import os
import sys

import datasets
import torch
from transformers import TrainerCallback

from longalign_hf import LongAlignConfig, LongAlignSFTTrainer, pack_dataset
from longalign_hf.distributed import exit_if_gloo
from longalign_hf.sft_data import prepare_sft_dataset
from longalign_hf.tiny import build_byte_tokenizer, build_tiny_model

NUM_SAMPLES = 12  # 11 with targets + 1 without
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
    """12 tokenized samples (one without any target token) that `bfd` packs into exactly 6 packs of <= 256 tokens."""
    for seed in range(1000):
        rng = torch.Generator().manual_seed(seed)
        records = [{"messages": _conversation(rng, i)} for i in range(NUM_SAMPLES - 1)]
        tokenized, _ = prepare_sft_dataset(datasets.Dataset.from_list(records), tokenizer, MAX_LENGTH)
        no_target = {"input_ids": tokenized[0]["input_ids"][:40], "labels": [-100] * 40, "truncated": 0}
        no_target.update(length=40, num_target_tokens=0)
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
    def __init__(self):
        self.grads: dict[str, torch.Tensor] = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        for name, param in model.named_parameters():
            if param.grad is not None:
                self.grads[name.removeprefix("module.")] = param.grad.detach().clone()


class _LossCapture(TrainerCallback):
    def __init__(self):
        self.losses: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])


def run_case(case: dict, output_dir: str) -> dict:
    """Train one step on the 12 samples (one global batch) and return the trainer's and the reference's gradients."""
    tokenizer = build_byte_tokenizer()
    model = build_tiny_model(tokenizer, seed=0, max_position_embeddings=MAX_LENGTH)
    model.config._attn_implementation = case.get("attn", "sdpa")
    dataset = build_dataset(tokenizer)
    world = int(os.environ.get("WORLD_SIZE", "1"))  # the process group starts inside the trainer
    rows = NUM_PACKS if case["batching"] == "pack" else NUM_SAMPLES
    accumulation = case["accumulation"]
    args = LongAlignConfig(
        output_dir=output_dir,
        batching=case["batching"],
        loss_weighting=case["loss_weighting"],
        max_length=MAX_LENGTH,
        per_device_train_batch_size=case["slots"] // world if "slots" in case else rows // (world * accumulation),
        gradient_accumulation_steps=accumulation,
        activation_checkpointing=case.get("activation_checkpointing", False),
        max_steps=1,
        max_grad_norm=0.0,
        learning_rate=1e-3,
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
    trainer = LongAlignSFTTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config,
        callbacks=[grads, losses],
    )  # fmt: skip
    initial_state = copy.deepcopy(trainer.model.state_dict())
    trainer.train()
    result = {
        "grads": grads.grads,
        "loss": losses.losses[0] if losses.losses else None,
        "world_size": trainer.accelerator.num_processes,
    }
    if trainer.accelerator.is_main_process:
        # Back to the weights the step started from; the plain forward (no fused head) gives full logits.
        model = trainer.accelerator.unwrap_model(trainer.model)
        model.load_state_dict(initial_state)
        model.zero_grad(set_to_none=True)
        reference = reference_loss(model, dataset, case["loss_weighting"])
        reference.backward()
        result["reference_grads"] = {
            name: param.grad.detach().clone() for name, param in model.named_parameters() if param.grad is not None
        }
        result["reference_loss"] = reference.item()
    return result


if __name__ == "__main__":
    cases_path, output_path, output_dir = sys.argv[1:4]
    with open(cases_path) as handle:
        cases = json.load(handle)
    results = [run_case(case, output_dir) for case in cases]
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        torch.save(results, output_path)
    exit_if_gloo()
