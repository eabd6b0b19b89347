"""The export stage: litgpt checkpoints as Hugging Face folders that transformers loads as they are.

Real litgpt, transformers and tokenizers on tiny models, briefly trained here so that logits and
samples mean something: one of the default kind (trained byte-level BPE, n_head x head_size =
n_embd, tied embeddings, padded vocabulary), one shaped like microstories (6 heads x 8 = 48
attention channels against n_embd 64, the real ChatGLM3 tokenizer from ../shared/fixtures,
65,024 padded vocabulary; skipped without it) and one with grouped-query attention, an untied
head and bf16 weights.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from conftest import CHATGLM3_DIR as CHATGLM3
from conftest import STORIES_DIR, needs_chatglm3
from storylm import export
from storylm.hub import export_check, model_card
from storylm.hub import folder as export_folder
from storylm.io.entry import run_stage
from storylm.io.filehash import file_sha256
from storylm.io.jsonl import write_texts
from storylm.model.tokens import StoryTokenizer
from storylm.plan.schema import defaults
from storylm.sample import sample_all
from storylm.stories import consistency
from storylm.stories.storygen import generate_stories
from storylm.tokenizer import train_bpe

REPO = Path(__file__).resolve().parents[1]

PROMPT = "从前，有一个叫莉莉的小女孩"
HAN = re.compile(r"[\u4e00-\u9fff]")
SEQ = 64
RECORD = {"stage": "export", "hash": "e0e0e0e0e0", "inputs": {"pretrain": "p1p1p1p1p1", "evaluate": "v2v2v2v2v2",
                                                                "sample": "s3s3s3s3s3"},
          "config": {"corpus": {"source": "builtin", "builtin": {"num_stories": 6000, "seed": 1234}, "dedup": True}}}
METRICS = {"val_story_bits_per_character": 1.1, "val_story_bits_per_character_convention": "whole stories",
           "val_bits_per_character": 1.2345, "val_loss_nats_per_token": 0.987, "val_perplexity": 2.683,
           "parameters": 0, "train_steps": 75, "train_iters": 75, "resumed_from": []}
SAMPLE_SETTINGS = {"prompts": [PROMPT], "num_samples": 1, "max_new_tokens": 24, "temperature": 0.8, "top_k": 20,
                   "top_p": 1.0, "seed": 7, "num_figure_samples": 1, "copy_ngram": 20}
DEFAULT_MODEL = dict(name="storylm-tiny", block_size=SEQ, n_layer=2, n_head=4, n_embd=32, head_size=8,
                     intermediate_size=64, mlp_class_name="LLaMAMLP", norm_class_name="RMSNorm", bias=False,
                     parallel_residual=False, rotary_percentage=1.0, norm_eps=1e-5)


def stories(n: int, seed: int) -> list[str]:
    return [story["text"] for story in generate_stories(n, seed)]


def fixture_stories() -> list[str]:
    texts = []
    for name in ("tinystories_zh_row0.jsonl", "picturebooks_ccby.jsonl"):
        path = STORIES_DIR / name
        if path.is_file():
            texts += [json.loads(line)["story_zh"] for line in path.read_text(encoding="utf-8").splitlines() if line]
    return texts


def token_stream(tokenizer, texts: list[str]) -> torch.Tensor:
    """The texts as the shards stage makes them: litgpt ids, eos after each story, end to end."""
    return torch.tensor([i for ids in tokenizer.encode_batch(texts) for i in ids])


def windows(stream: torch.Tensor, batch: int) -> torch.Tensor:
    return stream[: batch * SEQ].view(batch, SEQ).long()


def make_checkpoint(root: Path, model_config: dict, tokenizer_files: dict[str, Path] | None, tie: bool,
                    train_texts: list[str], steps: int, batch: int, dtype: torch.dtype = torch.float32) -> Path:
    """A litgpt checkpoint folder as pretrain leaves it (final/ with weights, config and tokenizer; pretrain.yaml
    beside it), from a GPT trained for a few steps so that it prefers the training text's tokens."""
    from litgpt import GPT, Config
    from litgpt.utils import save_config

    final = root / "pretrain" / "final"
    final.mkdir(parents=True)
    if tokenizer_files is None:
        train_bpe(train_texts, vocab_size=400, min_frequency=2, out_dir=final)
    else:
        for name, src in tokenizer_files.items():
            (final / name).write_bytes(src.read_bytes())
    tokenizer = StoryTokenizer(final)
    config = Config(**{"vocab_size": tokenizer.vocab_size, **model_config})
    torch.manual_seed(0)
    model = GPT(config)
    if tie:
        model.transformer.wte.weight = model.lm_head.weight
    stream = token_stream(tokenizer, train_texts)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        starts = torch.randint(0, len(stream) - SEQ - 1, (batch,), generator=generator)
        chunk = torch.stack([stream[s: s + SEQ + 1] for s in starts]).long()
        logits = model(chunk[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # As pretrain saves it: the whole state, weights under "model" (bf16 after precision bf16-true).
    state = {name: tensor.to(dtype) for name, tensor in model.state_dict().items()}
    torch.save({"model": state, "iter_num": steps}, final / "lit_model.pth")
    save_config(config, final)
    pretrain = {"model_name": config.name, "precision": "32-true", "devices": 1, "num_nodes": 1, "seed": 42,
                "train": {"global_batch_size": batch, "micro_batch_size": batch, "max_seq_length": SEQ,
                          "max_tokens": steps * batch * SEQ, "tie_embeddings": tie},
                "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.01}}}
    (root / "pretrain" / "pretrain.yaml").write_text(yaml.safe_dump(pretrain))
    return final


def make_stage_dirs(root: Path, checkpoint: Path) -> tuple[Path, Path]:
    """An evaluate folder with known metrics and a sample folder made by the real sample stage."""
    evaluate_dir = root / "evaluate"
    evaluate_dir.mkdir()
    (evaluate_dir / "metrics.json").write_text(json.dumps(METRICS))
    sample_dir = root / "sample"
    sample_dir.mkdir()
    samples = sample_all(checkpoint, SAMPLE_SETTINGS)
    (sample_dir / "samples.json").write_text(json.dumps(samples, ensure_ascii=False))
    (sample_dir / "consistency.json").write_text(json.dumps(consistency.score(samples)))
    # The figures file with keys the export has never heard of: the card must show them all the same;
    # a JSON file that holds no figures (the prompts' token counts) must not appear.
    (sample_dir / "figures.json").write_text(json.dumps({"distinct_2": 0.625, "finished_fraction": 0.5,
                                                         "nested": {"mean_characters": 41.5}}))
    (sample_dir / "prompt_tokens.json").write_text(json.dumps({"prompt_tokens": [9], "block_size": 32}))
    (sample_dir / "config.json").write_text(json.dumps({"stage": "sample", "config": SAMPLE_SETTINGS}))
    return evaluate_dir, sample_dir


def run_export(checkpoint: Path, out: Path, evaluate_dir: Path | None = None, sample_dir: Path | None = None,
               record: dict = RECORD, val: Path | None = None, tokenizer_dir: Path | None = None) -> int:
    files = {"final model": checkpoint / "lit_model.pth", "hyperparameters": checkpoint / "hyperparameters.yaml",
             "litgpt config": checkpoint.parent / "pretrain.yaml", "tokenizer": tokenizer_dir and tokenizer_dir / "tokenizer.json",
             "metrics": evaluate_dir and evaluate_dir / "metrics.json", "samples": sample_dir and sample_dir / "samples.json",
             "story scores": evaluate_dir and evaluate_dir / "story_scores.tsv", "val split": val,
             "sample checks": sample_dir and sample_dir / "consistency.json",
             "sample figures": sample_dir and sample_dir / "figures.json"}
    inputs = json.dumps({role: str(path) for role, path in files.items() if path})
    return run_stage(export.main, ["--record", json.dumps(record), "--inputs", inputs, "--out", str(out)])


class Kind:
    """One exported model: its litgpt checkpoint, its val texts and the export folder."""

    def __init__(self, root: Path, checkpoint: Path, val_texts: list[str], with_stages: bool = True,
                 tokenizer_dir: Path | None = None):
        self.root, self.checkpoint, self.val_texts = root, checkpoint, val_texts
        self.evaluate_dir, self.sample_dir = make_stage_dirs(root, checkpoint) if with_stages else (None, None)
        self.val = root / "val.jsonl"
        write_texts(self.val, val_texts)
        if with_stages:  # the evaluate stage's whole-story scores, by its own code
            from storylm.evaluate import story_scores, val_stories
            from storylm.model.checkpoint import load_model

            scores = story_scores(load_model(checkpoint, "cpu"), *val_stories(self.val, StoryTokenizer(checkpoint), None),
                                  SEQ, 8)
            scores.to_csv(self.evaluate_dir / "story_scores.tsv", sep="\t", index=False)
        self.folder = root / "export" / "e0e0e0e0e0"
        assert run_export(checkpoint, self.folder, self.evaluate_dir, self.sample_dir,
                          val=self.val if with_stages else None, tokenizer_dir=tokenizer_dir) == 0
        self.tokenizer = StoryTokenizer(checkpoint)  # litgpt's ids

    def lit_model(self):
        from storylm.model.checkpoint import load_model

        return load_model(self.checkpoint, device="cpu")

    def hf_model(self):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.folder, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def default_kind(tmp_path_factory) -> Kind:
    root = tmp_path_factory.mktemp("default")
    checkpoint = make_checkpoint(root, DEFAULT_MODEL, None, tie=True, train_texts=stories(300, 1), steps=40, batch=8)
    return Kind(root, checkpoint, val_texts=stories(40, 2))


@pytest.fixture(scope="module")
def microstories_kind(tmp_path_factory) -> Kind:
    if not (CHATGLM3 / "tokenizer.model").is_file():
        pytest.skip(needs_chatglm3.kwargs["reason"])
    root = tmp_path_factory.mktemp("microstories")
    model = {**DEFAULT_MODEL, "name": "microstories-tiny", "n_layer": 2, "n_head": 6, "n_query_groups": 6,
             "head_size": 8, "n_embd": 64, "intermediate_size": 96, "vocab_size": 64798, "padded_vocab_size": 65024}
    files = {name: CHATGLM3 / name for name in ("tokenizer.model", "tokenizer_config.json")}
    checkpoint = make_checkpoint(root, model, files, tie=True, train_texts=stories(200, 1), steps=12, batch=4)
    # The tokenizer stage's folder as the pipeline passes it: THUDM's files, their licence beside them.
    tokenizer_dir = root / "tokenizer"
    tokenizer_dir.mkdir()
    for name in ("tokenizer.model", "tokenizer_config.json", "MODEL_LICENSE"):
        if (CHATGLM3 / name).is_file():
            (tokenizer_dir / name).write_bytes((CHATGLM3 / name).read_bytes())
    return Kind(root, checkpoint, val_texts=fixture_stories() + stories(100, 2), tokenizer_dir=tokenizer_dir)


@pytest.fixture(scope="module")
def odd_kind(tmp_path_factory) -> Kind:
    """3 heads of 16 into a width of 32: a head width that does not divide the hidden size."""
    root = tmp_path_factory.mktemp("odd")
    model = {**DEFAULT_MODEL, "name": "odd-heads", "n_head": 3, "head_size": 16, "n_embd": 32}
    checkpoint = make_checkpoint(root, model, None, tie=True, train_texts=stories(300, 1), steps=30, batch=8)
    return Kind(root, checkpoint, val_texts=stories(40, 2))


@pytest.fixture(scope="module")
def gqa_untied_kind(tmp_path_factory) -> Kind:
    root = tmp_path_factory.mktemp("gqa")
    model = {**DEFAULT_MODEL, "name": "gqa-untied", "n_query_groups": 2}
    checkpoint = make_checkpoint(root, model, None, tie=False, train_texts=stories(300, 1), steps=20, batch=8,
                                 dtype=torch.bfloat16)
    return Kind(root, checkpoint, val_texts=stories(40, 2), with_stages=False)


KINDS = ["default_kind", pytest.param("microstories_kind", marks=needs_chatglm3)]


# ---------------------------------------------------------------------------
# Item 4 of the issue: logits, greedy generation, token ids, the pipeline


@pytest.mark.parametrize("kind", KINDS + ["gqa_untied_kind", "odd_kind"])
def test_transformers_logits_equal_litgpts_on_a_val_batch(kind, request):
    kind = request.getfixturevalue(kind)
    batch = windows(token_stream(kind.tokenizer, kind.val_texts), 4)
    with torch.no_grad():
        lit = kind.lit_model()(batch)
        hf = kind.hf_model()(batch).logits
    # Trained logits spread over whole units: a wrong weight name or split could not hide under 1e-4.
    assert lit.std() > 0.5
    assert hf.shape == lit.shape
    torch.testing.assert_close(hf, lit, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", KINDS + ["odd_kind"])
def test_greedy_generation_gives_the_same_tokens(kind, request):
    from litgpt.generate.base import generate

    kind = request.getfixturevalue(kind)
    prompt = kind.tokenizer.encode(PROMPT)
    lit_model = kind.lit_model()
    lit_model.set_kv_cache(batch_size=1, max_seq_length=len(prompt) + 30)
    lit_ids = generate(lit_model, prompt, len(prompt) + 30, temperature=0.0, eos_id=kind.tokenizer.eos_id).tolist()
    hf_ids = kind.hf_model().generate(prompt.long().unsqueeze(0), do_sample=False, max_new_tokens=30)[0].tolist()
    assert len(lit_ids) > len(prompt)
    assert hf_ids == lit_ids


@pytest.mark.parametrize("kind", KINDS)
def test_tokenizer_ids_equal_litgpts_on_the_val_split(kind, request):
    from transformers import AutoTokenizer

    kind = request.getfixturevalue(kind)
    hf = AutoTokenizer.from_pretrained(kind.folder)
    texts = kind.val_texts + list(export_check.PROBE_TEXTS)
    assert [hf(t)["input_ids"] for t in texts] == [kind.tokenizer.encode(t).tolist() for t in texts]
    # And back: the ids decode to the text litgpt decodes them to (both leave special tokens out).
    assert [hf.decode(kind.tokenizer.encode(t).tolist(), skip_special_tokens=True) for t in texts] == \
           [kind.tokenizer.decode(kind.tokenizer.encode(t)) for t in texts]


@needs_chatglm3
def test_chatglm3_goes_as_llama_tokenizers_with_litgpts_ids(microstories_kind):
    from transformers import AutoTokenizer, LlamaTokenizer, LlamaTokenizerFast

    fast = AutoTokenizer.from_pretrained(microstories_kind.folder)
    slow = AutoTokenizer.from_pretrained(microstories_kind.folder, use_fast=False)
    assert (type(fast), type(slow)) == (LlamaTokenizerFast, LlamaTokenizer)
    for tokenizer in (fast, slow):
        assert tokenizer("莉莉和本是朋友。")["input_ids"] + [tokenizer.eos_token_id] == \
               [30910, 56623, 56623, 54542, 50154, 31761, 31155, 2]
        assert 13 in tokenizer("第一行\n第二行")["input_ids"]
    texts = microstories_kind.val_texts
    assert [slow(t)["input_ids"] for t in texts] == [microstories_kind.tokenizer.encode(t).tolist() for t in texts]
    checks = json.loads((microstories_kind.folder / export_folder.CHECKS).read_text())
    assert checks["tokenizer_ids_equal"] is True and checks["tokenizer_mismatch_count"] == 0


@pytest.mark.parametrize("kind", KINDS)
def test_pipeline_writes_chinese_text_from_the_folder(kind, request):
    from transformers import pipeline, set_seed

    kind = request.getfixturevalue(kind)
    generate = pipeline("text-generation", model=str(kind.folder), device="cpu")
    set_seed(0)
    text = generate(PROMPT, max_new_tokens=30)[0]["generated_text"]
    assert text.startswith(PROMPT)
    assert len(HAN.findall(text[len(PROMPT):])) >= 5, text


# ---------------------------------------------------------------------------
# What the folder holds


@needs_chatglm3
def test_microstories_config_says_head_dim_and_padded_vocabulary(microstories_kind):
    config = json.loads((microstories_kind.folder / "config.json").read_text())
    # 6 heads of 8 in a width of 64: Mistral, whose head_dim transformers 4 and 5 and ctranslate2 read.
    assert config["architectures"] == ["MistralForCausalLM"] and config["model_type"] == "mistral"
    assert config["sliding_window"] is None
    assert (config["hidden_size"], config["num_attention_heads"], config["head_dim"]) == (64, 6, 8)
    assert config["num_key_value_heads"] == 6
    assert config["vocab_size"] == 65024
    assert (config["rms_norm_eps"], config["rope_theta"], config["tie_word_embeddings"]) == (1e-5, 10000.0, True)
    # The token before a story in training (end-of-text) is the model's bos.
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (2, 2, 2)
    tokenizer_config = json.loads((microstories_kind.folder / "tokenizer_config.json").read_text())
    assert (tokenizer_config["bos_token"], tokenizer_config["add_bos_token"]) == ("</s>", False)
    assert "auto_map" not in config


def test_default_kind_folder(default_kind):
    from safetensors import safe_open

    folder = default_kind.folder
    names = sorted(p.name for p in folder.iterdir())
    # Exactly the files storylm.hub.folder describes (a BPE tokenizer: no tokenizer.model, no licence file)...
    assert names == sorted(set(export_folder.DESCRIBED) - {"tokenizer.model", "MODEL_LICENSE", "LICENSE"})
    # ... and the card lists each, with what it holds.
    card = (folder / export_folder.CARD).read_text(encoding="utf-8")
    files = card.split("## Files\n")[1].split("\n## ")[0]
    assert [line.split("`")[1] for line in files.splitlines() if line.startswith("| `")] == [
        name for name in export_folder.DESCRIBED if name in names]
    config = json.loads((folder / "config.json").read_text())
    assert (config["vocab_size"], config["head_dim"], config["tie_word_embeddings"]) == (512, 8, True)
    record = json.loads((folder / export_folder.STAGE_RECORD).read_text())
    assert {key: value for key, value in record.items() if key not in ("files", "read")} == RECORD
    # It lists every file of the folder but itself, with its size and sha256.
    listed = {path.relative_to(folder).as_posix(): [path.stat().st_size, file_sha256(path)]
              for path in folder.rglob("*") if path.is_file() and path.name != export_folder.STAGE_RECORD}
    assert record["files"] == listed
    generation = json.loads((folder / "generation_config.json").read_text())
    assert (generation["eos_token_id"], generation["pad_token_id"], generation["bos_token_id"]) == (2, 2, 2)
    assert (generation["do_sample"], generation["temperature"], generation["top_k"]) == (True, 0.8, 20)
    # The card's max_new_tokens (24: the sample stage's, which fit the 64-token block), and no max_length, which
    # transformers 5 would warn about beside the card's own max_new_tokens.
    assert generation["max_new_tokens"] == 24 and "max_length" not in generation
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (tokenizer_config["bos_token"], tokenizer_config["eos_token"], tokenizer_config["add_bos_token"]) == \
        ("</s>", "</s>", False)
    assert json.loads((folder / "special_tokens_map.json").read_text())["bos_token"] == "</s>"
    with safe_open(folder / export_folder.WEIGHTS, "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("model.embed_tokens.weight").shape == (512, 32)
    # Tied: the head is the embedding, stored once.
    assert "lm_head.weight" not in keys and "model.layers.1.self_attn.q_proj.weight" in keys
    assert len(keys) == 2 * 9 + 2
    # Readable by others, as a folder to share should be (temporary files are private).
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in [folder, *folder.rglob("*")])
    # Nothing left beside the folder by its atomic build.
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]


def test_untied_bf16_head_is_stored(gqa_untied_kind):
    from safetensors import safe_open

    config = json.loads((gqa_untied_kind.folder / "config.json").read_text())
    assert (config["tie_word_embeddings"], config["num_key_value_heads"], config["dtype"]) == (False, 2, "bfloat16")
    with safe_open(gqa_untied_kind.folder / export_folder.WEIGHTS, "pt") as f:
        assert f.get_tensor("model.layers.0.self_attn.k_proj.weight").shape == (16, 32)
        head = f.get_tensor("lm_head.weight")
        assert (head.shape, head.dtype) == ((512, 32), torch.bfloat16)


def test_model_card(default_kind):
    card = (default_kind.folder / "README.md").read_text(encoding="utf-8")
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    metadata = yaml.safe_load(front)
    assert metadata["pipeline_tag"] == "text-generation" and metadata["library_name"] == "transformers"
    assert metadata["license"] == "other" and metadata["language"] == ["zh"]
    # The hub's own reader of model cards takes it (what `hf upload` shows on the model page).
    from huggingface_hub import ModelCard

    assert ModelCard(card).data.to_dict()["pipeline_tag"] == "text-generation"
    assert "| val_bits_per_character | 1.234 |" in body and "| val_story_bits_per_character | 1.100 |" in body
    assert "| train_steps (measured) | 75 |" in body
    assert "| figures.distinct_2 | 0.6250 |" in body and "| figures.nested.mean_characters | 41.50 |" in body
    assert "| figures.finished_fraction | 0.5000 |" in body  # 4 significant digits, trailing zeros kept
    assert "prompt_tokens" not in body
    assert "| consistency.consistent_fraction |" in body
    samples = json.loads((default_kind.sample_dir / "samples.json").read_text())
    assert "> " + samples[0]["text"].replace("\n", "\n> ") in body
    assert "storylm's built-in story generator (`storylm.stories.storygen`, 6,000 stories, seed 1234)" in body
    assert f"| max_tokens | {40 * 8 * SEQ:,} |" in body and "| global_batch_size | 8 |" in body
    assert "ids equal `litgpt.Tokenizer`'s" in body
    assert "not measured" not in body
    assert "pretrained from scratch with [litgpt]" in body and "Continued pretraining" not in body


@needs_chatglm3
def test_microstories_card_names_head_dim_and_the_tokenizer_licence(microstories_kind):
    card = (microstories_kind.folder / "README.md").read_text(encoding="utf-8")
    metadata = yaml.safe_load(card.split("---\n")[1])
    assert metadata["license_name"] == "chatglm3-6b-model-license"
    assert "Attention is 6 heads x 8 = 48 channels while the hidden size is 64" in card
    assert "`LlamaTokenizerFast`" in card and "64,789 pieces, from `THUDM/chatglm3-6b`" in card
    # The licence the card names is in the folder, and the card links that file.
    if (CHATGLM3 / "MODEL_LICENSE").is_file():
        assert (microstories_kind.folder / "MODEL_LICENSE").read_bytes() == (CHATGLM3 / "MODEL_LICENSE").read_bytes()
        assert metadata["license_link"] == "MODEL_LICENSE" and "its text is `MODEL_LICENSE` in this folder" in card
    assert "A literal `</s>` in a text is plain text" in card


def test_a_card_without_the_licence_file_says_where_to_get_it():
    metadata = model_card.card_metadata({}, {"source": "THUDM/chatglm3-6b"}, None)
    assert metadata["license_link"] == model_card.CHATGLM3_LICENCE
    lines = " ".join(model_card.licence_lines(metadata, None))
    assert "its text is not in this folder: get `MODEL_LICENSE` from the THUDM/chatglm3-6b model repository" in lines


def test_without_evaluate_and_sample_the_card_says_not_measured(gqa_untied_kind):
    card = (gqa_untied_kind.folder / "README.md").read_text(encoding="utf-8")
    assert "Validation: not measured" in card and "Sample figures: not measured" in card
    assert "## A sampled story\n\nNot sampled" in card


def test_export_replaces_an_existing_folder_whole(default_kind, tmp_path):
    out = tmp_path / "export" / "h"
    out.mkdir(parents=True)
    (out / "stale.txt").write_text("from an older export")
    assert run_export(default_kind.checkpoint, out) == 0
    assert not (out / "stale.txt").exists() and (out / export_folder.WEIGHTS).is_file()
    assert [p.name for p in out.parent.iterdir()] == ["h"]


# ---------------------------------------------------------------------------
# Checkpoints that cannot be exported, and bad inputs: one line naming the key or the file


@pytest.mark.parametrize("key, value", [
    ("mlp_class_name", "GptNeoxMLP"), ("norm_class_name", "LayerNorm"), ("bias", True), ("parallel_residual", True),
    ("rotary_percentage", 0.5), ("scale_embeddings", True), ("attention_scores_scalar", 100),
])
def test_a_model_llama_cannot_express_stops_naming_the_key(key, value, tmp_path, capsys):
    from litgpt import Config
    from litgpt.utils import save_config

    checkpoint = tmp_path / "final"
    checkpoint.mkdir()
    save_config(Config(**{**DEFAULT_MODEL, "vocab_size": 400, key: value}), checkpoint)
    out = tmp_path / "export"
    assert run_export(checkpoint, out) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"error: model_config.{key}: {value!r} cannot be expressed as LlamaForCausalLM")
    assert error.count("\n") == 1
    assert not out.exists()


def test_bias_weights_really_have_no_name_in_litgpts_llama_conversion():
    """Why model_config.bias stops the export although LlamaConfig has attention_bias and mlp_bias."""
    from litgpt import GPT, Config
    from litgpt.scripts.convert_lit_checkpoint import copy_weights_llama

    config = Config(**{**DEFAULT_MODEL, "vocab_size": 400, "bias": True})
    with pytest.raises(KeyError):
        copy_weights_llama(config, {}, GPT(config).state_dict())


def test_a_missing_checkpoint_file_is_named_by_the_command(default_kind, tmp_path):
    checkpoint = tmp_path / "final"
    checkpoint.mkdir()
    for name in ("model_config.yaml", "tokenizer.json", "tokenizer_config.json"):
        (checkpoint / name).write_bytes((default_kind.checkpoint / name).read_bytes())
    inputs = json.dumps({"final model": str(checkpoint / "lit_model.pth")})
    result = subprocess.run([sys.executable, "-m", "storylm.export", "--record", json.dumps(RECORD), "--inputs",
                             inputs, "--out", str(tmp_path / "export")], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO / "workflow")})
    assert result.returncode == 1
    assert result.stderr == (f"error: {checkpoint / 'lit_model.pth'}: missing (the checkpoint's weights);"
                             " rerun pretrain (snakemake --forcerun pretrain ...)\n")
    assert not (tmp_path / "export").exists()


