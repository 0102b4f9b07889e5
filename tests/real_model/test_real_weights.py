"""The recipe's exactness claims on a real pretrained model: SmolLM2-135M-Instruct (30 layers, 3 query heads per
key/value head, tied embeddings, a 49,152-token vocabulary, ChatML with a default system prompt), on short samples.

Each check compares against an independent reference: token spans found by hand, each sample run alone, plain
full-logit cross-entropy.
"""

import datasets
import pytest
import torch
from grad_check import _GradCapture, _samples_of, reference_loss
from trl.trainer.utils import add_fused_lm_head

from longalign_hf import LongAlignConfig, LongAlignDataCollator, LongAlignSFTTrainer
from longalign_hf.data.chat import IGNORE_INDEX, tokenize_conversation
from longalign_hf.data.sft_data import prepare_sft_dataset
from longalign_hf.training.loss import weighted_nll_sum
from longalign_hf.training.packed_attention import PACKED_SDPA

DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def _chat(*turns, system=None):
    roles = ["user", "assistant"] * len(turns)
    messages = [{"role": role, "content": content} for role, content in zip(roles, turns)]
    return ([{"role": "system", "content": system}] if system else []) + messages


# Short prompts with long answers and long prompts with short answers, so the two weightings differ.
CONVERSATIONS = [
    _chat("Name a primary colour.", "Red is one; blue and yellow are the other two in the painter's traditional set."),
    _chat(
        "Note: the meeting moved from Tuesday to Thursday at ten, in room four, because the projector broke. When is "
        "the meeting?",
        "Thursday at ten.",
    ),
    _chat("Two plus two?", "Four.", "And three plus three?", "Six, since three and three make six."),
    _chat(
        "Say hello in French.", "Bonjour! It is the usual greeting, and salut is the casual one.", system="Be kind."
    ),
    _chat(
        "The library opens at nine on weekdays, at eleven on Saturdays, and stays closed on Sundays and holidays. "
        "When does it open on Saturdays?",
        "At eleven.",
    ),
    _chat("What is the capital of France?", "Paris."),
    _chat("Hi!", "Hello!"),
]


def _target_spans(tokenizer, input_ids, replies):
    """Where each reply's tokens and its <|im_end|> sit in `input_ids`: right after each `<|im_start|>assistant\\n`."""
    header = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
    starts = [i + len(header) for i in range(len(input_ids)) if input_ids[i : i + len(header)] == header]
    assert len(starts) == len(replies)
    spans = []
    for start, reply in zip(starts, replies):
        expected = tokenizer.encode(reply, add_special_tokens=False) + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
        assert input_ids[start : start + len(expected)] == expected, reply
        spans.append((start, start + len(expected)))
    return spans


