"""Before and after the CPU fine-tune of `recipes/configs/smollm2-135m-cpu.yaml`: a held-out long-context score.

The recipe trains SmolLM2-135M-Instruct (LoRA) on the generated data of `longalign_hf.data.synthetic` (seed 0):
retrieval of one fact among three ("The secret code of NAME is CODE.") hidden in 1k-3k tokens of the Python
documentation, mixed with short chat. This script draws the held-out retrievals with another seed (sized by the same
recipe's `default_*` keys; a held-out question also asked in training is left out) and scores the base model and the
fine-tuned one on them by teacher forcing:

- answer loss: mean nats per answer token (the fact's sentence and the end-of-turn token), and on how many
  retrievals the fine-tuned model's is lower;
- exact match: every answer token is the argmax given the reference before it (equal to greedy decoding's match);
- code match: the 7 digits of the code are the argmax given the sentence up to them: the retrieval alone, whatever
  the phrasing the model prefers.

    longalign model fetch --out models/smollm2-135m-instruct     # once: the model, offline
    accelerate launch recipes/sft.py --config recipes/configs/smollm2-135m-cpu.yaml
    python benchmark/smollm2_finetune.py --model models/smollm2-135m-instruct --trained outputs/smollm2-135m-cpu
    python benchmark/smollm2_finetune.py --quick                 # a smoke test: the tiny model, seconds
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time

import numpy as np
import yaml
from _lengths import print_header, print_table

CONFIG = "recipes/configs/smollm2-135m-cpu.yaml"


def heldout_records(config: dict, count: int, seed: int) -> list[dict]:
    """`count` long retrievals drawn with `seed`, sized as the recipe's generated data, none asking a question that
    the training data asks."""
    from longalign_hf.data.synthetic import long_tailed_chat_data

    sizes = {
        "max_chars": config["default_max_long_chars"],
        "min_long_chars": config["default_min_long_chars"],
        "num_facts": config["default_num_facts"],
    }
    training = long_tailed_chat_data(config["default_num_short"], config["default_num_long"], seed=0, **sizes)
    asked = {_question(record) for record in training}
    drawn = long_tailed_chat_data(0, count, seed=seed, **sizes)
    return [record for record in drawn if _question(record) not in asked]


def _question(record: dict) -> str:
    return record["messages"][-2]["content"].rsplit("\n\n", 1)[-1]


def score(model, tokenizer, records: list[dict]) -> dict[str, float]:
    """Answer loss, exact match and code match of `model` on `records` (see the module's docstring)."""
    import torch

    from longalign_hf.data.chat import tokenize_conversation

    model.eval()
    loss_sum, tokens, exact, code, per_sample = 0.0, 0, 0, 0, []
    with torch.no_grad():
        for record in records:
            sample = tokenize_conversation(record["messages"], tokenizer)
            input_ids, labels = sample["input_ids"], sample["labels"]
            targets = torch.tensor(labels[1:])
            logits = model(input_ids=torch.tensor([input_ids])).logits[0, :-1].float()
            mask = targets != -100
            loss = torch.nn.functional.cross_entropy(logits[mask], targets[mask], reduction="sum").item()
            loss_sum += loss
            per_sample.append(loss / int(mask.sum()))
            tokens += int(mask.sum())
            correct = logits.argmax(-1) == targets
            exact += bool(correct[mask].all())
            code += bool(correct[_code_positions(input_ids, labels, tokenizer, record)].all())
    return {
        "answer_loss": loss_sum / tokens,
        "exact_match": exact / len(records),
        "code_match": code / len(records),
        "answer_loss_per_sample": per_sample,
    }


def _code_positions(input_ids: list[int], labels: list[int], tokenizer, record: dict) -> list[int]:
    """Positions (in the shifted targets) whose label is one of the code's tokens in the answer."""
    code = re.search(r"(\d{7})\.$", record["messages"][-1]["content"]).group(1)
    first = labels.index(next(label for label in labels if label != -100))
    answer_ids = input_ids[first:]
    for start in range(len(answer_ids)):
        for end in range(start + 1, len(answer_ids) + 1):
            if tokenizer.decode(answer_ids[start:end]).strip() == code:
                return [first + position - 1 for position in range(start, end)]
    raise RuntimeError(f"the code {code} is not a run of tokens of the answer {record['messages'][-1]['content']!r}")


def load(model_path: str | None, trained: str | None):
    """The base model (fp32) or, with `trained`, the base with the recipe's LoRA adapter merged in; its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model_path is None:
        from longalign_hf.tiny import build_byte_tokenizer, build_tiny_model

        tokenizer = build_byte_tokenizer()
        return build_tiny_model(tokenizer, seed=0, max_position_embeddings=8192), tokenizer
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation="sdpa")
    if trained is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, trained).merge_and_unload()
    return model, tokenizer


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default="models/smollm2-135m-instruct",
        help="the base model folder (`longalign model fetch --out models/smollm2-135m-instruct` writes it) or Hub id",
    )  # fmt: skip
    parser.add_argument("--trained", help="the recipe's --output_dir (its LoRA adapter); without it only the base")
    parser.add_argument("--config", default=CONFIG, help="the recipe config whose generated data the model trained on")
    parser.add_argument("--heldout", type=int, default=12, help="held-out retrievals drawn")
    parser.add_argument("--seed", type=int, default=1, help="seed of the held-out retrievals (training uses 0)")
    parser.add_argument("--merged-out", help="also save the fine-tuned model, adapter merged, to this folder")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--quick", action="store_true", help="a smoke test: the tiny model, 2 short retrievals")
    parser.add_argument("--out", help="write the scores to this JSON file")
    args = parser.parse_args(argv)
    print_header("benchmark/smollm2_finetune.py", sys.argv[1:] if argv is None else argv)
    import torch

    from longalign_hf.data.chat import tokenize_conversation

    torch.set_num_threads(args.threads)
    with open(args.config, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    if args.quick:
        config.update(default_min_long_chars=400, default_max_long_chars=800, default_num_short=4, default_num_long=4)
    records = heldout_records(config, 2 if args.quick else args.heldout, args.seed)
    path = None if args.quick else args.model
    results = {"heldout": len(records), "models": {}}
    for name, trained in [("base", None), ("fine-tuned", None if args.quick else args.trained)]:
        if name == "fine-tuned" and trained is None and not args.quick:
            continue
        start = time.perf_counter()
        model, tokenizer = load(path, trained)
        if trained is not None and args.merged_out:
            model.save_pretrained(args.merged_out)
            tokenizer.save_pretrained(args.merged_out)
        lengths = [len(tokenize_conversation(record["messages"], tokenizer)["input_ids"]) for record in records]
        results["models"][name] = {**score(model, tokenizer, records), "seconds": time.perf_counter() - start}
    results["tokens"] = {"min": min(lengths), "mean": float(np.mean(lengths)), "max": max(lengths)}
    print(
        f"\nHeld-out retrievals (seed {args.seed}): {len(records)}, {results['tokens']['min']}-"
        f"{results['tokens']['max']} tokens (mean {results['tokens']['mean']:.0f}), one fact asked among"
        f" {config['default_num_facts']}\n"
    )
    print_table(
        ["model", "answer loss", "exact match", "code match", "seconds"],
        [[name, f"{m['answer_loss']:.3f}", f"{m['exact_match']:.2f}", f"{m['code_match']:.2f}", f"{m['seconds']:.0f}"]
         for name, m in results["models"].items()],
    )  # fmt: skip
    if len(results["models"]) == 2:
        pairs = zip(*(m["answer_loss_per_sample"] for m in results["models"].values()))
        lower = sum(after < before for before, after in pairs)
        print(f"\nThe fine-tuned model's answer loss is lower on {lower} of {len(records)} held-out retrievals")
        results["lower_answer_loss"] = lower
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