def copy_checkpoint(src: Path, dest: Path, leave_out: tuple[str, ...] = ()) -> Path:
    dest.mkdir(parents=True)
    for path in src.iterdir():
        if path.name not in leave_out:
            (dest / path.name).write_bytes(path.read_bytes())
    return dest


def test_bad_inputs_are_named(default_kind, tmp_path, capsys):
    good = default_kind.checkpoint
    out = tmp_path / "export"
    cases = []
    cases.append((tmp_path / "nowhere", None, None, f"{tmp_path / 'nowhere'}: the checkpoint folder does not exist"))
    no_config = copy_checkpoint(good, tmp_path / "a", leave_out=("model_config.yaml",))
    cases.append((no_config, None, None, f"{no_config / 'model_config.yaml'}: missing"))
    no_tokenizer = copy_checkpoint(good, tmp_path / "b", leave_out=("tokenizer.json",))
    cases.append((no_tokenizer, None, None, f"{no_tokenizer}: holds neither tokenizer.json nor tokenizer.model"))
    corrupt = copy_checkpoint(good, tmp_path / "c")
    (corrupt / "lit_model.pth").write_bytes(b"half a file")
    cases.append((corrupt, None, None, f"{corrupt / 'lit_model.pth'}: cannot be read as a torch checkpoint"))
    empty_evaluate = tmp_path / "evaluate"
    empty_evaluate.mkdir()
    cases.append((good, empty_evaluate, None, f"{empty_evaluate / 'metrics.json'}: missing"))
    bad_sample = tmp_path / "sample"
    bad_sample.mkdir()
    (bad_sample / "samples.json").write_text("[{")
    cases.append((good, None, bad_sample, f"{bad_sample / 'samples.json'}: not valid JSON"))
    for checkpoint, evaluate_dir, sample_dir, message in cases:
        assert run_export(checkpoint, out, evaluate_dir, sample_dir) == 1, message
        error = capsys.readouterr().err
        assert error.startswith(f"error: {message}") and error.count("\n") == 1, error
        assert not out.exists()
    assert run_stage(export.main, ["--record", "{not json", "--out", str(out)]) == 1
    assert capsys.readouterr().err.startswith("error: --record: not valid JSON")


