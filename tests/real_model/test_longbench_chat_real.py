"""`longalign eval longbench-chat` through SmolLM2-135M-Instruct: its real generation, truncation by its tokenizer and
chat template (with the default system prompt), judged by a loopback server; two small cases made here."""

import json
import re

import datasets
import torch
from longbench_chat_source import FEW_SHOTS, write_source
from loopback_server import LoopbackServer
from transformers import AutoModelForCausalLM

from longalign_hf import cli
from longalign_hf.evaluation.longbench_chat.scoring import JUDGE_SYSTEM_PROMPT

FILLER = "The archive keeps letters, maps and ledgers from the harbour office. "
CASES = [
    {
        "idx": 1,
        "query": "What is the passcode?",
        "answer": "The passcode is 4721.",
        "prompt": "The passcode is 4721. " + FILLER * 6 + "\n\nWhat is the passcode?",
    },
    {
        "idx": 2,
        "query": "Which city is the capital of France?",
        "answer": "Paris.",
        "prompt": "A note on geography. " + FILLER * 5 + "\n\nWhich city is the capital of France?",
    },
]
MAX_LENGTH, MAX_NEW_TOKENS = 40, 8


def _judge(request):
    """Rates every answer 7 as the judge; it is never asked to generate."""
    assert request.messages[0] == {"role": "system", "content": JUDGE_SYSTEM_PROMPT}
    return "Partly right. Rating: [[7]]"


def _reference_answers(model_dir, tokenizer):
    """Each prompt cut to its first 20 and last 20 tokens, as one user turn of the chat template, decoded greedily."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    answers = []
    for case in CASES:
        ids = tokenizer(case["prompt"], add_special_tokens=False)["input_ids"]
        assert len(ids) > MAX_LENGTH  # the command has to cut it
        cut = tokenizer.decode(ids[: MAX_LENGTH // 2] + ids[-(MAX_LENGTH - MAX_LENGTH // 2) :])
        assert cut.endswith(case["query"])  # the question at the end survives
        messages = [{"role": "user", "content": cut}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
        inputs = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        answers.append(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip())
    return answers


def test_the_real_model_answers_through_its_template_and_truncation(
    smollm2_dir, smollm2_tokenizer, tmp_path, monkeypatch
):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    source = write_source(tmp_path / "source", cases=CASES, few_shots=FEW_SHOTS[: len(CASES)])
    dataset = tmp_path / "longbench_chat"
    assert cli.main(["data", "build", "longbench-chat", "--source", str(source), "--out", str(dataset)]) == 0
    out = tmp_path / "eval"
    with LoopbackServer(_judge) as server:
        argv = ["eval", "longbench-chat", "--model", str(smollm2_dir), "--dataset", str(dataset), "--no-model-card"]
        argv += ["--max-length", str(MAX_LENGTH), "--max-new-tokens", str(MAX_NEW_TOKENS), "--temperature", "0"]
        argv += ["--judge-model", "loopback-judge", "--judge-base-url", server.base_url, "--output-dir", str(out)]
        assert cli.main(argv) == 0
        judged = [re.search(r"\[Answer\]\n(.*)\nRating: $", r.user_content, re.S).group(1) for r in server.requests]

    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    answers = [line["prediction"] for line in sorted(predictions, key=lambda line: line["idx"])]
    assert answers == _reference_answers(smollm2_dir, smollm2_tokenizer)
    assert all(answers)  # the model said something
    assert sorted(judged) == sorted(" ".join(answer.split("\n")) for answer in answers for _ in range(2))
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["score"] == 7.0 and results["num_cases"] == 2 and results["num_failed"] == 0
    assert results["generation"]["max_length"] == MAX_LENGTH and results["generation"]["temperature"] == 0.0
    assert "model-index" not in (smollm2_dir / "README.md").read_text(encoding="utf-8")  # the cache is left alone
