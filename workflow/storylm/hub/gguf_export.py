"""A litgpt model as a GGUF file (model.gguf, float32), the file llama.cpp and its clients load.

Written with the `gguf` package (the one llama.cpp's own converter uses), field by field for this
one model family: the llama architecture, the tokenizer as llama.cpp reads it, and the weights
under llama.cpp's names (the gguf package's own map from Hugging Face names). Two things differ
from the Hugging Face folder:

- llama.cpp rotates interleaved pairs of a head's channels (0 and 1, 2 and 3, ...), where
  transformers and litgpt rotate its two halves (i and i + d/2); the query and key rows of each
  head are reordered so that the same pairs rotate together (interleave_halves).
- The token before a story in training is end-of-text (`</s>`), so that is the model's bos, and
  no bos is added: `tokenizer.ggml.add_bos_token` is false.

The trained byte-level BPE is written as llama.cpp's `gpt2` tokenizer with the `gpt-2`
pre-tokenizer (its pre-tokenizer is GPT-2's regex); a SentencePiece model (ChatGLM3) as the
`llama` tokenizer with its pieces, scores and token types. Rows of the padded embedding past the
tokenizer's ids get placeholder tokens ([PAD<id>]) that no text ever produces.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def interleave_halves(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder each head's rows from rotate-half order (i, i + d/2) to interleaved pairs (2i, 2i + 1)."""
    rows, *rest = weight.shape
    half = rows // heads // 2
    return weight.reshape(heads, 2, half, *rest).transpose(1, 2).reshape(weight.shape)


def gguf_tensors(config, hf_weights: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The Llama-named weights (storylm.hub.hf_model) under llama.cpp's names, as float32 arrays."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.n_layer)
    tensors = {}
    for name, weight in hf_weights.items():
        if name.endswith("q_proj.weight"):
            weight = interleave_halves(weight, config.n_head)
        elif name.endswith("k_proj.weight"):
            weight = interleave_halves(weight, config.n_query_groups)
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise KeyError(f"{name}: no llama.cpp name for this weight")
        tensors[target] = weight.detach().float().contiguous().numpy()
    return tensors


def bpe_vocabulary(tokenizer_json: Path, size: int, special: set[str]) -> tuple[list[str], list[int], list[str]]:
    """(tokens in id order, token types, merges "a b") of a trained byte-level BPE's tokenizer.json."""
    import gguf

    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    vocab = dict(data["model"]["vocab"])
    vocab.update({added["content"]: added["id"] for added in data.get("added_tokens", [])})
    by_id = {index: token for token, index in vocab.items()}
    tokens, types = [], []
    for index in range(size):
        token = by_id.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if token in special else gguf.TokenType.NORMAL)
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in data["model"]["merges"]]
    return tokens, types, merges


def sentencepiece_vocabulary(model_file: Path, size: int) -> tuple[list[str], list[float], list[int]]:
    """(pieces in id order, scores, token types) of a SentencePiece model, padded to `size` ids."""
    import gguf
    from sentencepiece import SentencePieceProcessor

    processor = SentencePieceProcessor(model_file=str(model_file))
    tokens, scores, types = [], [], []
    for index in range(size):
        if index >= processor.vocab_size():
            tokens.append(f"[PAD{index}]")
            scores.append(-1000.0)
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(processor.id_to_piece(index))
        scores.append(processor.get_score(index))
        if processor.is_unknown(index):
            types.append(gguf.TokenType.UNKNOWN)
        elif processor.is_control(index):
            types.append(gguf.TokenType.CONTROL)
        elif processor.is_unused(index):
            types.append(gguf.TokenType.UNUSED)
        elif processor.is_byte(index):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, scores, types


def write_gguf(path: Path, config, hf_weights: dict[str, torch.Tensor], tokenizer, special: dict,
               add_space_prefix: bool | None) -> None:
    """model.gguf at `path`: the model's shape, its tokenizer and its weights in float32.

    special: storylm.hub.hf_tokenizer.special_tokens; add_space_prefix: a SentencePiece model's dummy prefix.
    """
    import gguf

    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_name(config.name or "storylm")
    writer.add_context_length(config.block_size)
    writer.add_embedding_length(config.n_embd)
    writer.add_block_count(config.n_layer)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.n_head)
    writer.add_head_count_kv(config.n_query_groups)
    # A head's width, stated: llama.cpp's default n_embd / n_head is wrong where n_head x head_size != n_embd.
    writer.add_key_length(config.head_size)
    writer.add_value_length(config.head_size)
    writer.add_rope_dimension_count(config.rope_n_elem)
    writer.add_rope_freq_base(float(config.rope_base))
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_vocab_size(config.padded_vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    if not tokenizer.sentencepiece:
        tokens, types, merges = bpe_vocabulary(tokenizer.file, config.padded_vocab_size,
                                               {special["bos_token"], special["eos_token"], special.get("unk_token")})
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt-2")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
    else:
        tokens, scores, types = sentencepiece_vocabulary(tokenizer.file, config.padded_vocab_size)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        if add_space_prefix is not None:
            writer.add_add_space_prefix(add_space_prefix)
    writer.add_bos_token_id(special["bos_token_id"])
    writer.add_eos_token_id(special["eos_token_id"])
    writer.add_pad_token_id(special["pad_token_id"])
    if special.get("unk_token_id") is not None:
        writer.add_unk_token_id(special["unk_token_id"])
    writer.add_add_bos_token(special["add_bos_token"])
    writer.add_add_eos_token(False)

    for name, array in gguf_tensors(config, hf_weights).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