# ---------------------------------------------------------------------------
# Card parts for inputs the tiny runs do not have


def test_card_names_a_hub_dataset_and_a_chosen_licence():
    corpus = {"source": "hf", "hf": {"repo_id": "adam89/TinyStoriesChinese", "revision": "abc123"},
              "text_field": "story_zh"}
    record = {"config": {"license": "apache-2.0", "corpus": corpus}}
    metadata = model_card.card_metadata(record, {"source": "THUDM/chatglm3-6b"})
    assert metadata["datasets"] == ["adam89/TinyStoriesChinese"]
    assert metadata["license"] == "apache-2.0" and "license_name" not in metadata
    lines = "\n".join(model_card.data_lines(record))
    assert "The Hugging Face dataset `adam89/TinyStoriesChinese` (revision `abc123`)." in lines
    assert 'text_field: `"story_zh"`' in lines


def test_card_names_a_local_corpus_by_its_files_and_a_url_corpus_by_its_addresses():
    digest = "ab" * 32
    local = {"source": "local", "local_files": [["stories.jsonl", digest], ["more/b.txt", None]],
             "include": ["*.jsonl", "*.txt"], "text_field": "text"}
    lines = model_card.data_lines({"config": {"corpus": local}})
    assert lines[:5] == ["A local corpus of 2 files, named here by their names (inside the folders given) and sha256"
                         " (where they lay on the training machine is not recorded):", "",
                         f"- `stories.jsonl` sha256 `{digest}`", "- `more/b.txt` (missing when planned)", ""]
    assert "null" not in "\n".join(lines) and 'text_field: `"text"`' in lines[-1]
    url = {"source": "url", "url": {"files": [{"url": "https://example.org/s.jsonl", "sha256": digest, "size": None},
                                              {"url": "https://example.org/t.jsonl", "sha256": None, "size": 10}]}}
    assert model_card.data_lines({"config": {"corpus": url}})[:4] == [
        "2 files downloaded from:", "", f"- <https://example.org/s.jsonl> sha256 `{digest}`",
        "- <https://example.org/t.jsonl> (no sha256 given)"]
    many = {"source": "local", "local_files": [[f"{i:02d}.txt", digest] for i in range(25)]}
    lines = model_card.data_lines({"config": {"corpus": many}})
    assert lines[2 + model_card.MAX_FILES_LISTED] == f"- ... and 5 more (all of them in `{export_folder.STAGE_RECORD}`)"


