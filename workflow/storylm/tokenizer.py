"""The tokenizer stage: train a byte-level BPE tokenizer, or take a pretrained one as it is.

Either way the result is a directory that litgpt.Tokenizer loads, so pretraining,
evaluation and sampling all go through litgpt's own tokenizer code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from storylm.io.entry import StageError, atomic_path, exit_with, write_json
from storylm.io.jsonl import iter_texts
from storylm.io.manifest import manifest_folder
from storylm.model.tokens import LICENCE_FILES, SPECIAL_TOKENS, TOKENIZER_FILES, StoryTokenizer
from storylm.plan.stage import stage_main, stage_parser

UNK, BOS, EOS = SPECIAL_TOKENS


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int, out_dir: Path) -> None:
    """Byte-level BPE: every byte is in the alphabet, so no text is ever unknown."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    bpe = HFTokenizer(models.BPE(unk_token=UNK))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "tokenizer.json") as tmp:
        bpe.save(str(tmp))
    # What litgpt.Tokenizer reads to find BOS/EOS; stories get EOS appended, never BOS.
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": UNK,
        "add_bos_token": False,
    }
    write_json(out_dir / "tokenizer_config.json", tokenizer_config)


def copy_pretrained(src: Path, out_dir: Path) -> None:
    """Copy the files litgpt.Tokenizer reads, unchanged, so the stage folder is self-contained, and the
    tokenizer's licence file (ChatGLM3's MODEL_LICENSE), which the export ships beside it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    copied = [name for name in TOKENIZER_FILES if (src / name).is_file()]
    if not any(name in copied for name in ("tokenizer.json", "tokenizer.model")):
        raise StageError(f"tokenizer.path: {src} holds neither tokenizer.json nor tokenizer.model")
    for name in copied + [name for name in LICENCE_FILES if (src / name).is_file()]:
        with atomic_path(out_dir / name) as tmp:
            shutil.copy2(src / name, tmp)


def batched(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def tokenizer_stats(tokenizer: StoryTokenizer, texts: Iterable[str], batch_size: int = 1024) -> dict:
    """Characters per token and unknown-token rate on the given texts (EOS not counted)."""
    unknown = tokenizer.unk_id
    chars = tokens = unknown_tokens = stories = 0
    for batch in batched(texts, batch_size):
        for text, ids in zip(batch, tokenizer.encode_batch(batch, eos=False), strict=True):
            stories += 1
            chars += len(text)
            tokens += len(ids)
            unknown_tokens += sum(1 for i in ids if i == unknown)
    return {
        "backend": tokenizer.backend,
        "vocab_size": tokenizer.vocab_size,
        "bos_id": tokenizer.bos_id,
        "eos_id": tokenizer.eos_id,
        "use_bos": tokenizer.use_bos,
        "val_stories": stories,
        "val_characters": chars,
        "val_tokens": tokens,
        "characters_per_token": chars / tokens if tokens else None,
        "unknown_token_rate": unknown_tokens / tokens if tokens else None,
    }


def training_texts(train_path: Path, max_characters: int | None) -> Iterator[str]:
    """The train split's stories, or a uniform sample of about max_characters of them.

    Like SentencePiece's input_sentence_size: the trainer's memory grows with its input, so a
    corpus of 900M characters is bounded by a sample. A first pass counts the characters; the
    second keeps each story with probability budget / total, decided by a hash of its text, so
    the same corpus and budget always give the same sample (and the same tokenizer), whatever
    the file order, and nothing but the running counts is held in memory.
    """
    total = sum(len(text) for text in iter_texts(train_path))
    if max_characters is None or total <= max_characters:
        yield from iter_texts(train_path)
        return
    threshold = int(max_characters / total * 2**64)
    for text in iter_texts(train_path):
        if int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big") < threshold:
            yield text


def build(stage_config: dict, train: Path | None, val: Path | None, source_dir: Path | None, out_dir: Path) -> dict:
    if stage_config["kind"] == "train":
        texts = training_texts(train, stage_config.get("max_train_characters"))
        train_bpe(texts, stage_config["vocab_size"], stage_config["min_frequency"], out_dir)
    else:
        copy_pretrained(source_dir, out_dir)
    tokenizer = StoryTokenizer(out_dir)
    stats = tokenizer_stats(tokenizer, iter_texts(val)) if val else {}
    stats.setdefault("vocab_size", tokenizer.vocab_size)
    return stats


def build_stage(args: argparse.Namespace, cfg: dict) -> str:
    hub = args.files.optional("hub tokenizer")
    source = manifest_folder(hub) if hub else args.pretrained
    stats = build(cfg, args.files.optional("train split"), args.files.optional("val split"), source, args.out)
    write_json(args.files.output("tokenizer stats"), stats)
    return json.dumps(stats, indent=2)


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser("python -m storylm.tokenizer", __doc__)
    # A local pretrained tokenizer is a setting's folder, not a stage's file (a hub one comes by role).
    parser.add_argument("--pretrained", type=Path, help="a local pretrained tokenizer's folder (tokenizer.path)")
    stage_main(parser, build_stage, argv, "tokenizer")


if __name__ == "__main__":
    exit_with(main)
