"""A tiny model and a byte-level tokenizer built in code: the embedded default, tests and benchmarks use them.

Nothing here downloads anything. The tokenizer maps every UTF-8 byte to one token (so token counts equal byte
counts), adds the chat special tokens, and carries a chat template whose assistant turns end with `<|end|>`.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel, PreTrainedTokenizerFast, Qwen2Config

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]

# Every turn is "<|role|>\n" + content + "<|end|>\n". The assistant's content and its "<|end|>" are the targets.
# `{% generation %}` marks them for `return_assistant_tokens_mask`, like the templates TRL documents.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ message['content'] + '<|end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def build_byte_tokenizer(model_max_length: int = 1_000_000) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 byte tokens + chat special tokens) with a chat template, built offline."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|bos|>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
        additional_special_tokens=SPECIAL_TOKENS[3:],
        model_max_length=model_max_length,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_config(
    tokenizer: PreTrainedTokenizerFast,
    architecture: str = "llama",
    hidden_size: int = 64,
    num_layers: int = 2,
    max_position_embeddings: int = 8192,
):
    """Config of a tiny causal LM (Llama or Qwen2 architecture) sized for a CPU."""
    config_class = {"llama": LlamaConfig, "qwen2": Qwen2Config}[architecture]
    return config_class(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        rope_theta=10_000.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast, architecture: str = "llama", seed: int = 0, **config_kwargs
) -> PreTrainedModel:
    """A randomly initialised tiny causal LM for `tokenizer` (deterministic for a given seed)."""
    import torch

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(tokenizer, architecture, **config_kwargs))