def test_off_the_builtin_corpus_the_card_marks_the_checkers_figures_uncalibrated():
    figures = {"consistency.consistent_fraction": 0.25, "figures.finished_fraction": 0.5}
    local = "\n".join(model_card.sample_figure_lines(figures, builtin=False))
    assert "| consistency.consistent_fraction (uncalibrated on this corpus) | 0.2500 |" in local
    assert "| figures.finished_fraction | 0.5000 |" in local and "on this corpus they are uncalibrated" in local
    builtin = "\n".join(model_card.sample_figure_lines(figures, builtin=True))
    assert "| consistency.consistent_fraction | 0.2500 |" in builtin and "uncalibrated" not in builtin
    assert model_card.builtin_corpus({"config": {"corpus": {"source": "builtin"}}})
    assert not model_card.builtin_corpus({"config": {"corpus": {"source": "local"}}})


def test_card_spells_out_tokenizer_differences():
    info = {"backend": "sentencepiece", "vocab_size": 64789, "eos_id": 2, "use_bos": False}
    checks = {"tokenizer_ids_equal": False, "tokenizer_texts_compared": 12, "tokenizer_mismatch_count": 1,
              "tokenizer_mismatches": [{"text": " 开头", "litgpt": [265, 34211], "transformers": [30910, 34211]}]}
    lines = "\n".join(model_card.tokenizer_lines(info, checks))
    assert "**Its ids differ from `litgpt.Tokenizer`'s** (the ids the model was trained on) on 1 of 12 texts" in lines
    assert '- `" 开头"`: litgpt `[265, 34211]`, transformers `[30910, 34211]`' in lines


