"""The ChatGLM3-6B tokenizer (the reference run's) through litgpt, the shards stage and litgpt's LitData.

Uses the real tokenizer files and the real stories under STORYLM_FIXTURES (see conftest.py): the
TinyStoriesChinese row 0 and 54 human-translated picture books. Skips without them.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from snakemake.utils import validate

from conftest import (
    CHATGLM3_DIR,
    HAVE_REAL_STORIES,
    NO_REAL_STORIES,
    PICTUREBOOKS,
    REPO,
    TINYSTORIES_ROW,
    needs_chatglm3,
)
from storylm import shards
from storylm.io.jsonl import write_texts
from storylm.model.tokens import StoryTokenizer
from storylm.plan import config as storylm_config
from storylm.plan.config import ConfigError
from storylm.tokenizer import tokenizer_stats

pytestmark = needs_chatglm3

EOS = 2
SEQ = 63  # LitData windows of SEQ + 1 tokens


def fixture_stories() -> list[str]:
    """Row 0 of TinyStoriesChinese, then the picture books, as the pipeline reads them (story_zh)."""
    stories = []
    for path in (TINYSTORIES_ROW, PICTUREBOOKS):
        with open(path, encoding="utf-8") as f:
            stories += [json.loads(line)["story_zh"] for line in f if line.strip()]
    return stories


@pytest.fixture(scope="module")
def tokenizer():
    return StoryTokenizer(CHATGLM3_DIR)


@pytest.fixture(scope="module")
def stories():
    if not HAVE_REAL_STORIES:
        pytest.skip(NO_REAL_STORIES)
    stories = fixture_stories()
    assert len(stories) == 55
    return stories


# ---------------------------------------------------------------------------
# The tokenizer as litgpt loads it


def test_litgpt_loads_it_through_sentencepiece(tokenizer):
    assert tokenizer.backend == "sentencepiece"
    assert tokenizer.vocab_size == 64789
    assert (tokenizer.bos_id, tokenizer.eos_id) == (1, 2)
    assert tokenizer.use_bos is False
    assert tokenizer.unk_id == 0 and tokenizer.ids == 64789 and tokenizer.file == CHATGLM3_DIR / "tokenizer.model"


def test_encode_of_the_reference_sentence(tokenizer):
    ids = tokenizer.encode("莉莉和本是朋友。", eos=True)
    assert ids.tolist() == [30910, 56623, 56623, 54542, 50154, 31761, 31155, 2]
    assert tokenizer.decode(ids[:-1]) == "莉莉和本是朋友。"


def test_newline_is_the_byte_fallback_token(tokenizer):
    assert tokenizer.piece(13) == "<0x0A>"
    assert 13 in tokenizer.encode("第一行\n第二行").tolist()
    assert tokenizer.decode(tokenizer.encode("第一行\n第二行")) == "第一行\n第二行"


def test_encode_batch_is_litgpts_encode_with_eos(tokenizer, stories):
    from litgpt import Tokenizer

    litgpt = Tokenizer(CHATGLM3_DIR)
    expected = [litgpt.encode(story, eos=True).tolist() for story in stories]
    assert tokenizer.encode_batch(stories, eos=True) == expected
    assert all(ids[-1] == EOS and EOS not in ids[:-1] for ids in expected)
    assert all(ids[0] != tokenizer.bos_id for ids in expected)


def test_every_fixture_story_round_trips(tokenizer, stories):
    for story, ids in zip(stories, tokenizer.encode_batch(stories, eos=False), strict=True):
        assert tokenizer.decode(torch.tensor(ids)) == story


def test_tokenizer_stats(tokenizer, stories):
    stats = tokenizer_stats(tokenizer, stories, batch_size=16)
    tokens = sum(len(tokenizer.encode(s)) for s in stories)
    characters = sum(len(s) for s in stories)
    assert stats["backend"] == "sentencepiece"
    assert stats["vocab_size"] == 64789
    assert (stats["bos_id"], stats["eos_id"], stats["use_bos"]) == (1, 2, False)
    assert stats["val_stories"] == 55
    assert stats["val_characters"] == characters
    assert stats["val_tokens"] == tokens  # EOS not counted
    assert stats["characters_per_token"] == pytest.approx(characters / tokens)
    # About 1.3-1.5 characters a token on children's stories in Chinese.
    assert 1.2 < stats["characters_per_token"] < 1.7
    # Every character of the fixtures is in the vocabulary or covered by byte fallback.
    assert stats["unknown_token_rate"] == 0.0


def test_rare_characters_are_bytes_not_unknown(tokenizer):
    # ChatGLM3 has byte fallback: characters outside its pieces become <0x..> byte tokens, never <unk>.
    text = "𠀀𠀁🦄"
    stats = tokenizer_stats(tokenizer, [text])
    assert stats["unknown_token_rate"] == 0.0
    assert stats["characters_per_token"] < 1
    assert tokenizer.decode(tokenizer.encode(text)) == text


# ---------------------------------------------------------------------------
# Shards built by the pipeline, read back by litgpt


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory, stories):
    """Shards of the fixture stories: the first 40 for train, the other 15 for val."""
    root = tmp_path_factory.mktemp("chatglm3_shards")
    corpus = root / "corpus"
    corpus.mkdir()
    write_texts(corpus / "train.jsonl", stories[:40])
    write_texts(corpus / "val.jsonl", stories[40:])
    out = root / "shards"
    stats = shards.build(corpus, CHATGLM3_DIR, out, chunk_bytes="64MB", batch_size=8, workers=2)
    (out / "stats.json").write_text(json.dumps(stats))
    return out


def token_stream(tokenizer, texts: list[str]) -> list[int]:
    return [i for text in texts for i in tokenizer.encode(text, eos=True).tolist()]


def lit_data(shard_dir: Path, batch_size: int, seq: int):
    from litgpt.data import LitData

    data = LitData(data_path=shard_dir, split_names=("train", "val"), num_workers=0)
    data.connect(tokenizer=None, batch_size=batch_size, max_seq_length=seq)
    data.setup()
    return data


def test_shard_stats_count_every_token(shard_dir, tokenizer, stories):
    stats = json.loads((shard_dir / "stats.json").read_text())
    assert stats["train_tokens"] == len(token_stream(tokenizer, stories[:40]))
    assert stats["val_tokens"] == len(token_stream(tokenizer, stories[40:]))
    assert stats["train_stories"] == 40 and stats["val_stories"] == 15


def test_litdata_val_stream_is_the_stories_joined_by_eos(shard_dir, tokenizer, stories):
    """Windows of 1 token: the val loader (not shuffled) gives back the whole stream in corpus order."""
    data = lit_data(shard_dir, batch_size=1, seq=0)
    stream = [int(batch.item()) for batch in data.val_dataloader()]
    assert stream == token_stream(tokenizer, stories[40:])
    pieces = _split_on_eos(stream)
    assert [tokenizer.decode(torch.tensor(p)) for p in pieces] == stories[40:]


def chunk_windows(split_dir: Path, stream: list[int], window: int) -> list[tuple[int, ...]]:
    """The windows litdata's TokensLoader cuts: within each chunk (in index order), its tail dropped."""
    index = json.loads((split_dir / "index.json").read_text())
    windows, start = [], 0
    for chunk in index["chunks"]:
        end = start + chunk["dim"]
        windows += [tuple(stream[i: i + window]) for i in range(start, end - window + 1, window)]
        start = end
    assert start == len(stream)
    return windows


