"""storylm.corpus: clean, dedup and split stories into train.jsonl / val.jsonl / stats.json."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from hubserver import REPO_ROOT, corpus_config
from storylm.corpus import CorpusError, build_corpus
from storylm.io.readers import ReadError
from storylm.stories.storygen import generate_stories


def stories() -> list[str]:
    """54 distinct Chinese stories, made here (the generator of the builtin corpus, seed 7)."""
    texts = [story["text"] for story in generate_stories(54, seed=7)]
    assert len(set(texts)) == 54
    return texts


def write_jsonl(path, texts, field="text"):
    path.write_text("".join(json.dumps({field: t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    return path


def split_texts(out_dir) -> tuple[list[str], list[str]]:
    def texts(name):
        lines = (out_dir / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        return [json.loads(line)["text"] for line in lines]
    return texts("train"), texts("val")


def build(tmp_path, texts, name="out", **cfg):
    path = write_jsonl(tmp_path / f"{name}.jsonl", texts)
    stats = build_corpus(corpus_config(source="local", **cfg), [path], tmp_path / name)
    return stats, *split_texts(tmp_path / name)


def smallest_hashes(texts, seed, count):
    return set(sorted(texts, key=lambda t: hashlib.sha256(f"{seed}\n{t}".encode()).digest())[:count])


def test_builtin_generated_stories(tmp_path):
    cfg = corpus_config(source="builtin", builtin={"num_stories": 80, "seed": 3}, split={"val_size": 8})
    stats = build_corpus(cfg, None, tmp_path / "a")
    assert stats["stories_read"] == 80
    assert stats["stories"] + stats["duplicates_removed"] + stats["empty"] == 80
    assert stats["val"]["stories"] == 8 and stats["train"]["stories"] == stats["stories"] - 8
    build_corpus(cfg, None, tmp_path / "b")
    for name in ("train.jsonl", "val.jsonl", "stats.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_split_is_the_smallest_hashes_disjoint_and_in_reading_order(tmp_path):
    texts = stories()
    stats, train, val = build(tmp_path, texts, split={"val_size": 5, "seed": 11})
    assert len(val) == 5 and len(train) == 49 and not set(train) & set(val)
    assert set(val) == smallest_hashes(texts, 11, 5)
    assert train == [t for t in texts if t not in val] and val == [t for t in texts if t in val]
    assert stats["val"]["chars"] == sum(map(len, val)) and stats["train"]["chars"] == sum(map(len, train))
    raw = (tmp_path / "out" / "train.jsonl").read_text(encoding="utf-8")
    assert train[0].split("\n")[0] in raw  # Chinese kept as is (ensure_ascii=False)


def test_split_does_not_depend_on_file_order_or_files(tmp_path):
    texts = stories()
    _, _, val_a = build(tmp_path, texts, name="a", split={"val_size": 6})
    b1 = write_jsonl(tmp_path / "b1.jsonl", texts[::-1][:20])
    b2 = write_jsonl(tmp_path / "b2.jsonl", texts[::-1][20:])
    build_corpus(corpus_config(source="local", split={"val_size": 6}), [b2, b1], tmp_path / "b")
    assert set(split_texts(tmp_path / "b")[1]) == set(val_a)
    _, _, val_c = build(tmp_path, texts, name="c", split={"val_size": 6, "seed": 1})
    assert set(val_c) != set(val_a)  # the seed changes the choice


def test_val_size_as_fraction(tmp_path):
    stats, train, val = build(tmp_path, stories(), split={"val_size": 0.1})
    assert len(val) == 5 and len(train) == 49  # round(0.1 * 54)


def test_val_size_too_large_is_a_clear_error(tmp_path):
    with pytest.raises(CorpusError) as error:
        build(tmp_path, stories()[:10] + stories()[:3], split={"val_size": 10})
    message = str(error.value)
    assert "corpus.split.val_size" in message and "10 val stories" in message and "only 10 stories" in message
    assert not (tmp_path / "out" / "train.jsonl").exists()
    with pytest.raises(CorpusError, match=r"corpus.split.val_size: 2.5 is neither a count"):
        build(tmp_path, stories(), split={"val_size": 2.5})


def test_dedup_after_normalisation_keeps_the_first(tmp_path):
    texts = ["Cafe\u0301 故事。", "  Café 故事。\n", "另一个故事。", "第三个故事。", "另一个故事。", " ", "第四个。"]
    stats, train, val = build(tmp_path, texts, normalize="NFC", split={"val_size": 1})
    assert stats["duplicates_removed"] == 2 and stats["empty"] == 1 and stats["stories"] == 4
    assert train + val and sorted(train + val) == sorted(["Café 故事。", "另一个故事。", "第三个故事。", "第四个。"])
    stats, *_ = build(tmp_path, texts, name="raw", normalize=None, split={"val_size": 1})
    assert stats["duplicates_removed"] == 1  # without NFC the two spellings of Café differ


def test_nfkc_folds_full_width_forms(tmp_path):
    stats, train, val = build(tmp_path, ["ＡＢＣ，一个故事。", "ABC,一个故事。", "两个故事。"],
                              normalize="NFKC", split={"val_size": 1})
    assert stats["duplicates_removed"] == 1 and "ABC,一个故事。" in train + val


def test_duplicates_never_straddle_the_split_without_dedup(tmp_path):
    texts = stories()[:20]
    many = texts + texts[:10] + texts[:5]
    for seed in range(5):
        stats, train, val = build(tmp_path, many, name=f"s{seed}", dedup=False, split={"val_size": 4, "seed": seed})
        assert not set(train) & set(val)
        assert stats["duplicates_removed"] == 0 and len(train) + len(val) == len(many)
        assert len(val) >= 4  # copies of a val story go to val with it


def test_max_stories_keeps_the_first_after_cleaning_and_stops_reading(tmp_path):
    texts = stories()
    first = write_jsonl(tmp_path / "a.jsonl", [texts[0], texts[0], ""] + texts[1:20])
    second = write_jsonl(tmp_path / "b.jsonl", texts[20:])
    stats = build_corpus(corpus_config(source="local", max_stories=6, split={"val_size": 2}, max_malformed_fraction=1),
                         [second, first], tmp_path / "out")
    train, val = split_texts(tmp_path / "out")
    assert sorted(train + val) == sorted(texts[:6])
    assert stats["stories"] == 6 and stats["duplicates_removed"] == 1 and stats["empty"] == 1
    assert [f["path"] for f in stats["files"]] == [str(first)]  # b.jsonl was never needed


def test_stats_report_file_problems(tmp_path):
    path = tmp_path / "mixed.jsonl"
    rows = [json.dumps({"text": t}, ensure_ascii=False).encode() for t in stories()[:8]]
    path.write_bytes(b"\n".join(rows[:4] + [b"{broken", '{"text": "\xff"}'.encode("latin-1"),
                                            b'{"title": "x"}', b'{"text": ""}'] + rows[4:]) + b"\n")
    stats = build_corpus(corpus_config(source="local", split={"val_size": 2}), [path], tmp_path / "out")
    assert stats["files"][0]["malformed"] == 2 and stats["files"][0]["missing_field"] == 1
    assert stats["files"][0]["first_problem"].startswith("line 5: bad JSON")
    assert (stats["records"], stats["malformed"], stats["missing_field"], stats["empty"]) == (12, 2, 1, 1)
    assert (stats["stories_read"], stats["stories"]) == (8, 8)
    saved = json.loads((tmp_path / "out" / "stats.json").read_text(encoding="utf-8"))
    assert saved == stats
    assert {"source", "files", "stories_read", "empty", "duplicates_removed", "beyond_max_stories",
            "train", "val", "settings"} <= set(saved)


def test_mostly_malformed_file_stops_the_stage(tmp_path):
    path = tmp_path / "junk.jsonl"
    path.write_bytes(b'{"text": "a"}\nnot json\nnot json either\n')
    with pytest.raises(ReadError, match="junk.jsonl: 2 of 3 records are malformed"):
        build_corpus(corpus_config(source="local"), [path], tmp_path / "out")
    assert not (tmp_path / "out" / "stats.json").exists()


def test_no_stories_is_an_error_naming_text_field(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", stories()[:5], field="story_zh")
    with pytest.raises(CorpusError, match=r"no stories left.*corpus.text_field \('text'\)"):
        build_corpus(corpus_config(source="local", max_malformed_fraction=1), [path], tmp_path / "out")


def corpus_record(cfg: dict) -> str:
    return json.dumps({"stage": "corpus", "hash": "abc", "inputs": {}, "config": cfg})


def test_cli_with_manifest_and_record(tmp_path):
    from storylm.download import fetch

    write_jsonl(tmp_path / "stories.jsonl", stories(), field="story_zh")
    cfg = corpus_config(source="local", local={"paths": [str(tmp_path / "stories.jsonl")]}, text_field="story_zh",
                        split={"val_size": 4})
    fetch(cfg, tmp_path / "raw")
    record = corpus_record(cfg)
    done = subprocess.run(
        [sys.executable, "-m", "storylm.corpus", "--record", record,
         "--out", str(tmp_path / "out"), "--inputs", json.dumps({"raw files": str(tmp_path / "raw/manifest.json")})],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "workflow")},
    )
    assert done.returncode == 0, done.stderr
    assert "train 50" in done.stdout and "val 4" in done.stdout
    assert json.loads((tmp_path / "out" / "config.json").read_text())["hash"] == "abc"
    train, val = split_texts(tmp_path / "out")
    assert len(train) == 50 and len(val) == 4


def test_cli_error_is_one_message(tmp_path):
    cfg = corpus_config(source="local", local={"paths": ["x"]})
    done = subprocess.run(
        [sys.executable, "-m", "storylm.corpus", "--record", corpus_record(cfg), "--out", str(tmp_path / "out"),
         "--inputs", json.dumps({"raw files": str(tmp_path / "missing/manifest.json")})],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "workflow")},
    )
    assert done.returncode == 1 and "no manifest" in done.stderr and "Traceback" not in done.stderr