# ---------------------------------------------------------------------------
# Every client: the token before a story, the GGUF, a class for every shape, the card


@pytest.mark.parametrize("kind", ["default_kind", "odd_kind"])
def test_every_export_holds_a_gguf_and_declares_end_of_text_as_bos(kind, request):
    import gguf

    folder = request.getfixturevalue(kind).folder
    config = json.loads((folder / "config.json").read_text())
    assert config["bos_token_id"] == config["eos_token_id"] == 2
    assert json.loads((folder / "tokenizer_config.json").read_text())["add_bos_token"] is False
    reader = gguf.GGUFReader(folder / "model.gguf")

    def field(name):
        value = reader.fields[name]
        return value.contents()

    assert field("general.architecture") == "llama"
    assert (field("tokenizer.ggml.model"), field("tokenizer.ggml.pre")) == ("gpt2", "gpt-2")
    assert (field("tokenizer.ggml.bos_token_id"), field("tokenizer.ggml.eos_token_id")) == (2, 2)
    assert field("tokenizer.ggml.add_bos_token") is False
    assert len(field("tokenizer.ggml.tokens")) == config["vocab_size"]
    assert field("llama.attention.key_length") == config["head_dim"]
    assert {t.name for t in reader.tensors} >= {"token_embd.weight", "blk.0.attn_q.weight", "output_norm.weight"}


