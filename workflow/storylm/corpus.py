"""The corpus stage: stories in, out_dir/train.jsonl + val.jsonl + stats.json out.

Stories come from the builtin generator or from the files of the download stage. Each is
Unicode-normalised and stripped; empty ones and exact duplicates are dropped and counted;
max_stories keeps the first N. The val split is the val_size stories with the smallest
sha256(f"{split.seed}\\n{text}"): that choice depends on the text alone, not on file order,
and equal texts have equal hashes, so a story and its duplicates always land on the same
side.

Memory stays small for the full TinyStoriesChinese (~4M stories, ~10 GB of text): pass 1
writes the cleaned stories to a temporary file and keeps only 24 bytes a story (a 128-bit
hash and a length); pass 2 copies each line of that file to train or val.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from storylm.io.entry import StageError, exit_with, write_json
from storylm.io.manifest import manifest_files
from storylm.io.readers import FileCounts, raw_texts
from storylm.plan.added_keys import with_added_defaults
from storylm.plan.stage import stage_file, stage_main, stage_parser
from storylm.stories.storytext import clean


class CorpusError(StageError):
    """The corpus cannot be built as configured; the message names the config key."""


def build_corpus(corpus_cfg: dict, files: list[Path] | None, out_dir: Path) -> dict:
    """Build train.jsonl, val.jsonl and stats.json in out_dir; return the stats."""
    corpus_cfg = with_added_defaults(corpus_cfg, "corpus")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    file_counts: list[FileCounts] = []
    stories = _raw_stories(corpus_cfg, files, file_counts)

    pending = out_dir / ".stories.tmp.jsonl"
    try:
        index, read, empty = _clean_to_file(stories, corpus_cfg, pending)
        kept, duplicates, beyond_cap = _kept_stories(index, corpus_cfg["dedup"], corpus_cfg["max_stories"])
        if not kept.any():
            raise CorpusError(_no_stories_message(corpus_cfg, file_counts, read, empty))
        is_val = choose_val(index.split_keys(), kept, corpus_cfg["split"]["val_size"])
        _write_splits(pending, kept, is_val, out_dir)
    finally:
        pending.unlink(missing_ok=True)

    chars = index.chars()
    stats = {
        "source": corpus_cfg["source"],
        "files": [c.as_dict() for c in file_counts],
        "records": sum(c.records for c in file_counts),
        "malformed": sum(c.malformed for c in file_counts),
        "missing_field": sum(c.missing_field for c in file_counts),
        "stories_read": read,
        "empty": empty + sum(c.empty for c in file_counts),
        "duplicates_removed": duplicates,
        "beyond_max_stories": beyond_cap,
        "stories": int(kept.sum()),
        "train": {"stories": int((kept & ~is_val).sum()), "chars": int(chars[kept & ~is_val].sum())},
        "val": {"stories": int(is_val.sum()), "chars": int(chars[is_val].sum())},
        "settings": {key: corpus_cfg[key] for key in ("normalize", "dedup", "max_stories", "split")},
    }
    write_json(stage_file("corpus", out_dir, "corpus stats"), stats)
    return stats


# ---------------------------------------------------------------------------
# Reading


def _raw_stories(cfg: dict, files: list[Path] | None, file_counts: list[FileCounts]) -> Iterator[str]:
    if cfg["source"] == "builtin":
        from storylm.stories.storygen import generate_stories

        builtin = cfg["builtin"]
        return (story["text"] for story in generate_stories(builtin["num_stories"], builtin["seed"]))
    if not files:
        raise CorpusError(f"corpus.source is '{cfg['source']}' but no input files were given (run the download stage)")
    return _stories_from_files(sorted(Path(f) for f in files), cfg, file_counts)


def _stories_from_files(files: list[Path], cfg: dict, file_counts: list[FileCounts]) -> Iterator[str]:
    for path in files:  # sorted: the same files always give the same order
        counts = FileCounts(str(path))
        file_counts.append(counts)
        yield from raw_texts(path, cfg["text_field"], counts, cfg["max_malformed_fraction"], cfg["max_story_characters"])


# ---------------------------------------------------------------------------
# Pass 1: clean, hash, and park the stories in a temporary file


class StoryIndex:
    """Per story, in reading order: a 128-bit hash of the salted text, and its length in characters.

    Equal texts have equal hashes, so the hash serves for duplicates too; its first 64 bits
    order the stories for the split.
    """

    def __init__(self, seed: int):
        self.salt = f"{seed}\n".encode()
        self._hi, self._lo, self._chars = array("Q"), array("Q"), array("Q")

    def add(self, text: str) -> None:
        digest = hashlib.sha256(self.salt + text.encode("utf-8")).digest()
        self._hi.append(int.from_bytes(digest[:8], "big"))
        self._lo.append(int.from_bytes(digest[8:16], "big"))
        self._chars.append(len(text))

    def __len__(self) -> int:
        return len(self._hi)

    def split_keys(self) -> np.ndarray:
        return np.frombuffer(self._hi, dtype=np.uint64)

    def chars(self) -> np.ndarray:
        return np.frombuffer(self._chars, dtype=np.uint64)

    def first_occurrences(self) -> np.ndarray:
        """Boolean mask: True for each story not equal to an earlier one."""
        hi, lo = self.split_keys(), np.frombuffer(self._lo, dtype=np.uint64)
        n = len(hi)
        order = np.lexsort((np.arange(n), lo, hi))  # by hash, then by position
        starts = np.ones(n, dtype=bool)
        starts[1:] = (hi[order][1:] != hi[order][:-1]) | (lo[order][1:] != lo[order][:-1])
        first = np.zeros(n, dtype=bool)
        first[order[starts]] = True
        return first


def _clean_to_file(stories: Iterable[str], cfg: dict, pending: Path) -> tuple[StoryIndex, int, int]:
    """Clean each story, append it to `pending`, and index it; stop early once max_stories are certain."""
    index = StoryIndex(cfg["split"]["seed"])
    read = empty = 0
    max_stories, dedup = cfg["max_stories"], cfg["dedup"]
    next_check = max_stories
    with open(pending, "wb") as f:
        for text in stories:
            read += 1
            text = clean(text, cfg["normalize"])
            if not text:
                empty += 1
                continue
            f.write(_json_line(text))
            index.add(text)
            if max_stories is not None and len(index) >= next_check:
                unique = int(index.first_occurrences().sum()) if dedup else len(index)
                if unique >= max_stories:
                    break  # the rest of a 4M-story corpus is not needed for a quick run
                next_check = len(index) + (max_stories - unique)
    return index, read, empty


def _kept_stories(index: StoryIndex, dedup: bool, max_stories: int | None) -> tuple[np.ndarray, int, int]:
    """Mask of the stories to keep, the number of duplicates removed, and the number beyond max_stories."""
    n = len(index)
    kept = index.first_occurrences() if dedup else np.ones(n, dtype=bool)
    end = n
    if max_stories is not None and kept.sum() > max_stories:
        end = int(np.flatnonzero(kept)[max_stories - 1]) + 1  # just after the N-th kept story
        kept[end:] = False
    duplicates = end - int(kept.sum())
    return kept, duplicates, n - end


# ---------------------------------------------------------------------------
# The split


def val_count(val_size: float, stories: int) -> int:
    """corpus.split.val_size as a number of stories: a count when >= 1, a fraction when < 1."""
    if val_size >= 1:
        if val_size != int(val_size):
            raise CorpusError(f"corpus.split.val_size: {val_size} is neither a count (integer) nor a fraction (< 1)")
        count = int(val_size)
    else:
        count = max(1, round(val_size * stories))
    if count >= stories:
        raise CorpusError(
            f"corpus.split.val_size: {val_size} asks for {count} val stories, but the corpus has only"
            f" {stories} stories after cleaning, which would leave none for training;"
            f" lower corpus.split.val_size (or give a fraction such as 0.05)"
        )
    return count


def choose_val(split_keys: np.ndarray, kept: np.ndarray, val_size: float) -> np.ndarray:
    """Mask of the val stories: the kept stories with the smallest split keys.

    Taking every story whose key is at most the count-th smallest key keeps equal texts
    together (they share a key); without dedup that can add their duplicates to val.
    """
    keys = split_keys[kept]
    count = val_count(val_size, len(keys))
    threshold = np.partition(keys, count - 1)[count - 1]
    is_val = kept & (split_keys <= threshold)
    if is_val.sum() >= kept.sum():
        raise CorpusError(
            f"corpus.split.val_size: {val_size} puts all {int(kept.sum())} stories into val"
            " (they are copies of each other); set corpus.dedup: true or lower val_size"
        )
    return is_val


# ---------------------------------------------------------------------------
# Pass 2 and outputs


def _write_splits(pending: Path, kept: np.ndarray, is_val: np.ndarray, out_dir: Path) -> None:
    """Copy each kept line of `pending` to train or val, keeping the reading order."""
    targets = {name: stage_file("corpus", out_dir, f"{name} split") for name in ("train", "val")}
    partial = {name: path.with_name(path.name + ".tmp") for name, path in targets.items()}
    with open(pending, "rb") as src, open(partial["train"], "wb") as train, open(partial["val"], "wb") as val:
        for i, line in enumerate(src):
            if kept[i]:
                (val if is_val[i] else train).write(line)
    for name in targets:  # complete files only appear under their final names
        os.replace(partial[name], targets[name])


def _json_line(text: str) -> bytes:
    return (json.dumps({"text": text}, ensure_ascii=False) + "\n").encode("utf-8")


def _no_stories_message(cfg: dict, file_counts: list[FileCounts], read: int, empty: int) -> str:
    problems = "; ".join(
        f"{c.path}: {c.records} records, {c.malformed} malformed, {c.missing_field} without"
        f" '{cfg['text_field']}', {c.empty} empty" for c in file_counts
    )
    return (
        f"no stories left: {read} read, {empty} empty after cleaning."
        f" Check corpus.text_field ('{cfg['text_field']}') and corpus.include. {problems}"
    )


def summary(stats: dict) -> str:
    lines = [
        f"{c['path']}: {c['texts']} stories; {c['malformed']} malformed, {c['missing_field']} without the"
        f" text field, {c['empty']} empty" + (f" (first: {c['first_problem']})" if c["first_problem"] else "")
        for c in stats["files"] if c["malformed"] or c["missing_field"] or c["empty"]
    ]
    lines.append(
        f"{stats['stories_read']} stories read, {stats['empty']} empty, {stats['duplicates_removed']} duplicates"
        f" removed, {stats['beyond_max_stories']} beyond max_stories -> train {stats['train']['stories']}"
        f" ({stats['train']['chars']} chars), val {stats['val']['stories']} ({stats['val']['chars']} chars)"
    )
    return "\n".join(lines)


def build_stage(args: argparse.Namespace, cfg: dict) -> str:
    files = None
    if cfg["source"] != "builtin":
        raw = args.files.optional("raw files")
        if raw is None:
            raise CorpusError(f"corpus.source is '{cfg['source']}': --inputs gives no 'raw files' (the download"
                              " stage's manifest)")
        files = manifest_files(raw.parent)
    return summary(build_corpus(cfg, files, args.out))


def main(argv: list[str] | None = None) -> None:
    stage_main(stage_parser("python -m storylm.corpus", __doc__.splitlines()[0]), build_stage, argv, "corpus")


if __name__ == "__main__":
    exit_with(main)
