"""The sample figures on hand-computable texts, train copy on a small train file, and the sample stage
end to end on a tiny random-init checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import REPO, load_json
from storylm import sample
from storylm.io.entry import run_stage
from storylm.io.jsonl import iter_texts, write_texts
from storylm.stories import train_copy
from storylm.stories.sample_metrics import (
    continuation,
    distinct_n,
    figures,
    repeated_ngram_counts,
    repeated_ngram_fraction,
)
from tiny_checkpoint import make_checkpoint

# -- figures on texts whose values are known by hand ------------------------------------


def test_repeated_4grams_within_a_story():
    assert repeated_ngram_counts("abcabc", 4) == (0, 3)  # abca bcab cabc
    assert repeated_ngram_counts("aaaaaa", 4) == (2, 3)  # aaaa three times: two repeats
    assert repeated_ngram_counts("小猫跑了小猫跑了", 4) == (1, 5)  # 小猫跑了 twice
    assert repeated_ngram_counts("abc", 4) == (0, 0)
    # Pooled over stories, and a 4-gram repeated across two stories is no repeat.
    assert repeated_ngram_fraction(["aaaaaa", "abcabc"]) == pytest.approx(2 / 6)
    assert repeated_ngram_fraction(["abcd", "abcd"]) == 0.0
    assert repeated_ngram_fraction(["abc"]) is None


def test_distinct_2_across_samples():
    assert distinct_n(["abab", "ab"], 2) == pytest.approx(2 / 4)  # ab ba ab | ab
    assert distinct_n(["我爱你", "你爱我"], 2) == 1.0
    assert distinct_n(["小猫小猫"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["a", ""], 2) is None


def test_continuation_leaves_the_prompt_out():
    assert continuation("从前，小猫睡了。", "从前，") == "小猫睡了。"
    assert continuation(" 从前，小猫睡了。", "从前，") == " 从前，小猫睡了。"  # not its prompt: all of it


def test_figures_of_a_run():
    samples = [
        {"prompt": "P:", "text": "P:abab", "finished": True},
        {"prompt": "P:", "text": "P:aaaaaa", "finished": False},
    ]
    train = ["xxabxx", "aaa"]
    result = figures(samples, train, copy_n=3, reference_texts=["xab", "zzz"])
    assert result["num_samples"] == 2
    assert result["finished_fraction"] == 0.5
    # 4-grams of the whole stories: P:ab :aba abab (no repeat); P:aa :aaa aaaa aaaa aaaa (2 repeats)
    assert result["repeated_4gram_fraction"] == pytest.approx(2 / 8)
    # bigrams of the continuations: ab ba ab | aa aa aa aa aa -> {ab, ba, aa} of 8
    assert result["distinct_2"] == pytest.approx(3 / 8)
    # 3-grams of the continuations: aba bab | aaa x4; only aaa is in the train split
    assert result["train_copy_fraction"] == pytest.approx(4 / 6)
    assert result["train_copy_n"] == 3 and result["train_copy_ngrams"] == 6
    # reference: xab (found) | zzz (not)
    assert result["reference_copy_fraction"] == 0.5 and result["reference_stories"] == 2
    assert result["continuation_chars"] == 10


# -- train copy ----------------------------------------------------------------------------


def test_train_copy_counts_occurrences_and_never_spans_two_train_stories():
    train = ["abcdefgh", "xyz12345"]
    result = train_copy.train_copy({"s": ["cdefXX", "ghxy", "cdecde"]}, train, 3)["s"]
    # cde def efX fXX | ghx hxy | cde dec ecd cde: found cde, def, cde, cde; ghx and hxy would span two stories
    assert result == {"train_copy_fraction": 4 / 10, "ngrams": 10, "ngrams_found": 4}


def test_train_copy_of_texts_shorter_than_n_is_none():
    assert train_copy.train_copy({"s": ["ab"], "t": []}, ["abc"], 3) == {
        "s": {"train_copy_fraction": None, "ngrams": 0, "ngrams_found": 0},
        "t": {"train_copy_fraction": None, "ngrams": 0, "ngrams_found": 0},
    }


def test_train_copy_stops_reading_once_everything_is_found():
    def train():
        yield "一只小猫在睡觉"
        raise AssertionError("read past the point where every n-gram was found")

    assert train_copy.train_copy({"s": ["小猫在睡"]}, train(), 3)["s"]["train_copy_fraction"] == 1.0


def test_rebuilding_the_automaton_does_not_change_the_answer(monkeypatch):
    from storylm.stories.storygen import generate_stories

    train = [s["text"] for s in generate_stories(300, 1)]
    samples = [s["text"][5:] for s in generate_stories(20, 2)]
    expected = train_copy.train_copy({"s": samples}, train, 8)["s"]
    assert 0 < expected["train_copy_fraction"] < 1  # both found and missing n-grams: the test means something
    monkeypatch.setattr(train_copy, "REBUILD_RATIO", 0)  # rebuild after every story that wastes a match
    assert train_copy.train_copy({"s": samples}, train, 8)["s"] == expected


def test_train_copy_reads_the_train_split_file(tmp_path):
    write_texts(tmp_path / "train.jsonl", ["小兔子在森林里采蘑菇。", "小熊在河边钓鱼。"])
    result = train_copy.train_copy({"s": ["它在河边钓鱼", "它在山上"]}, iter_texts(tmp_path / "train.jsonl"), 4)
    # 它在河边 在河边钓 河边钓鱼 | 它在山上: the last two of the first are in the file
    assert result["s"]["train_copy_fraction"] == pytest.approx(2 / 4)


# -- the sample stage on a tiny random-init checkpoint ----------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


def sample_settings(**changes) -> dict:
    settings = {"prompts": ["从前，有一个叫莉莉的小女孩", "小熊"], "num_samples": 1, "num_figure_samples": 5,
                "copy_ngram": 4, "max_new_tokens": 8, "temperature": 0.8, "top_k": 50, "top_p": 1.0, "seed": 7}
    return {**settings, **changes}


def run_sample(checkpoint, tmp_path, out_name: str, settings: dict, train=None) -> int:
    if train is None:
        train = tmp_path / "train.jsonl"
        write_texts(train, ["从前，有一个叫莉莉的小女孩。她很喜欢画画。", "小熊在河边钓鱼。"])
    write_texts(tmp_path / "val.jsonl", ["小熊在河边玩。"])
    record = json.dumps({"stage": "sample", "hash": "h", "inputs": {}, "config": settings})
    inputs = {"final model": str(checkpoint / "lit_model.pth"), "train split": str(train),
              "val split": str(tmp_path / "val.jsonl")}
    return run_stage(sample.main, ["stories", "--record", record, "--hashes", '{"sample": "h"}', "--inputs",
                                   json.dumps(inputs), "--out", str(tmp_path / out_name)])


def test_sample_stage_writes_figures_of_all_drawn_stories(checkpoint, tmp_path):
    assert run_sample(checkpoint, tmp_path, "out", sample_settings()) == 0
    out = tmp_path / "out"
    samples, figs = load_json(out / "samples.json"), load_json(out / "figures.json")
    # 5 figure samples over 2 prompts: 3 per prompt, the first of each shown
    assert [(s["prompt"][:2], s["sample"], s["shown"]) for s in samples] == [
        ("从前", 1, True), ("从前", 2, False), ("从前", 3, False), ("小熊", 1, True), ("小熊", 2, False),
        ("小熊", 3, False)]
    assert figs["num_samples"] == 6 and load_json(out / "consistency.json")["num_samples"] == 6
    assert figs["finished_fraction"] == sum(s["finished"] for s in samples) / 6
    assert figs["train_copy_n"] == 4 and figs["reference_stories"] == 1
    assert figs["reference_copy_fraction"] == 0.5  # 小熊在河 熊在河边 | 在河边玩 河边玩。 are not in train
    text = (out / "samples.txt").read_text(encoding="utf-8")
    assert text.count("--- story") == 2
    assert f"# figures (of 6 samples): finished {figs['finished_fraction']:.3f}," in text
    assert load_json(out / "config.json")["config"] == sample_settings()


def test_shown_stories_do_not_depend_on_num_figure_samples(checkpoint, tmp_path):
    assert run_sample(checkpoint, tmp_path, "few", sample_settings(num_figure_samples=1)) == 0
    assert run_sample(checkpoint, tmp_path, "many", sample_settings(num_figure_samples=5)) == 0
    few, many = load_json(tmp_path / "few/samples.json"), load_json(tmp_path / "many/samples.json")
    assert len(few) == 2  # never fewer than the shown ones
    assert [s["text"] for s in few] == [s["text"] for s in many if s["shown"]]


def test_missing_train_split_is_one_line_naming_the_file(checkpoint, tmp_path, capsys):
    missing = tmp_path / "nowhere" / "train.jsonl"
    assert run_sample(checkpoint, tmp_path, "out", sample_settings(), train=missing) == 1
    err = capsys.readouterr().err
    assert err == f"error: {missing}: the train split does not exist (run the corpus stage)\n"
    assert not (tmp_path / "out").exists()


def test_padded_vocabulary_rows_are_never_sampled(checkpoint):
    """The model has 320 rows (300 ids padded to a multiple of 64): sampling must never pick 300..319."""
    from storylm.model.checkpoint import load_model
    from storylm.model.tokens import StoryTokenizer
    from storylm.sample import never_sample_beyond

    model, tokenizer = load_model(checkpoint), StoryTokenizer(checkpoint)
    assert (model.config.padded_vocab_size, tokenizer.ids) == (320, 300)
    with torch.no_grad():
        # Make every padded row the most likely token: without the mask, greedy decoding picks one.
        model.lm_head.weight[300:] = 1e3 * model.lm_head.weight[:300].abs().max()
        model.transformer.ln_f.weight.fill_(1.0)
        idx = torch.randint(0, 300, (2, 8))
        assert (model(idx).argmax(-1) >= 300).any()
        never_sample_beyond(model, tokenizer.ids)
        logits = model(idx)
    assert torch.isinf(logits[..., 300:]).all() and torch.isfinite(logits[..., :300]).all()
    assert (logits.argmax(-1) < 300).all()


@pytest.mark.parametrize("settings", [
    {"temperature": 0.8, "top_k": 50, "top_p": 1.0},
    {"temperature": 0.0, "top_k": None, "top_p": 1.0},
    {"temperature": 1.0, "top_k": None, "top_p": 0.9},
], ids=["top_k", "greedy", "top_p"])
def test_batched_sampling_writes_the_stories_litgpt_generate_writes(checkpoint, settings):
    """The sample stage draws a prompt's stories in batches (storylm.model.generation); each must be the story
    litgpt's own generate writes from the same seed, one at a time, including where it ends: the end-of-text
    token is made likely here, so stories of one batch end at different lengths."""
    import sys

    from storylm.model.checkpoint import load_model
    from storylm.model.tokens import StoryTokenizer
    from storylm.sample import never_sample_beyond, sample_prompt

    sys.path.insert(0, str(REPO / "workflow" / "benchmarks"))
    from sample_speed import one_at_a_time  # litgpt.generate.base.generate, story by story

    torch.set_num_threads(1)  # one summation order: a batched product may round a last bit otherwise
    model, tokenizer = load_model(checkpoint), StoryTokenizer(checkpoint)
    never_sample_beyond(model, tokenizer.ids)
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_id] *= 5
    settings = {**settings, "max_new_tokens": 12}
    seeds = list(range(100, 112))
    batched = sample_prompt(model, tokenizer, "小熊", seeds, settings)
    assert batched == one_at_a_time(model, tokenizer, "小熊", seeds, settings)
    if settings["temperature"]:
        lengths = {len(text) for text, finished in batched if finished}
        assert 0 < sum(finished for _, finished in batched) < len(seeds) and len(lengths) > 1