def test_the_odd_shape_is_mistral_for_every_client(odd_kind):
    config = json.loads((odd_kind.folder / "config.json").read_text())
    assert config["architectures"] == ["MistralForCausalLM"] and config["sliding_window"] is None
    assert (config["hidden_size"], config["num_attention_heads"], config["head_dim"]) == (32, 3, 16)
    assert type(odd_kind.hf_model()).__name__ == "MistralForCausalLM"


@pytest.mark.parametrize("kind", ["default_kind", "odd_kind"])
def test_transformers_reads_the_gguf_back_with_litgpts_logits(kind, request):
    from transformers import AutoModelForCausalLM

    kind = request.getfixturevalue(kind)
    batch = windows(token_stream(kind.tokenizer, kind.val_texts), 4)
    with torch.no_grad():
        lit = kind.lit_model()(batch)
        gguf_model = AutoModelForCausalLM.from_pretrained(kind.folder, gguf_file=export_folder.GGUF,
                                                          dtype=torch.float32)
        diff = (gguf_model.eval()(batch).logits - lit).abs().max().item()
    assert lit.std() > 0.5 and diff < export_folder.LOGITS_TOLERANCE
    clients = {c["client"]: c for c in json.loads((kind.folder / export_folder.CLIENTS).read_text())["clients"]}
    assert clients["gguf (transformers)"]["passed"] is True
    assert clients["transformers"]["passed"] is True


