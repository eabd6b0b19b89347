"""Token ids as litgpt makes them: the tokenizer folder's files, its special tokens, and batch encoding.

Every stage that turns text into ids (shards, evaluate, sample, export) goes through these, so
the ids the model is measured and sampled on are the ids it was trained on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from litgpt import Tokenizer

# Files of a pretrained tokenizer directory that litgpt.Tokenizer reads.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "generation_config.json")
# Licence files of a pretrained tokenizer directory: copied with it and shipped in the export, not part of its
# fingerprint (they do not change a token).
LICENCE_FILES = ("MODEL_LICENSE", "LICENSE")

# The trained tokenizer's special tokens; ids 0, 1, 2 in this order.
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")


def encode_batch(tokenizer: Tokenizer, texts: list[str], eos: bool = True) -> list[list[int]]:
    """litgpt.Tokenizer.encode for many texts at once through the backend's batch call.

    Applies exactly litgpt's BOS/EOS rules so shards match what litgpt itself would produce.
    """
    if tokenizer.backend == "huggingface":
        encoded = [e.ids for e in tokenizer.processor.encode_batch(texts, add_special_tokens=False)]
    else:
        encoded = tokenizer.processor.encode(texts)
    return [_apply_special_tokens(tokenizer, ids, eos) for ids in encoded]


def _apply_special_tokens(tokenizer: Tokenizer, ids: list[int], eos: bool) -> list[int]:
    if tokenizer.use_bos:
        if not ids or ids[0] != tokenizer.bos_id:
            ids = [tokenizer.bos_id] + ids
    elif ids and ids[0] == tokenizer.bos_id:
        ids = ids[1:]
    if eos and (not ids or ids[-1] != tokenizer.eos_id):
        ids = ids + [tokenizer.eos_id]
    return ids


def unk_id(tokenizer: Tokenizer) -> int | None:
    if tokenizer.backend == "sentencepiece":
        return tokenizer.processor.unk_id()
    return tokenizer.processor.token_to_id(SPECIAL_TOKENS[0])


def tokenizer_ids(tokenizer: Tokenizer) -> int:
    """How many ids a litgpt.Tokenizer can produce and decode (its largest id + 1)."""
    if tokenizer.backend == "huggingface":
        return tokenizer.processor.get_vocab_size(with_added_tokens=True)
    return tokenizer.vocab_size
