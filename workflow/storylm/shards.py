"""The shards stage: tokenize each story (EOS appended) into litdata shards.

`train/` and `val/` are written by `litdata.optimize(..., item_loader=TokensLoader())`, the
layout `litgpt.data.LitData(split_names=("train", "val"))` streams as is.

Workers get byte ranges of the corpus JSONL rather than the texts themselves, so the
main process never holds the corpus in memory, and each worker encodes a whole batch
with one call of the tokenizer backend.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
from functools import partial
from pathlib import Path

import torch

from storylm.io.entry import exit_with, write_json
from storylm.io.jsonl import iter_texts
from storylm.io.progress import Progress
from storylm.plan.stage import stage_file, stage_main, stage_parser

_TOKENIZERS: dict[str, object] = {}  # one tokenizer per worker process, loaded on first use


def line_batches(path: Path, batch_size: int) -> list[tuple[str, int, int]]:
    """(path, start byte, end byte) ranges that each hold batch_size lines (the last fewer)."""
    ranges, start, lines, offset = [], 0, 0, 0
    with open(path, "rb") as f:
        for line in f:
            offset += len(line)
            lines += 1
            if lines == batch_size:
                ranges.append((str(path), start, offset))
                start, lines = offset, 0
    if lines:
        ranges.append((str(path), start, offset))
    return ranges


def read_range(path: str, start: int, end: int) -> list[str]:
    with open(path, "rb") as f:
        f.seek(start)
        chunk = f.read(end - start).decode("utf-8")
    return [json.loads(line)["text"] for line in chunk.splitlines() if line.strip()]


def tokenize_range(item: tuple[str, int, int], tokenizer_dir: str):
    """litdata worker function: yields one int32 tensor of token ids per story."""
    from storylm.model.tokens import StoryTokenizer

    if tokenizer_dir not in _TOKENIZERS:
        _TOKENIZERS[tokenizer_dir] = StoryTokenizer(tokenizer_dir)
    for ids in _TOKENIZERS[tokenizer_dir].encode_batch(read_range(*item), eos=True):
        yield torch.tensor(ids, dtype=torch.int32)


def optimize_split(jsonl: Path, tokenizer_dir: Path, out_dir: Path, chunk_bytes: str, batch_size: int,
                   workers: int) -> None:
    from litdata import TokensLoader, optimize

    inputs = line_batches(jsonl, batch_size)
    if out_dir.exists():  # left by an interrupted run of this stage; litdata refuses a non-empty output
        shutil.rmtree(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # litdata stages chunks in a cache folder shared by every process of the user (~/.lightning/chunks);
    # two optimize runs at once would mix their chunks there, so each run gets its own.
    with tempfile.TemporaryDirectory(prefix=".litdata-", dir=out_dir.parent) as cache:
        with _environ(DATA_OPTIMIZER_CACHE_FOLDER=f"{cache}/chunks", DATA_OPTIMIZER_DATA_CACHE_FOLDER=f"{cache}/data"):
            optimize(
                fn=partial(tokenize_range, tokenizer_dir=str(tokenizer_dir)),
                inputs=inputs,
                output_dir=str(out_dir),
                chunk_bytes=chunk_bytes,
                item_loader=TokensLoader(),
                num_workers=max(1, min(workers, len(inputs))),
                reorder_files=False,
                keep_data_ordered=True,  # each worker takes a contiguous block: the token stream keeps corpus order
                start_method="fork",
                verbose=False,
            )


@contextlib.contextmanager
def _environ(**values: str):
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def split_token_count(split_dir: Path) -> int:
    """Total tokens in a split, from litdata's index (each TokensLoader chunk records its length as dim)."""
    index = json.loads((split_dir / "index.json").read_text())
    return sum(chunk["dim"] for chunk in index["chunks"])


def build(corpus_dir: Path, tokenizer_dir: Path, out_dir: Path, chunk_bytes: str, batch_size: int,
          workers: int) -> dict:
    stats = {"workers": workers}
    splits = ("train", "val")
    with Progress("shards", len(splits), "splits") as progress:  # litdata's workers tokenize a split at a time
        for done, split in enumerate(splits, start=1):
            optimize_split(stage_file("corpus", corpus_dir, f"{split} split"), tokenizer_dir, out_dir / split, chunk_bytes, batch_size,
                           workers)
            stats[f"{split}_tokens"] = split_token_count(out_dir / split)
            stories = characters = 0
            for text in iter_texts(stage_file("corpus", corpus_dir, f"{split} split")):
                stories += 1
                characters += len(text)
            stats[f"{split}_stories"] = stories
            stats[f"{split}_characters"] = characters
            # EOS tokens are counted: predicting the end of a story is part of the model's job.
            stats[f"{split}_tokens_per_character"] = stats[f"{split}_tokens"] / max(characters, 1)
            progress.update(done, f"{split}: {stories:,} stories, {stats[f'{split}_tokens']:,} tokens")
    return stats


def build_stage(args: argparse.Namespace, cfg: dict) -> str:
    files = args.files
    stats = build(files.input("train split").parent, files.input("tokenizer").parent, args.out, cfg["chunk_bytes"],
                  args.batch_size, args.workers)
    write_json(files.output("shards"), stats)
    return json.dumps(stats, indent=2)


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser("python -m storylm.shards", __doc__)
    parser.add_argument("--batch-size", type=int, default=1024, help="stories per tokenizer call")
    parser.add_argument("--workers", type=int, default=1)
    stage_main(parser, build_stage, argv, "shards")


if __name__ == "__main__":
    exit_with(main)
