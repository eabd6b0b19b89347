"""The run's tokenizer (storylm.model.tokens.StoryTokenizer) as a tokenizer class built into transformers.

A trained byte-level BPE (tokenizer.json) becomes PreTrainedTokenizerFast; a SentencePiece model
(ChatGLM3's tokenizer.model) becomes LlamaTokenizerFast with SentencePiece's own (legacy) rules.
"""

from __future__ import annotations

import json
from pathlib import Path

from storylm.io.entry import read_json, write_json
from storylm.model.tokens import StoryTokenizer


def special_tokens(tokenizer: StoryTokenizer) -> dict:
    """The special tokens of the export, ids and strings.

    bos is the token that comes before a story in training: end-of-text (`</s>`, the end of the
    story before it) where litgpt adds no bos, as for both tokenizer kinds here; so a client that
    puts bos before a text (lm-eval's loglikelihood_rolling) scores it as training saw it. pad is
    end-of-text too (no tokenizer here has a pad token, and stories end in it).
    """
    def piece(i):
        return None if i is None else tokenizer.piece(i)

    bos = tokenizer.bos_id if tokenizer.use_bos else tokenizer.eos_id
    unk = tokenizer.unk_id
    return {"bos_token_id": bos, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.eos_id,
            "bos_token": piece(bos), "eos_token": piece(tokenizer.eos_id), "pad_token": piece(tokenizer.eos_id),
            "unk_token_id": unk, "unk_token": piece(unk), "add_bos_token": bool(tokenizer.use_bos)}


def save_tokenizer(tokenizer: StoryTokenizer, out_dir: Path, block_size: int) -> str:
    """Write the tokenizer (from the file litgpt reads) as a class built into transformers; returns its name."""
    special = special_tokens(tokenizer)
    common = dict(bos_token=special["bos_token"], eos_token=special["eos_token"], pad_token=special["pad_token"],
                  add_bos_token=special["add_bos_token"], model_max_length=block_size,
                  clean_up_tokenization_spaces=False)
    if not tokenizer.sentencepiece:
        from transformers import PreTrainedTokenizerFast

        config_path = tokenizer.folder / "tokenizer_config.json"
        unk = read_json(config_path, "tokenizer config").get("unk_token") if config_path.is_file() else None
        hf = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer.file), unk_token=unk, **common)
        hf.save_pretrained(out_dir)
        _set_in_config(out_dir, add_bos_token=special["add_bos_token"])
        return "PreTrainedTokenizerFast"

    from transformers import LlamaTokenizerFast

    model_file = tokenizer.file
    hf = LlamaTokenizerFast(
        vocab_file=str(model_file), from_slow=True,
        unk_token=tokenizer.piece(tokenizer.unk_id),
        add_eos_token=False,
        # legacy: text goes through SentencePiece's own rules (what litgpt does), not Llama's newer ones.
        legacy=True,
        # SentencePiece's dummy prefix ("▁" before the text, id 30910 for ChatGLM3), as its model says.
        add_prefix_space=dummy_prefix(model_file),
        # SentencePiece reads "</s>" in a text as four characters, never as the eos token.
        split_special_tokens=True,
        **common,
    )
    hf.save_pretrained(out_dir)
    # tokenizer.json already holds the prefix rule; left in the config, add_prefix_space would make
    # transformers rebuild the fast tokenizer from tokenizer.model (needing sentencepiece) on every load.
    _set_in_config(out_dir, add_prefix_space=None, add_bos_token=special["add_bos_token"])
    return "LlamaTokenizerFast"


def _set_in_config(out_dir: Path, **values) -> None:
    """Set (None: remove) keys of the saved tokenizer_config.json; the special-tokens map follows bos."""
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    for key, value in values.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    write_json(config_path, config)


def dummy_prefix(model_file: Path) -> bool:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    return proto.normalizer_spec.add_dummy_prefix


def describe_tokenizer(tokenizer: StoryTokenizer, hf_class: str) -> dict:
    info = {"backend": tokenizer.backend, "vocab_size": tokenizer.vocab_size, "transformers_class": hf_class,
            "eos_id": tokenizer.eos_id, "bos_id": tokenizer.bos_id, "use_bos": tokenizer.use_bos}
    config_path = tokenizer.folder / "tokenizer_config.json"
    if config_path.is_file():
        source = read_json(config_path, "tokenizer config").get("name_or_path")
        if source:
            info["source"] = source
    return info