def test_litdata_windows_as_pretraining_sees_them(shard_dir, tokenizer, stories):
    """Windows of SEQ + 1 tokens: val in order, train shuffled but the same windows."""
    data = lit_data(shard_dir, batch_size=4, seq=SEQ)
    window = SEQ + 1
    # Two workers each wrote their own chunk of each split.
    assert len(json.loads((shard_dir / "val" / "index.json").read_text())["chunks"]) == 2

    expected_val = chunk_windows(shard_dir / "val", token_stream(tokenizer, stories[40:]), window)
    val = torch.cat(list(data.val_dataloader()))
    assert val.shape[1] == window and val.dtype == torch.int32
    assert [tuple(row) for row in val.tolist()] == expected_val[: len(expected_val) // 4 * 4]

    expected_train = chunk_windows(shard_dir / "train", token_stream(tokenizer, stories[:40]), window)
    train = torch.cat(list(data.train_dataloader()))
    assert train.shape[0] == len(expected_train) // 4 * 4  # only the incomplete last batch is dropped
    got = Counter(tuple(row) for row in train.tolist())
    assert not got - Counter(expected_train)

    # With windows of one token nothing is dropped: the shuffled train stream holds every token.
    full = lit_data(shard_dir, batch_size=1, seq=0)
    assert Counter(int(b.item()) for b in full.train_dataloader()) == Counter(token_stream(tokenizer, stories[:40]))


def _split_on_eos(stream: list[int]) -> list[list[int]]:
    pieces, current = [], []
    for token in stream:
        if token == EOS:
            pieces.append(current)
            current = []
        else:
            current.append(token)
    assert current == [], "the stream ends with EOS"
    return pieces


# ---------------------------------------------------------------------------
# The config checks against this tokenizer


def model_with_vocab(model_config: dict, tokenizer_dir):
    """What the pretrain_config stage renders: vocab_size filled from the tokenizer, and checked."""
    from storylm.pretrain import model_with_vocab as render_vocab

    return render_vocab(model_config, tokenizer_dir)


def microstories_config() -> dict:
    config = yaml.safe_load((REPO / "config" / "microstories.yaml").read_text())
    validate(config, str(REPO / "config" / "schema.yaml"))
    config["tokenizer"].update(source="local", path=str(CHATGLM3_DIR))
    return config


def test_the_reference_vocab_size_passes():
    config = microstories_config()
    storylm_config.check(config)
    assert storylm_config.tokenizer_vocab_size(config) == 64789
    assert model_with_vocab(config["model_config"], CHATGLM3_DIR)["vocab_size"] == 64798


def test_a_model_vocab_smaller_than_the_tokenizer_is_an_error():
    config = microstories_config()
    config["model_config"]["vocab_size"] = 64788
    with pytest.raises(ConfigError, match=r"model_config\.vocab_size"):
        storylm_config.check(config)


def test_vocab_size_left_out_is_the_tokenizers():
    config = microstories_config()
    del config["model_config"]["vocab_size"]
    del config["model_config"]["padded_vocab_size"]
    storylm_config.check(config)
    assert model_with_vocab(config["model_config"], CHATGLM3_DIR)["vocab_size"] == 64789