def test_only_the_replies_and_their_end_token_are_targets(smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    for messages in CONVERSATIONS:
        sample = tokenize_conversation(messages, tokenizer)
        ids, labels = sample["input_ids"], sample["labels"]
        replies = [turn["content"] for turn in messages if turn["role"] == "assistant"]
        expected = [IGNORE_INDEX] * len(ids)
        for start, end in _target_spans(tokenizer, ids, replies):
            expected[start:end] = ids[start:end]
        assert labels == expected
        assert tokenizer.decode([t for t in labels if t != IGNORE_INDEX]) == "".join(r + "<|im_end|>" for r in replies)
        # The system prompt the template inserts on its own (or the one given) is there, and none of it is a target.
        system = DEFAULT_SYSTEM if messages[0]["role"] != "system" else messages[0]["content"]
        prefix = tokenizer.encode(f"<|im_start|>system\n{system}<|im_end|>\n", add_special_tokens=False)
        assert ids[: len(prefix)] == prefix and set(labels[: len(prefix)]) == {IGNORE_INDEX}


def _samples(tokenizer):
    """Three samples of 30-41 tokens, 112 in all."""
    return [tokenize_conversation(CONVERSATIONS[index], tokenizer)["input_ids"] for index in (3, 6, 5)]


def _pack_error(model, samples, **extra):
    """Largest difference between a sample's logits in the pack and its logits alone, over the pack's samples."""
    collator = LongAlignDataCollator(pad_token_id=0, return_loss_bookkeeping=False)
    batch = collator([{"input_ids": ids, "labels": ids} for ids in samples])
    batch.pop("labels")
    with torch.no_grad():
        packed = model(**batch, **extra).logits[0]
        alone = [model(input_ids=torch.tensor([ids]), use_cache=False).logits[0] for ids in samples]
    return (packed - torch.cat(alone)).abs().max().item()


@pytest.mark.parametrize("attention", ["eager", PACKED_SDPA])
def test_packed_samples_logits_equal_their_logits_alone(load_smollm2, smollm2_tokenizer, attention):
    model = load_smollm2()
    model.set_attn_implementation(attention)
    model.config.use_cache = True  # the config default that mixes samples when a cache is made
    model.train()  # as in training (the model has no dropout)
    samples = _samples(smollm2_tokenizer)
    assert sum(map(len, samples)) <= 128
    # Logits of ~10-30: equal to the bit here (0.0 measured, one thread); other kernels may round differently.
    assert _pack_error(model, samples) < 1e-4


def test_the_isolation_check_can_fail_on_the_real_model(load_smollm2, smollm2_tokenizer):
    # Negative control: an all-ones attention mask (a naive collator) lets the samples attend to each other.
    model = load_smollm2("sdpa")
    samples = _samples(smollm2_tokenizer)
    mask = torch.ones(1, sum(map(len, samples)), dtype=torch.long)
    assert _pack_error(model, samples, attention_mask=mask) > 1.0  # 31 measured


def _train_top_layer_only(model):
    """Freeze all but the last decoder layer and the final norm, so that the backward pass stays short."""
    model.requires_grad_(False)
    model.model.layers[-1].requires_grad_(True)
    model.model.norm.requires_grad_(True)


class _StepRecorder(LongAlignSFTTrainer):
    """Records, at the start of every optimizer step, its trainable weights and the samples it trains on."""

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if batches:
            weights = {name: p.detach().clone() for name, p in self.model.named_parameters() if p.requires_grad}
            self.step_weights.append(weights)
            self.step_samples.append([sample for batch in batches for sample in _samples_of(batch)])
        return batches, num_items


# On this model a float32 step's gradient and the float32 per-sample reference each differ from the float64 objective by
# up to ~2e-4 (relative, per tensor; up to 9e-4 measured on a small tensor): TRL's fused head and the reference's
# log-softmax work in float32 over the 49,152-token vocabulary. A wrong weighting or normalization moves the gradient
# by far more, which the test checks too.
GRADIENT_TOLERANCE = 2e-3
OTHER_WEIGHTING = {"sequence": "token", "token": "sequence"}


@pytest.mark.parametrize("loss_weighting", ["sequence", "token"])
def test_each_steps_gradient_equals_the_per_sample_objectives(
    load_smollm2, smollm2_tokenizer, loss_weighting, tmp_path
):
    tokenizer = smollm2_tokenizer
    model = load_smollm2()
    _train_top_layer_only(model)
    records = datasets.Dataset.from_list([{"messages": messages} for messages in CONVERSATIONS])
    dataset, _ = prepare_sft_dataset(records, tokenizer, max_length=128)
    args = LongAlignConfig(
        output_dir=str(tmp_path), batching="pack", loss_weighting=loss_weighting, max_length=128,
        per_device_train_batch_size=1, gradient_accumulation_steps=2, num_train_epochs=1, max_grad_norm=0.0,
        learning_rate=1e-3, lr_scheduler_type="constant", activation_checkpointing=False, bf16=False, use_cpu=True,
        report_to="none", save_strategy="no", logging_steps=1, seed=0,
    )  # fmt: skip
    grads = _GradCapture()
    trainer = _StepRecorder(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[grads]
    )
    trainer.step_weights, trainer.step_samples = [], []
    trainer.train()

    # Several steps of unequal sample and token counts: a per-data-set or per-full-step normalization would show.
    rows = {tuple(ids): index for index, ids in enumerate(dataset["input_ids"])}
    steps = [dataset.select([rows[sample] for sample in samples]) for samples in trainer.step_samples]
    assert len(steps) >= 2 and len({len(step) for step in steps}) > 1
    assert len({sum(step["num_target_tokens"]) for step in steps}) > 1
    names = [name for name, param in model.named_parameters() if param.requires_grad]
    assert len(names) == 10  # the last layer's 9 tensors and the final norm
    trainable = [model.get_parameter(name) for name in names]
    for step, trained in enumerate(steps):
        with torch.no_grad():
            for name, param in zip(names, trainable):
                param.copy_(trainer.step_weights[step][name])
        expected = torch.autograd.grad(reference_loss(model, trained, loss_weighting), trainable)
        applied = [grads.grads[step][name] for name in names]
        for name, got, want in zip(names, applied, expected):
            difference = ((got - want).norm() / want.norm()).item()
            assert difference < GRADIENT_TOLERANCE, f"step {step}, {name}: relative difference {difference:.1e}"
        if step == 0:  # the tolerance tells the weightings apart
            other = torch.autograd.grad(reference_loss(model, trained, OTHER_WEIGHTING[loss_weighting]), trainable)
            gap = torch.cat([(g - o).flatten() for g, o in zip(applied, other)]).norm()
            assert gap / torch.cat([o.flatten() for o in other]).norm() > 10 * GRADIENT_TOLERANCE


def test_the_fused_lm_head_with_tied_embeddings_equals_full_logit_cross_entropy(load_smollm2, smollm2_tokenizer):
    # The vocabulary (49,152) is larger than the kernel's chunk (32,768), so the log-softmax runs over two chunks; the
    # tied matrix gets its gradient both as the input embeddings and as the LM head.
    model = load_smollm2(PACKED_SDPA)  # what the trainer runs packs with on a CPU
    embeddings = model.model.embed_tokens.weight
    assert model.lm_head.weight is embeddings
    model.requires_grad_(False)
    embeddings.requires_grad_(True)
    samples = [tokenize_conversation(messages, smollm2_tokenizer) for messages in CONVERSATIONS[:2]]
    batch = LongAlignDataCollator(pad_token_id=smollm2_tokenizer.pad_token_id)(samples)
    sample_ids, num_targets = batch.pop("loss_sample_ids"), batch.pop("loss_num_targets")
    batch.pop("loss_sample_features")

    # Reference: each sample alone, full logits, log-softmax over the whole vocabulary, in float64.
    model.double()
    reference_log_probs, reference_entropy, per_sample = [], [], []
    for sample in samples:
        logits = model(input_ids=torch.tensor([sample["input_ids"]]), use_cache=False).logits[0, :-1]
        labels = torch.tensor(sample["labels"][1:])
        mask = labels != IGNORE_INDEX
        log_probs = torch.log_softmax(logits[mask], dim=-1)
        reference_log_probs.append(log_probs.gather(-1, labels[mask][:, None])[:, 0].detach())
        reference_entropy.append(-(log_probs.exp() * log_probs).sum(-1).detach())
        per_sample.append(-log_probs.gather(-1, labels[mask][:, None]).sum() / mask.sum())
    reference = torch.stack(per_sample).mean()  # sequence weighting: (1/M) sum_i L_i / N_i
    (reference_grad,) = torch.autograd.grad(reference, embeddings)
    model.float()

    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # as TRL's SFTTrainer adds it
    outputs = model(**batch, fused_lm_head=True)
    mask = outputs.label_mask
    log_probs_error = (outputs.log_probs[mask].double() - torch.cat(reference_log_probs)).abs().max().item()
    entropy_error = (outputs.entropy[mask].double() - torch.cat(reference_entropy)).abs().max().item()
    loss = weighted_nll_sum(outputs.log_probs, mask, sample_ids, num_targets, "sequence") / len(samples)
    (grad,) = torch.autograd.grad(loss, embeddings)
    grad_error = ((grad.double() - reference_grad).norm() / reference_grad.norm()).item()
    # Measured: 1.1e-5 and 1.8e-5 (absolute), 1.1e-7 and 2.8e-6 (relative): float32 against float64.
    assert log_probs_error < 1e-4 and entropy_error < 1e-4
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    assert grad_error < 5e-5
