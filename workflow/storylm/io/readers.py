"""Read story texts from .jsonl, .json, .parquet and .txt files, counting every problem.

Real corpora have bad lines: a cut-off last line, stray bytes that are not UTF-8, a row
without the text field. Such a line is skipped but counted in a FileCounts, so the corpus
stage can report it; nothing is dropped silently. A file where most lines are bad is
almost certainly the wrong file or the wrong text_field, so that is an error instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from storylm.io.entry import StageError

SUFFIXES = (".jsonl", ".json", ".parquet", ".txt")

PARQUET_BATCH_ROWS = 8192


class ReadError(StageError):
    """A file that cannot be read as stories; the message names the file and the first problem."""


@dataclass
class FileCounts:
    """What reading one file found. `records` counts lines (or rows, or list items) read."""

    path: str
    records: int = 0
    texts: int = 0
    malformed: int = 0
    missing_field: int = 0
    empty: int = 0
    first_problem: str | None = None
    first_keys: list[str] | None = None  # keys of the first record, to help fix text_field

    def problem(self, kind: str, where: str, detail: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if self.first_problem is None:
            self.first_problem = f"{where}: {detail}"

    def as_dict(self) -> dict:
        return asdict(self)


def raw_texts(path: Path, text_field: str, counts: FileCounts | None = None,
              max_malformed_fraction: float = 1.0, max_characters: int | None = None) -> Iterator[str]:
    """Yield the non-empty story texts of one file; problems are counted in `counts`.

    text_field is a dotted path into nested objects ("instruction.prompt:"); it is split on
    "." only, so keys that end in ":" work. Plain .txt files hold one story per line and
    ignore text_field. After the last record, raises ReadError when the fraction of
    malformed records, or of records without the field, exceeds max_malformed_fraction.

    A story longer than max_characters is a ReadError naming the file and the line: the later
    stages hold a story whole while they tokenize it, at about 160 bytes a character.
    """
    path = Path(path)
    counts = counts if counts is not None else FileCounts(str(path))
    records = _records(path, counts)
    if path.suffix == ".txt":
        texts = _texts_from_lines(records, counts)
    else:
        texts = _texts_from_records(records, text_field, counts)
    for where, text in texts:
        if max_characters is not None and len(text) > max_characters:
            raise ReadError(f"{path}: {where}: a story of {len(text):,} characters, more than"
                            f" corpus.max_story_characters ({max_characters:,}); split it into stories or raise"
                            f" the limit")
        yield text
    _check_fractions(path, text_field, counts, max_malformed_fraction)


# ---------------------------------------------------------------------------
# Records: (where, object) pairs; a malformed record is counted and not yielded.


def _records(path: Path, counts: FileCounts) -> Iterator[tuple[str, object]]:
    if path.suffix == ".jsonl":
        return _jsonl_records(path, counts)
    if path.suffix == ".json":
        return _json_records(path, counts)
    if path.suffix == ".parquet":
        return _parquet_records(path, counts)
    if path.suffix == ".txt":
        return _txt_lines(path, counts)
    raise ReadError(f"{path}: unsupported file type '{path.suffix}' (readable: {', '.join(SUFFIXES)})")


def _decoded_lines(path: Path, counts: FileCounts) -> Iterator[tuple[int, str]]:
    """Non-blank lines as text, decoded one by one so one bad byte costs one line, not the file."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte order mark is not part of the first record
            if not raw.strip():
                continue
            counts.records += 1
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                detail = f"not UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})"
                counts.problem("malformed", f"line {number}", detail)


def _jsonl_records(path: Path, counts: FileCounts) -> Iterator[tuple[str, object]]:
    for number, line in _decoded_lines(path, counts):
        try:
            yield f"line {number}", json.loads(line)
        except json.JSONDecodeError as e:
            counts.problem("malformed", f"line {number}", f"bad JSON ({e.msg} at column {e.colno})")


def _txt_lines(path: Path, counts: FileCounts) -> Iterator[tuple[str, object]]:
    for number, line in _decoded_lines(path, counts):
        yield f"line {number}", line


def _json_records(path: Path, counts: FileCounts) -> Iterator[tuple[str, object]]:
    # A .json file is one document, so a decoding error spoils all of it: that is an error.
    try:
        document = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise ReadError(f"{path}: not UTF-8 (byte offset {e.start})") from None
    except json.JSONDecodeError as e:
        raise ReadError(f"{path}: line {e.lineno}: bad JSON ({e.msg} at column {e.colno})") from None
    for index, item in enumerate(_record_list(path, document)):
        counts.records += 1
        yield f"record {index}", item


def _record_list(path: Path, document) -> list:
    """The list of records of a .json file: the document itself, or its one list-valued key."""
    if isinstance(document, list):
        return document
    if isinstance(document, dict):
        lists = [key for key, value in document.items() if isinstance(value, list)]
        if len(lists) == 1:
            return document[lists[0]]
        raise ReadError(
            f"{path}: expected a list of records, or an object with exactly one list;"
            f" found an object with {len(lists)} lists ({', '.join(lists) or 'none'})"
        )
    raise ReadError(f"{path}: expected a list of records, found a JSON {type(document).__name__}")


def _parquet_records(path: Path, counts: FileCounts) -> Iterator[tuple[str, object]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a file that is not parquet
        raise ReadError(f"{path}: not a readable parquet file ({e})") from None
    row = 0
    # Batches keep memory flat on big files; rows come back as plain dicts (structs too).
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
        for record in batch.to_pylist():
            counts.records += 1
            yield f"row {row}", record
            row += 1


# ---------------------------------------------------------------------------
# Texts


def _texts_from_records(records, text_field: str, counts: FileCounts) -> Iterator[tuple[str, str]]:
    for where, record in records:
        if not isinstance(record, dict):
            counts.problem("malformed", where, f"expected a JSON object, found {type(record).__name__}")
            continue
        if counts.first_keys is None:
            counts.first_keys = list(record)
        value = field_value(record, text_field)
        if value is None:
            counts.problem("missing_field", where, f"no field '{text_field}'")
        elif not isinstance(value, str):
            counts.problem("malformed", where, f"field '{text_field}' is a {type(value).__name__}, not text")
        elif not value.strip():
            counts.problem("empty", where, f"field '{text_field}' is empty")
        else:
            counts.texts += 1
            yield where, value


def _texts_from_lines(records, counts: FileCounts) -> Iterator[tuple[str, str]]:
    for where, line in records:
        counts.texts += 1
        yield where, line.rstrip("\r\n")


def field_value(record: dict, text_field: str):
    """record[a][b] for text_field "a.b"; None when any step is missing.

    A key that itself contains dots is found too: the whole path is tried as one key first.
    """
    if text_field in record:
        return record[text_field]
    value = record
    for key in text_field.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _check_fractions(path: Path, text_field: str, counts: FileCounts, limit: float) -> None:
    if counts.records == 0:
        return
    if counts.malformed / counts.records > limit:
        raise ReadError(
            f"{path}: {counts.malformed} of {counts.records} records are malformed, more than"
            f" corpus.max_malformed_fraction={limit}; first problem at {counts.first_problem}"
        )
    if counts.missing_field / counts.records > limit:
        keys = ", ".join(repr(k) for k in counts.first_keys or [])
        raise ReadError(
            f"{path}: {counts.missing_field} of {counts.records} records have no field '{text_field}'"
            f" (corpus.text_field); the first record has the keys {keys or 'none'};"
            f" first problem at {counts.first_problem}"
        )
