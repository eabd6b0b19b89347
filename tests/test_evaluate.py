"""The evaluate stage's extra sets: bits per character on a tiny random-init checkpoint, stories found in
the train split, and clear errors for bad sets."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import REPO
from storylm import evaluate
from storylm.io.entry import StageError, run_stage
from storylm.io.jsonl import write_texts
from storylm.model.checkpoint import load_model
from storylm.model.tokens import StoryTokenizer
from tiny_checkpoint import make_checkpoint

SEQ = 8


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_model(checkpoint, device="cpu")


@pytest.fixture
def corpus(tmp_path):
    """A corpus stage folder: train.jsonl and the stats.json that says how it was cleaned (NFC)."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    write_texts(folder / "train.jsonl", ["小熊在河边钓鱼。", "小兔子在森林里采蘑菇。", "Café au lait."])
    (folder / "stats.json").write_text(json.dumps({"settings": {"normalize": "NFC"}}))
    return folder / "train.jsonl"


def extra(model, checkpoint, entries, train, batch_size=3):
    stats = train.parent / "stats.json" if train else None
    return evaluate.evaluate_extra_sets(model, StoryTokenizer(checkpoint), entries, train, stats, SEQ, batch_size)


# -- bits per character ------------------------------------------------------------------------


def test_every_token_but_the_first_is_scored_once(model):
    """With all logits equal, each scored token costs ln(padded_vocab_size) nats: a count of scored tokens."""
    uniform = model  # the shared model: its head is put back at the end
    head = uniform.lm_head.weight.detach().clone()
    try:
        with torch.no_grad():
            uniform.lm_head.weight.zero_()
        vocab = uniform.config.padded_vocab_size
        for length in (1, 2, SEQ, SEQ + 1, SEQ + 2, 3 * SEQ + 1, 3 * SEQ + 5):
            nats, scored = evaluate.stream_nats(uniform, list(range(length)), SEQ, batch_size=2)
            assert scored == length - 1
            assert nats == pytest.approx((length - 1) * math.log(vocab), rel=1e-5)
    finally:
        with torch.no_grad():
            uniform.lm_head.weight.copy_(head)


def test_one_window_is_plain_cross_entropy_and_batching_changes_nothing(model):
    ids = [5, 17, 40, 3, 99, 250, 12, 7, 2]  # SEQ + 1 tokens: one window
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]]))
        expected = torch.nn.functional.cross_entropy(logits[0], torch.tensor(ids[1:]), reduction="sum").item()
    assert evaluate.stream_nats(model, ids, SEQ, batch_size=4)[0] == pytest.approx(expected, rel=1e-5)
    long = (ids * 5)[:41]
    assert evaluate.stream_nats(model, long, SEQ, 1)[0] == pytest.approx(evaluate.stream_nats(model, long, SEQ, 8)[0],
                                                                          rel=1e-5)


