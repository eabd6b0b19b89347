"""tokenizer.max_train_characters: the BPE trains on a uniform, deterministic sample of the train split."""

from __future__ import annotations

import hashlib

from storylm.io.jsonl import iter_texts
from storylm.plan import stages
from storylm.plan.schema import defaults
from storylm.stories.storygen import write_jsonl
from storylm.tokenizer import train_bpe, training_texts


def kept_by_hash(texts, budget, total):
    """The selection rule, written out: keep a story when its 64-bit hash is below budget/total of the range."""
    threshold = int(budget / total * 2**64)
    return [t for t in texts if int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "big") < threshold]


def test_a_budget_keeps_a_hash_chosen_share_of_the_stories(tmp_path):
    path = tmp_path / "train.jsonl"
    write_jsonl(path, 2000, seed=5)
    texts = list(iter_texts(path))
    total = sum(map(len, texts))
    budget = total // 4
    sample = list(training_texts(path, budget))
    assert sample == kept_by_hash(texts, budget, total)  # in file order, each story at most once
    assert 0.2 * len(texts) < len(sample) < 0.3 * len(texts)  # about a quarter of 2,000 stories
    assert abs(sum(map(len, sample)) - budget) < 0.1 * budget
    assert list(training_texts(path, budget)) == sample  # the same file and budget: the same sample


def test_a_budget_above_the_corpus_or_none_keeps_every_story(tmp_path):
    path = tmp_path / "train.jsonl"
    write_jsonl(path, 300, seed=5)
    texts = list(iter_texts(path))
    assert list(training_texts(path, None)) == texts
    assert list(training_texts(path, sum(map(len, texts)))) == texts


def test_the_budget_is_part_of_the_tokenizer_hash():
    config = defaults()
    del config["runs"]
    smaller = defaults()
    del smaller["runs"]
    smaller["tokenizer"]["max_train_characters"] = 1000
    assert stages.hashes(config)["tokenizer"] != stages.hashes(smaller)["tokenizer"]
    assert stages.hashes(config)["corpus"] == stages.hashes(smaller)["corpus"]


def test_a_sampled_tokenizer_differs_from_the_full_one(tmp_path):
    path = tmp_path / "train.jsonl"
    write_jsonl(path, 600, seed=5)
    total = sum(map(len, iter_texts(path)))
    train_bpe(training_texts(path, None), 400, 2, tmp_path / "full")
    train_bpe(training_texts(path, total), 400, 2, tmp_path / "same")
    train_bpe(training_texts(path, total // 10), 400, 2, tmp_path / "tenth")
    full = (tmp_path / "full/tokenizer.json").read_text()
    assert (tmp_path / "same/tokenizer.json").read_text() == full
    assert (tmp_path / "tenth/tokenizer.json").read_text() != full
