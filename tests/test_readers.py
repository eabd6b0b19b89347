"""storylm.io.readers: story texts out of .jsonl/.json/.parquet/.txt, every problem counted."""

import json

import pandas as pd
import pytest

from conftest import PICTUREBOOKS, TINYSTORIES_ROW, needs_real_stories
from hubserver import jsonl_bytes, real_row, tinystories_rows
from storylm.io.readers import FileCounts, ReadError, field_value, raw_texts


def read(path, text_field="text", limit=0.5):
    counts = FileCounts(str(path))
    texts = list(raw_texts(path, text_field, counts, limit))
    return texts, counts


def write_lines(path, lines: list[bytes]):
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def obj(**fields) -> bytes:
    return json.dumps(fields, ensure_ascii=False).encode()


def tinystories_file(tmp_path, count=3):
    path = tmp_path / "data00_zh.jsonl"
    path.write_bytes(jsonl_bytes(tinystories_rows(count)))
    return path


def test_tinystories_nested_fields(tmp_path):
    rows = tinystories_rows(3)
    path = tinystories_file(tmp_path)
    texts, counts = read(path, "story_zh")
    assert texts == [row["story_zh"] for row in rows] and counts.texts == 3 and counts.records == 3
    # The TinyStoriesChinese prompt key ends in a colon; the dotted path splits on "." only.
    texts, _ = read(path, "instruction.prompt:")
    assert texts == ["Write a short story number 0.", "Write a short story number 1.", "Write a short story number 2."]
    assert field_value(rows[0], "instruction.words") == ["play", "happy"]


@needs_real_stories
def test_real_tinystories_row_nested_fields():
    row = real_row()
    texts, counts = read(TINYSTORIES_ROW, "story_zh")
    assert texts == [row["story_zh"]] and counts.texts == 1 and counts.records == 1
    # The real prompt key ends in a colon; the dotted path splits on "." only.
    texts, _ = read(TINYSTORIES_ROW, "instruction.prompt:")
    assert texts == [row["instruction"]["prompt:"]] and texts[0].startswith("Write a short story")
    assert field_value(row, "instruction.words") == row["instruction"]["words"]


@needs_real_stories
def test_real_picturebooks():
    texts, counts = read(PICTUREBOOKS, "story_zh")
    assert len(texts) == 54 and counts.malformed == counts.missing_field == counts.empty == 0
    assert texts[0].startswith("他的锄头太短了。")


def test_problems_are_counted_not_dropped_silently(tmp_path):
    path = write_lines(tmp_path / "mixed.jsonl", [
        obj(text="第一个故事。"),
        b'{"text": "cut off',                                  # line 2: bad JSON
        obj(title="no text"),                                  # line 3: missing field
        obj(text="   "),                                       # line 4: empty text
        b"",                                                   # blank lines are not records
        '{"text": "坏字节'.encode() + b"\xff\xfe" + b'"}',     # line 6: not UTF-8
        obj(text=None),                                        # line 7: null counts as missing
        b"[1, 2]",                                             # line 8: not an object
        obj(text=42),                                          # line 9: not text
        obj(text="最后一个故事。"),
    ])
    texts, counts = read(path, limit=1.0)
    assert texts == ["第一个故事。", "最后一个故事。"]
    assert (counts.records, counts.texts, counts.malformed, counts.missing_field, counts.empty) == (9, 2, 4, 2, 1)
    assert counts.first_problem.startswith("line 2: bad JSON")


def test_non_utf8_line_costs_only_that_line(tmp_path):
    path = write_lines(tmp_path / "bytes.jsonl", [obj(text="好"), b'{"text": "\xe4\xbd"}', obj(text="的")])
    texts, counts = read(path)
    assert texts == ["好", "的"] and counts.malformed == 1
    assert counts.first_problem == "line 2: not UTF-8 (byte 0xe4 at column 11)"


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    texts, counts = read(path)
    assert texts == [] and counts.records == 0 and counts.first_problem is None


def test_mostly_malformed_file_is_an_error(tmp_path):
    path = write_lines(tmp_path / "junk.jsonl", [obj(text="好"), b"<html>", b"</html>"])
    with pytest.raises(ReadError) as error:
        read(path, limit=0.5)
    message = str(error.value)
    assert "junk.jsonl" in message and "2 of 3 records are malformed" in message
    assert "line 2" in message and "corpus.max_malformed_fraction" in message


def test_wrong_text_field_is_an_error_that_shows_the_keys(tmp_path):
    path = tinystories_file(tmp_path)
    with pytest.raises(ReadError) as error:
        read(path, text_field="text")
    message = str(error.value)
    assert "corpus.text_field" in message and "'story_zh'" in message and "data00_zh.jsonl" in message


def test_json_list_and_object_with_list(tmp_path):
    rows = [{"text": "一"}, {"text": "二"}, {"other": "三"}]
    (tmp_path / "list.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "wrapped.json").write_text(json.dumps({"version": 1, "data": rows}), encoding="utf-8")
    for name in ("list.json", "wrapped.json"):
        texts, counts = read(tmp_path / name, limit=0.5)
        assert texts == ["一", "二"] and counts.missing_field == 1 and counts.first_problem.startswith("record 2")


def test_broken_json_document_names_the_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n{"text": "a"},\n{"text": \n]', encoding="utf-8")
    with pytest.raises(ReadError, match=r"broken.json: line 4: bad JSON"):
        read(path)


def test_parquet_with_nested_struct(tmp_path):
    row = tinystories_rows(1)[0]
    rows = [row, {**row, "story_zh": "第二个故事。"}, {**row, "story_zh": None}]
    path = tmp_path / "rows.parquet"
    pd.DataFrame(rows).to_parquet(path)
    texts, counts = read(path, "story_zh")
    assert texts == [rows[0]["story_zh"], "第二个故事。"] and counts.missing_field == 1
    texts, _ = read(path, "instruction.prompt:")
    assert texts[0] == rows[0]["instruction"]["prompt:"]


def test_txt_one_story_per_line(tmp_path):
    path = tmp_path / "stories.txt"
    path.write_bytes("\ufeff第一个故事。\r\n\r\n第二个故事。\n".encode() + b"\xff bad\n" + "第三个。".encode())
    texts, counts = read(path, text_field="ignored")
    assert texts == ["第一个故事。", "第二个故事。", "第三个。"]
    assert counts.records == 4 and counts.malformed == 1


def test_bom_on_jsonl(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + obj(text="好") + b"\n")
    assert read(path)[0] == ["好"]


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "notes.md"
    path.write_text("# hi")
    with pytest.raises(ReadError, match="notes.md: unsupported file type"):
        read(path)
