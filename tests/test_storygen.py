"""The builtin story generator: determinism, variety, the world's vocabulary, JSONL and CLI."""

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from storylm.stories import storygen
from storylm.stories.storygen import (
    BOY_NAMES,
    KINDS,
    NAMES,
    PLACES,
    SHAPES,
    generate_stories,
    main,
    write_jsonl,
)

REPO = Path(__file__).resolve().parents[1]
CONFIG_SEED = 1234  # config/config.yaml corpus.builtin.seed
CONFIG_NUM = 6000   # config/config.yaml corpus.builtin.num_stories


@pytest.fixture(scope="module")
def corpus() -> list[dict]:
    return list(generate_stories(CONFIG_NUM, CONFIG_SEED))


def texts(num_stories: int, seed: int) -> list[str]:
    return [s["text"] for s in generate_stories(num_stories, seed)]


def test_world_vocabulary():
    assert len(NAMES) >= 40 and len(set(NAMES)) == len(NAMES)
    assert {"莉莉", "小明"} <= set(NAMES)
    assert len(PLACES) >= 20 and {"森林", "公园", "海边", "花园", "学校", "村子"} <= set(PLACES)
    assert "狗" in storygen.ANIMALS
    assert {"小女孩", "小男孩", "小兔子"} <= set(KINDS)


def test_story_fields(corpus):
    for story in corpus[:200]:
        assert set(story) == {"text", "names", "place", "animal", "shape"}
        assert story["shape"] in SHAPES and story["place"] in PLACES
        assert 1 <= len(story["names"]) <= 2 and set(story["names"]) <= set(NAMES)
        assert story["place"] in story["text"]
        assert all(name in story["text"] for name in story["names"])
        if story["animal"] is not None:
            assert story["animal"] in story["text"]


def test_same_seed_same_stories():
    assert list(generate_stories(50, 7)) == list(generate_stories(50, 7))
    assert texts(50, 7) != texts(50, 8)


def test_first_stories_do_not_depend_on_count():
    assert texts(200, 3)[:20] == texts(20, 3)


@pytest.mark.parametrize("hashseed", ["0", "12345"])
def test_same_stories_in_other_processes(hashseed):
    code = ("import json; from storylm.stories.storygen import generate_stories; "
            "print(json.dumps([s['text'] for s in generate_stories(30, 5)]))")
    env = {**os.environ, "PYTHONHASHSEED": hashseed, "PYTHONPATH": str(REPO / "workflow")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == texts(30, 5)


def test_stories_are_varied(corpus):
    stories = [s["text"] for s in corpus]
    assert len(set(stories)) >= 0.99 * len(stories)
    sentences = Counter(m for t in stories for m in re.findall(r"[^。！？]*[。！？]”?", t))
    assert len(sentences) >= 20000
    # No single sentence dominates the corpus.
    assert sentences.most_common(1)[0][1] < 0.15 * len(stories)
    # Every name, place and shape is used.
    assert {n for s in corpus for n in s["names"]} == set(NAMES)
    assert {s["place"] for s in corpus} == set(PLACES)
    shapes = Counter(s["shape"] for s in corpus)
    assert set(shapes) == set(SHAPES) and min(shapes.values()) > 0.08 * len(corpus)
    assert Counter(s["animal"] for s in corpus)["狗"] > 100


def test_lengths(corpus):
    lengths = sorted(len(s["text"]) for s in corpus)
    assert lengths[0] >= 70 and lengths[-1] <= 420
    assert 150 <= lengths[len(lengths) // 2] <= 250
    assert lengths[-1] - lengths[0] >= 200


def test_plain_chinese_text(corpus):
    for story in corpus:
        text = story["text"]
        assert not re.search(r"[A-Za-z0-9{}\"'!?,.:;]", text), text
        assert text.count("“") == text.count("”"), text
        assert re.search(r"[。！？]”?$", text), text
        assert "\n" not in text


def test_openings_continue_the_configured_prompts(corpus):
    starts = [s["text"] for s in corpus]
    assert any(t.startswith("从前，有一个叫莉莉的小女孩") for t in starts)
    assert sum(t.startswith("在森林里，") for t in starts) >= 10
    boys = "|".join(BOY_NAMES)
    assert sum(bool(re.match(f"有一天，({boys})和他的狗", t)) for t in starts) >= 10
    assert sum(t.startswith("从前，") for t in starts) >= 0.2 * len(starts)
    assert sum(t.startswith("有一天，") for t in starts) >= 0.05 * len(starts)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_write_jsonl_round_trip(tmp_path):
    path = tmp_path / "sub" / "stories.jsonl"
    write_jsonl(path, 25, 9)
    assert read_jsonl(path) == [{"text": t} for t in texts(25, 9)]
    raw = path.read_text(encoding="utf-8")
    # ensure_ascii=False: Chinese characters are written as they are, not as \uXXXX.
    assert "\\u" not in raw and re.search("[\u4e00-\u9fff]", raw)


def test_write_jsonl_text_field(tmp_path):
    path = tmp_path / "stories.jsonl"
    write_jsonl(path, 3, 9, text_field="content")
    assert [r["content"] for r in read_jsonl(path)] == texts(3, 9)


def test_main_writes_the_same_file(tmp_path):
    main(["--num-stories", "12", "--seed", "4", "--out", str(tmp_path / "a.jsonl")])
    write_jsonl(tmp_path / "b.jsonl", 12, 4)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_cli(tmp_path):
    out = tmp_path / "x.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    subprocess.run([sys.executable, "-m", "storylm.stories.storygen", "--num-stories", "10", "--seed", "1",
                    "--out", str(out)], cwd=REPO, env=env, check=True)
    assert [r["text"] for r in read_jsonl(out)] == texts(10, 1)