@needs_chatglm3
def test_the_chatglm3_gguf_holds_the_sentencepiece_vocabulary(microstories_kind):
    import gguf

    reader = gguf.GGUFReader(microstories_kind.folder / "model.gguf")
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    assert reader.fields["tokenizer.ggml.model"].contents() == "llama"
    assert len(tokens) == 65024 and tokens[30910] == "▁" and tokens[13] == "<0x0A>"
    assert types[13] == gguf.TokenType.BYTE and types[64789] == gguf.TokenType.UNUSED and tokens[64789] == "[PAD64789]"
    assert reader.fields["tokenizer.ggml.add_space_prefix"].contents() is True


def task_yaml(folder: Path) -> dict:
    """The task file as YAML, its lm-eval `!function` tags read as their names."""
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")
    return yaml.load((folder / "lm_eval/storylm_val.yaml").read_text(), Loader=Loader)


def test_the_lm_eval_task_scores_the_stories_the_pipeline_scored(default_kind):
    task = task_yaml(default_kind.folder)
    assert (task["task"], task["output_type"]) == ("storylm_val", "loglikelihood_rolling")
    assert task["custom_dataset"] == "!function storylm_val.load_stories" and "dataset_kwargs" not in task
    assert [m["metric"] for m in task["metric_list"]] == ["bits_per_character", "bits_per_byte", "byte_perplexity"]
    stories = [json.loads(line) for line in (default_kind.folder / "lm_eval/val_stories.jsonl").open()]
    assert [story["text"] for story in stories] == default_kind.val_texts
    expected = json.loads((default_kind.folder / export_folder.CLIENTS).read_text())["lm_eval_expected"]
    assert expected["stories"] == 40 and expected["window_tokens"] == SEQ
    assert expected["characters"] == sum(map(len, default_kind.val_texts))
    assert expected["bits_per_character"] == pytest.approx(sum(s["bits"] for s in stories) / expected["characters"])
    assert expected["bits_per_byte"] < expected["bits_per_character"]


def test_rolling_windows_are_lm_evals(tmp_path):
    """storylm's copy of lm-eval's windows, against lm-eval's own functions, on lengths around the window."""
    utils = pytest.importorskip("lm_eval.utils")
    from storylm.hub.lm_eval_task import rolling_windows

    for length in (0, 1, 2, 7, 63, 64, 65, 100, 127, 128, 129, 300):
        ids = list(range(3, 3 + length))
        theirs = [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(ids, 2, SEQ, 1)]
        # HFLM feeds context + continuation without its last token, and scores the continuation.
        assert rolling_windows(ids, 2, SEQ) == [((a + b)[:-1], b) for a, b in theirs]


