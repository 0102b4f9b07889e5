"""Tiny sliding-window causal LMs built in code: the attention layouts transformers ships with a window per layer."""

import torch
from transformers import AutoModelForCausalLM, Gemma2Config, Gemma3TextConfig, MistralConfig, Qwen2Config

VOCAB_SIZE = 64
_SIZES = dict(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=8, max_position_embeddings=256)  # fmt: skip

# Which layers have a window: Mistral every layer; Gemma-3 and Gemma-2 local then global (`layer_types`); Qwen2 with
# `use_sliding_window`, the layers from `max_window_layers` on. Gemma-2 also softcaps its attention logits.
SLIDING_WINDOW_LAYERS = {
    "mistral": ["sliding_attention", "sliding_attention"],
    "gemma3": ["sliding_attention", "full_attention"],
    "qwen2": ["full_attention", "sliding_attention"],
    "gemma2": ["sliding_attention", "full_attention"],
}


def sliding_window_config(architecture: str, window: int):
    """The tiny config of `architecture` (a key of `SLIDING_WINDOW_LAYERS`) with a `window`-token sliding window."""
    if architecture == "mistral":
        return MistralConfig(sliding_window=window, **_SIZES)
    if architecture == "qwen2":
        return Qwen2Config(use_sliding_window=True, sliding_window=window, max_window_layers=1, **_SIZES)
    config_class = {"gemma3": Gemma3TextConfig, "gemma2": Gemma2Config}[architecture]
    return config_class(sliding_window=window, layer_types=SLIDING_WINDOW_LAYERS[architecture], **_SIZES)


def build_sliding_window_model(architecture: str, window: int, seed: int = 0, attention: str = "eager"):
    """A randomly initialized tiny model of `architecture` with a `window`-token sliding window, in training mode."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(
        sliding_window_config(architecture, window), attn_implementation=attention
    )
    return model.train()
