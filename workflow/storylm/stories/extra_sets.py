"""Extra evaluation sets (evaluate.extra_sets): a user's own stories, read strictly.

The corpus stage forgives a few bad lines in a big download; an extra set is small and
chosen by hand, so any bad line is an error that names the file, the line and the config
key. Stories are cleaned exactly as the corpus stage cleans them (storylm.stories.storytext.clean),
so bits per character measure the text the model was trained to read, and a story of the
set is "in the train split" when its cleaned text equals a train story.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from storylm.io.entry import StageError
from storylm.io.readers import field_value
from storylm.stories.storytext import clean

SUFFIXES = (".jsonl", ".txt")


def set_name(entry: dict) -> str:
    return entry.get("name") or Path(entry["path"]).stem


def check_entries(entries: list[dict]) -> None:
    """Errors of the config alone, before any model is loaded: missing files, bad suffixes, clashing names."""
    names: dict[str, int] = {}
    for i, entry in enumerate(entries):
        key, path = f"evaluate.extra_sets[{i}]", Path(entry["path"])
        if not path.is_file():
            raise StageError(f"{key}.path: {path} does not exist")
        if path.suffix not in SUFFIXES:
            raise StageError(f"{key}.path: {path} is neither a .jsonl file nor a .txt file (one story per line)")
        name = set_name(entry)
        if name in names:
            raise StageError(f"{key}.name: '{name}' is also the name of evaluate.extra_sets[{names[name]}];"
                             f" give one of them another name")
        names[name] = i


def read_stories(path: Path, text_field: str, key: str, normalize: str | None) -> tuple[list[str], int]:
    """The cleaned stories of one set, and the number of empty ones skipped."""
    stories, empty = [], 0
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            text = clean(_line_text(line, path, number, text_field, key) if path.suffix == ".jsonl" else line,
                         normalize)
            if text:
                stories.append(text)
            else:
                empty += 1
    if not stories:
        raise StageError(f"{path}: no stories (evaluate.{key}.path)")
    return stories, empty


def _line_text(line: str, path: Path, number: int, text_field: str, key: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise StageError(f"{path} line {number}: not a JSON object ({error.msg})") from None
    value = field_value(record, text_field) if isinstance(record, dict) else None
    if value is None:
        raise StageError(f"{path} line {number}: no field '{text_field}' (evaluate.{key}.text_field)")
    if not isinstance(value, str):
        raise StageError(f"{path} line {number}: field '{text_field}' is a {type(value).__name__}, not text"
                         f" (evaluate.{key}.text_field)")
    return value


def stories_in_train(sets: dict[str, list[str]], train_texts: Iterable[str]) -> dict[str, int]:
    """For each set, how many of its stories (duplicates counted) equal a story of the train split.

    The train split streams through once; only the sets' stories are held in memory.
    """
    wanted = {story for stories in sets.values() for story in stories}
    seen = {text for text in train_texts if text in wanted}
    return {name: sum(count for story, count in Counter(stories).items() if story in seen)
            for name, stories in sets.items()}