@pytest.mark.parametrize("kind", KINDS)
def test_the_lm_eval_command_runs_the_shipped_task_from_anywhere(kind, request, tmp_path):
    """The real `lm_eval` command on the folder's own task, from another directory, on every story (long
    ones included): each metric a finite figure, equal to the one the export says to expect."""
    if shutil.which("lm_eval") is None:
        pytest.skip("lm-eval is not installed (pip install 'lm-eval[hf]')")
    kind = request.getfixturevalue(kind)
    folder = tmp_path / "downloaded model"  # as a user keeps it: anywhere, under any name
    shutil.copytree(kind.folder, folder)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    expected = json.loads((folder / export_folder.CLIENTS).read_text())["lm_eval_expected"]
    longest = max(len(kind.tokenizer.encode(text)) for text in kind.val_texts)
    done = subprocess.run(["lm_eval", "--model", "hf", "--model_args", f"pretrained={folder},dtype=float32",
                           "--include_path", str(folder / "lm_eval"), "--tasks", "storylm_val",
                           "--output_path", "out"], cwd=elsewhere, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(next((elsewhere / "out").rglob("results_*.json")).read_text())["results"]["storylm_val"]
    assert sorted(k.split(",")[0] for k in results if not k.endswith("_stderr,none") and "," in k) == \
        ["bits_per_byte", "bits_per_character", "byte_perplexity"]
    for metric in ("bits_per_character", "bits_per_byte", "byte_perplexity"):
        assert results[f"{metric},none"] == pytest.approx(expected[metric], rel=1e-5), metric
    if kind.tokenizer.backend == "sentencepiece":  # the fixture's picture books run past the window
        assert longest > 4 * SEQ


def card_sections(card: str) -> dict[str, list[tuple[str, str]]]:
    """The card's "Use it" section: {client: [(language, code) of each fenced block, in order]}."""
    section = card[card.index(model_card.CLIENTS_START):card.index(model_card.CLIENTS_END)]
    found = {}
    for part in section.split("\n### ")[1:]:
        name, body = part.split("\n", 1)
        found[name] = re.findall(r"```(\w+)\n(.*?)\n```", body, flags=re.S)
    return found


def test_the_card_shows_how_to_use_every_client(default_kind):
    card = (default_kind.folder / "README.md").read_text(encoding="utf-8")
    clients = json.loads((default_kind.folder / export_folder.CLIENTS).read_text())["clients"]
    sections = card_sections(card)
    # Every client gets its lines, checked at export or not; each begins with what to install.
    assert list(sections) == [client["client"] for client in clients]
    for client in clients:
        assert sections[client["client"]][0] == ("bash", model_card.INSTALL[client["client"]])
        status = "Checked at export with" if client["passed"] else "Not checked at export:"
        assert f"### {client['client']}\n\n{status}" in card
    assert 'pipeline("text-generation", model=".")' in card and 'gguf_file="model.gguf"' in card
    assert 'pip install "lm-eval[hf]"' in card and "workflow/benchmarks" not in card
    # The sample stage asked for 24 new tokens; the prompt and they fit the 64-token block.
    assert "max_new_tokens=24," in card
    use = model_card.usage_for(default_kind.lit_model().config, default_kind.tokenizer, {"max_new_tokens": 200}, None)
    assert use.new_tokens == SEQ - len(default_kind.tokenizer.encode(defaults()["sample"]["prompts"][0])) < 200
    # lm-eval's figures beside the pipeline's, each with its convention.
    expected = json.loads((default_kind.folder / export_folder.CLIENTS).read_text())["lm_eval_expected"]
    assert f"| storylm_val bits_per_character | {model_card.fmt(expected['bits_per_character'])} |" in card
    assert "with its own end-of-text not scored" in card and "its own end-of-text token included" in card
    # The clients script rewrites just this section.
    rewritten = model_card.with_client_lines(card, [model_card.CLIENTS_START, "new lines", model_card.CLIENTS_END])
    before, after = card.split(model_card.CLIENTS_START)[0], card.split(model_card.CLIENTS_END)[1]
    assert rewritten == f"{before}{model_card.CLIENTS_START}\nnew lines\n{model_card.CLIENTS_END}{after}"


def installed(client: str, language: str, code: str) -> str | None:
    """Why a card block cannot run here (its client is not installed), or None."""
    from importlib.util import find_spec

    if language == "bash" and code.startswith("llama-cli"):
        return None if shutil.which("llama-cli") else "llama-cli is not on PATH"
    needs = {"transformers": ["transformers"], "gguf (transformers)": ["transformers", "gguf", "accelerate"],
             "llama.cpp": ["llama_cpp"], "ctranslate2": ["ctranslate2", "transformers"], "lm-eval": ["lm_eval"]}
    missing = [module for module in needs[client] if find_spec(module) is None]
    return f"{', '.join(missing)} not installed" if missing else None


class PromptLength:
    def encode(self, text: str) -> list[str]:
        return list(text)


def test_the_card_samples_as_the_sample_stage_says_greedy_and_without_top_k_included():
    """The card's usage lines take the sample stage's settings, a greedy 0 and a null top_k as they are, and
    the schema's defaults where a checkpoint is exported without a sample stage."""
    config = SimpleNamespace(block_size=64, n_head=2, head_size=8, n_embd=16)
    greedy = model_card.usage_for(config, PromptLength(), {"temperature": 0, "top_k": None}, None)
    assert (greedy.temperature, greedy.top_k) == (0, None)
    lines = {client: "\n".join(model_card.usage_lines(client, greedy))
             for client in ("transformers", "gguf (transformers)", "llama.cpp", "ctranslate2")}
    assert "max_new_tokens=51, do_sample=False)" in lines["transformers"]
    assert "max_new_tokens=51, do_sample=False)[0]" in lines["gguf (transformers)"]
    assert "max_tokens=51, temperature=0, top_k=0, seed=1)" in lines["llama.cpp"]
    assert "-n 51 --temp 0 --top-k 0" in lines["llama.cpp"]
    assert "max_length=51, sampling_topk=1, include_prompt_in_result=False)" in lines["ctranslate2"]
    unset = model_card.usage_for(config, PromptLength(), {}, None)
    sample = defaults()["sample"]
    assert (unset.prompt, unset.temperature, unset.top_k, unset.max_new_tokens) == (
        sample["prompts"][0], 0.4, 20, 200)
    assert "do_sample=True, temperature=0.4, top_k=20)" in "\n".join(model_card.usage_lines("transformers", unset))


@pytest.mark.parametrize("kind", KINDS)
def test_every_usage_line_of_the_card_runs_as_written(kind, request, tmp_path):
    """Each block of the card's "Use it" section, as written, in a fresh process in a copy of the folder,
    for every client installed here: the install lines name installed packages, the rest runs and writes
    Chinese (or lm-eval's figures)."""
    from importlib import metadata

    kind = request.getfixturevalue(kind)
    folder = tmp_path / "model"
    shutil.copytree(kind.folder, folder)
    card = (folder / "README.md").read_text(encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    ran, skipped = [], []
    for client, blocks in card_sections(card).items():
        for language, code in blocks:
            if code.startswith("pip install"):
                for package in code.split()[2:]:
                    if package.startswith("-") or "://" in package:
                        continue  # pip's options (llama.cpp's prebuilt-wheel index)
                    name = package.strip('"').split("[")[0]
                    if not installed(client, language, code):
                        assert metadata.version(name), name
                continue
            reason = installed(client, language, code)
            if reason:
                skipped.append(f"{client}: {reason}")
                continue
            command = ["bash", "-c", code] if language == "bash" else [sys.executable, "-c", code]
            done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=900)
            assert done.returncode == 0, f"{client} {language} block failed:\n{code}\n{done.stderr[-3000:]}"
            assert "max_length" not in done.stderr, (client, done.stderr)  # no warning from the card's own lines
            if client == "lm-eval":
                assert "bits_per_character" in done.stdout and "word_perplexity" not in done.stdout
            elif language == "python":
                assert HAN.search(done.stdout), (client, done.stdout)
            ran.append(client)
    assert "transformers" in ran and "gguf (transformers)" in ran, (ran, skipped)


@needs_chatglm3
def test_the_tokenizer_stage_keeps_the_licence_the_export_ships(tmp_path):
    from storylm.tokenizer import copy_pretrained

    if not (CHATGLM3 / "MODEL_LICENSE").is_file():
        pytest.skip(f"no MODEL_LICENSE in {CHATGLM3}")
    copy_pretrained(CHATGLM3, tmp_path)
    assert (tmp_path / "MODEL_LICENSE").read_bytes() == (CHATGLM3 / "MODEL_LICENSE").read_bytes()
    assert {"tokenizer.model", "tokenizer_config.json"} <= {p.name for p in tmp_path.iterdir()}