def test_extra_set_bits_per_character(model, checkpoint, corpus, tmp_path):
    stories = ["小熊在河边钓鱼。", "一只小猫在睡觉。", "小熊在河边钓鱼。"]
    path = tmp_path / "mine.jsonl"
    lines = [json.dumps({"story": {"zh": s}}, ensure_ascii=False) for s in stories[:2] + [" "] + stories[2:]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = extra(model, checkpoint, [{"path": str(path), "text_field": "story.zh"}], corpus)["mine"]
    ids = [t for story in StoryTokenizer(checkpoint).encode_batch(stories) for t in story]
    nats, _ = evaluate.stream_nats(model, ids, SEQ, 3)
    assert result["stories"] == 3 and result["characters"] == 24 and result["tokens"] == len(ids)
    assert result["empty_stories_skipped"] == 1
    assert result["tokens_scored"] == len(ids) - 1
    assert result["bits_per_character"] == pytest.approx(nats / math.log(2) / 24)
    # A random-init model knows nothing: about log2(320) bits a token, so several bits a character.
    assert 2 < result["bits_per_character"] < 3 * math.log2(320)
    assert result["stories_in_train"] == 2 and result["stories_in_train_fraction"] == pytest.approx(2 / 3)


def test_txt_set_is_cleaned_like_the_corpus_before_the_train_lookup(model, checkpoint, corpus, tmp_path):
    # NFD é and surrounding blanks: equal to the NFC train story once cleaned. A blank line is no story.
    path = tmp_path / "notes.txt"
    path.write_text("  Cafe\u0301 au lait.  \n\n   \n小猫。\n", encoding="utf-8")
    result = extra(model, checkpoint, [{"path": str(path), "name": "mine"}], corpus)["mine"]
    assert result["stories"] == 2 and result["characters"] == len("Café au lait.") + len("小猫。")
    assert result["empty_stories_skipped"] == 0  # blank lines are no stories, in .txt as in .jsonl
    assert result["stories_in_train"] == 1


# -- bad input ----------------------------------------------------------------------------------


def test_missing_extra_set_names_the_key_and_the_file(tmp_path):
    with pytest.raises(StageError) as error:
        evaluate.extra_sets.check_entries([{"path": str(tmp_path / "no.jsonl")}])
    assert str(error.value) == f"evaluate.extra_sets[0].path: {tmp_path / 'no.jsonl'} does not exist"


def test_other_bad_entries(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    (tmp_path / "b.csv").write_text("text\nx\n")
    with pytest.raises(StageError, match=r"^evaluate.extra_sets\[1\].path: .*b.csv is neither a .jsonl file"):
        evaluate.extra_sets.check_entries([{"path": str(tmp_path / "a.jsonl")}, {"path": str(tmp_path / "b.csv")}])
    with pytest.raises(StageError, match=r"^evaluate.extra_sets\[1\].name: 'a' is also the name of evaluate.extra_sets\[0\]"):
        evaluate.extra_sets.check_entries([{"path": str(tmp_path / "a.jsonl")}, {"path": str(tmp_path / "a.jsonl")}])


@pytest.mark.parametrize("lines, message", [
    ('{"text": "好"}\n{"story": "好"}\n', "line 2: no field 'text' (evaluate.extra_sets[0].text_field)"),
    ('{"text": 3}\n', "line 1: field 'text' is a int, not text (evaluate.extra_sets[0].text_field)"),
    ('{"text": "好"\n', "line 1: not a JSON object"),
    ('{"text": "  "}\n', ": no stories (evaluate.extra_sets[0].path)"),
])
def test_bad_lines_name_file_line_and_key(model, checkpoint, corpus, tmp_path, lines, message):
    path = tmp_path / "set.jsonl"
    path.write_text(lines, encoding="utf-8")
    with pytest.raises(StageError) as error:
        extra(model, checkpoint, [{"path": str(path), "text_field": "text"}], corpus)
    assert str(error.value).startswith(f"{path}{message}" if message.startswith(":") else f"{path} {message}")


def test_stage_command_fails_in_one_line_before_loading_the_model(checkpoint, tmp_path, capsys):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "stats.json").write_text("{}")
    (tmp_path / "train.log").write_text("")
    settings = {"max_tokens": 10, "batch_size": 2, "extra_sets": [{"path": "nowhere.jsonl", "text_field": "text"}]}
    record = json.dumps({"stage": "evaluate", "hash": "h", "inputs": {}, "config": settings})
    inputs = {"final model": checkpoint / "lit_model.pth", "shards": shards / "stats.json",
              "train log": tmp_path / "train.log", "train split": tmp_path / "train.jsonl"}
    rc = run_stage(evaluate.main, ["--record", record, "--inputs", json.dumps({r: str(p) for r, p in inputs.items()}),
                                   "--seq-length", str(SEQ), "--out", str(tmp_path / "out")])
    assert rc == 1
    assert capsys.readouterr().err == "error: evaluate.extra_sets[0].path: nowhere.jsonl does not exist\n"
    assert not (tmp_path / "out").exists()


def test_schema_fills_the_extra_set_defaults():
    from snakemake.utils import validate

    config = {"evaluate": {"extra_sets": [{"path": "mine.txt"}]}}
    validate(config, str(REPO / "config" / "schema.yaml"))
    assert config["evaluate"]["extra_sets"] == [{"path": "mine.txt", "text_field": "text", "name": None}]
    assert config["sample"]["num_figure_samples"] == 300 and config["sample"]["copy_ngram"] == 20
