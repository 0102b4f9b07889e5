"""Models whose packed samples would see each other whatever the attention backend are refused for packing, before
training: recurrent, linear-attention and short-convolution layers carry a state along the row, and chunked attention
is a mask the packing backends do not build. The trainer also refuses, before training, an attention that computes
something its packing backend would drop (softcapping, sinks)."""

import datasets
import pytest
import torch
from sliding_window_models import VOCAB_SIZE, build_sliding_window_model
from transformers import (
    AutoModelForCausalLM,
    Llama4TextConfig,
    MambaConfig,
    Qwen3NextConfig,
    RwkvConfig,
)

from longalign_hf import LongAlignConfig, LongAlignDataCollator, LongAlignSFTTrainer
from longalign_hf.tiny import build_tiny_model
from longalign_hf.training.checks import check_packable_model
from longalign_hf.training.packed_attention import PACKED_SDPA

_SIZES = dict(vocab_size=VOCAB_SIZE, hidden_size=32, num_hidden_layers=2)  # fmt: skip


def _mamba():
    return AutoModelForCausalLM.from_config(MambaConfig(state_size=4, expand=2, **_SIZES))


def _qwen3_next():
    config = Qwen3NextConfig(
        intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8, linear_num_key_heads=2,
        linear_num_value_heads=2, linear_key_head_dim=8, linear_value_head_dim=8, num_experts=2, num_experts_per_tok=1,
        moe_intermediate_size=16, shared_expert_intermediate_size=16, **_SIZES,
    )  # fmt: skip
    return AutoModelForCausalLM.from_config(config)


def _llama4_chunked():
    config = Llama4TextConfig(
        intermediate_size=64, intermediate_size_mlp=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        num_local_experts=2, attention_chunk_size=8, **_SIZES,
    )  # fmt: skip
    return AutoModelForCausalLM.from_config(config)


def _rwkv():
    return AutoModelForCausalLM.from_config(RwkvConfig(attention_hidden_size=32, intermediate_size=64, **_SIZES))


REFUSED = {
    "mamba": (_mamba, r"MambaForCausalLM has layers of type linear_attention"),
    "qwen3_next": (_qwen3_next, r"layers of type linear_attention"),
    "llama4_chunked": (_llama4_chunked, r"layers of type chunked_attention"),
    "rwkv": (_rwkv, r"recurrent layers \(rwkv\)"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_models_that_mix_tokens_outside_attention_are_refused_for_packing(name):
    build, match = REFUSED[name]
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=match + r".*--batching sort"):
        check_packable_model(build())


def test_a_convolution_along_the_sequence_is_refused_without_layer_types(tokenizer):
    model = build_tiny_model(tokenizer, seed=0)
    check_packable_model(model)
    model.model.layers[1].token_mixer = torch.nn.Conv1d(8, 8, kernel_size=4, groups=8)  # as Mamba's mixers hold
    with pytest.raises(ValueError, match=r"a convolution along the sequence \(layers.1.token_mixer: Conv1d\)"):
        check_packable_model(model)


@pytest.mark.parametrize("architecture", ["mistral", "gemma3", "qwen2", "gemma2"])
def test_attention_only_models_are_packable(tokenizer, architecture):
    check_packable_model(build_sliding_window_model(architecture, 4))
    check_packable_model(build_tiny_model(tokenizer, seed=0))


def test_the_refusal_is_justified_a_packed_mamba_row_mixes_samples():
    """The control: in a packed row, Mamba's second sample differs from the same sample alone (restarting position ids
    do not reset its state), while the first, which has nothing before it, does not."""
    torch.manual_seed(0)
    model = _mamba().eval()
    first, second = list(range(3, 12)), list(range(20, 27))
    batch = LongAlignDataCollator(pad_token_id=0, return_loss_bookkeeping=False)(
        [{"input_ids": ids, "labels": ids} for ids in (first, second)]
    )
    batch.pop("labels")
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"]).logits[0]
        alone = model(input_ids=torch.tensor([second])).logits[0]
        first_alone = model(input_ids=torch.tensor([first])).logits[0]
    assert torch.allclose(packed[: len(first)], first_alone, atol=1e-5)
    assert (packed[len(first) :] - alone).abs().max() > 1e-3


def _dataset():
    return datasets.Dataset.from_list([{"input_ids": list(range(3, 3 + n)), "labels": list(range(3, 3 + n))}
                                       for n in (9, 12, 5)])  # fmt: skip


def test_the_trainer_refuses_packing_a_mamba_but_sorts_it(tokenizer, tmp_path):
    def args(batching):
        return LongAlignConfig(output_dir=str(tmp_path), max_length=32, use_cpu=True, report_to="none",
                               batching=batching, activation_checkpointing=False)  # fmt: skip

    torch.manual_seed(0)
    with pytest.raises(ValueError, match="linear_attention.*--batching sort"):
        LongAlignSFTTrainer(model=_mamba(), args=args("pack"), train_dataset=_dataset(), processing_class=tokenizer)
    trainer = LongAlignSFTTrainer(
        model=_mamba(), args=args("sort"), train_dataset=_dataset(), processing_class=tokenizer
    )
    assert trainer.args.batching == "sort"


def test_the_trainer_refuses_softcapping_on_a_packed_backend_before_training(tokenizer, tmp_path):
    model = build_sliding_window_model("gemma2", 4, seed=1, attention=None)
    model.config._attn_implementation = PACKED_SDPA  # a user's explicit choice of the packed backend
    args = LongAlignConfig(output_dir=str(tmp_path), max_length=32, use_cpu=True, report_to="none", batching="pack")
    with pytest.raises(ValueError, match="Gemma2ForCausalLM uses attention logit softcapping"):
        LongAlignSFTTrainer(model=model, args=args, train_dataset=_dataset(), processing_class=tokenizer)
