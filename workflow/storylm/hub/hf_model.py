"""A litgpt model as a Hugging Face causal LM class every client reads: its config.json and its weights.

LlamaForCausalLM when a head's width times the heads is the hidden size (the default shape);
MistralForCausalLM otherwise (microstories: 6 heads x 48 = 288 channels, hidden size 512): the
same architecture and tensor names (sliding_window null), and the one class whose head_dim
transformers 4 and 5 and ctranslate2 all read (transformers 5's LlamaConfig refuses a hidden size
that is no multiple of the heads; ctranslate2's Llama loader drops head_dim).
"""

from __future__ import annotations

import torch

from storylm.io.entry import StageError

# litgpt config keys whose value LlamaForCausalLM has no way to express otherwise: key -> (the
# value Llama needs, what Llama does instead). Keys outside this table map onto LlamaConfig fields.
LLAMA_NEEDS = {
    "mlp_class_name": ("LLaMAMLP", "Llama's MLP is the gated SiLU MLP (gate_proj, up_proj, down_proj)"),
    "norm_class_name": ("RMSNorm", "Llama normalizes with RMSNorm only"),
    "parallel_residual": (False, "Llama adds attention and MLP one after the other"),
    "shared_attention_norm": (False, "Llama has a norm before attention and another before the MLP"),
    "norm_1": (True, "Llama has a norm before attention"),
    "norm_2": (True, "Llama has a norm before the MLP"),
    "post_attention_norm": (False, "Llama has no norm after attention"),
    "post_mlp_norm": (False, "Llama has no norm after the MLP"),
    "norm_qk": (False, "Llama does not normalize queries and keys"),
    # LlamaConfig has attention_bias and mlp_bias, but litgpt's Llama conversion (copy_weights_llama)
    # has no names for bias weights: it fails with a KeyError on the first one.
    "bias": (False, "litgpt's Llama conversion (copy_weights_llama) names no bias weights"),
    "attn_bias": (False, "litgpt's Llama conversion (copy_weights_llama) names no bias weights"),
    "lm_head_bias": (False, "Llama's lm_head has no bias"),
    "rotary_percentage": (1.0, "Llama rotates every channel of a head (no partial rotary embedding)"),
    "rope_condense_ratio": (1, "the export writes no rope_scaling"),
    "rope_adjustments": (None, "the export writes no rope_scaling"),
    "rope_interleave": (False, "Llama rotates the two halves of a head, not interleaved pairs"),
    "rope_local_base_freq": (None, "Llama has one rope base for every layer"),
    "scale_embeddings": (False, "Llama does not scale the embeddings by sqrt(n_embd)"),
    "attention_logit_softcapping": (None, "Llama has no logit softcapping"),
    "final_logit_softcapping": (None, "Llama has no logit softcapping"),
    "sliding_window_size": (None, "LlamaForCausalLM attends to the whole context"),
    "latent_attention": (None, "Llama has no latent attention"),
    "n_expert": (0, "Llama has no mixture of experts"),
}


def plain_heads(config) -> bool:
    """True when the heads exactly fill the hidden size (n_head x head_size = n_embd)."""
    return config.n_head * config.head_size == config.n_embd


def hf_class(config) -> str:
    return "LlamaForCausalLM" if plain_heads(config) else "MistralForCausalLM"


def check_expressible(config) -> None:
    """Stop with the model_config key of anything Llama (or Mistral) cannot express."""
    name = hf_class(config)
    for key, (needed, why) in LLAMA_NEEDS.items():
        value = getattr(config, key)
        if value != needed and not (needed is None and not value):
            raise StageError(f"model_config.{key}: {value!r} cannot be expressed as {name}"
                             f" (it needs {needed!r}: {why})")
    if config.attention_scores_scalar not in (None, config.head_size):
        raise StageError(f"model_config.attention_scores_scalar: {config.attention_scores_scalar} cannot be"
                         f" expressed as {name} (it scales attention by 1/sqrt(head_size {config.head_size}))")


def hf_config(config, tied: bool, dtype: torch.dtype, special: dict):
    """The transformers config of the model: LlamaConfig, or MistralConfig for a head width that does not
    divide the hidden size."""
    shape = dict(
        # The embedding and the head have padded_vocab_size rows; ids past the tokenizer's are never produced.
        vocab_size=config.padded_vocab_size,
        hidden_size=config.n_embd,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        num_key_value_heads=config.n_query_groups,
        # Stated always: transformers' default n_embd // n_head is wrong where n_head x head_size != n_embd.
        head_dim=config.head_size,
        hidden_act="silu",
        max_position_embeddings=config.block_size,
        rms_norm_eps=config.norm_eps,
        rope_theta=float(config.rope_base),
        tie_word_embeddings=tied,
        dtype=dtype,
        **special,
    )
    if plain_heads(config):
        from transformers import LlamaConfig

        return LlamaConfig(architectures=["LlamaForCausalLM"], attention_bias=False, mlp_bias=False, **shape)
    from transformers import MistralConfig

    return MistralConfig(architectures=["MistralForCausalLM"], sliding_window=None, **shape)


def hf_weights(config, state: dict[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    """litgpt's weights under Llama's names, through litgpt's own conversion code."""
    from litgpt.scripts.convert_lit_checkpoint import copy_weights_llama

    weights: dict[str, torch.Tensor] = {}
    # untie_weights=True leaves lm_head.weight out: with tie_word_embeddings transformers ties it to the
    # embedding, as litgpt did.
    copy_weights_llama(config, weights, state, untie_weights=tied)
    # safetensors stores each tensor on its own: the q/k/v views of one qkv matrix become copies.
    return {name: tensor.detach().contiguous().clone() for name, tensor in weights.items()}
