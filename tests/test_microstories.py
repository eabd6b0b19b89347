"""config/microstories.yaml, the reference run: its rendered litgpt config, and the whole pipeline on it.

The end-to-end test runs the real config shrunk only in size: the same hf source (served by
the local stand-in of the hub in hubserver.py), the same ChatGLM3 tokenizer, the same
architecture and training settings, the wandb logger (offline), on a few hundred stories
with a model small enough for a CPU.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
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
    copy_workflow,
    load_json,
    needs_chatglm3,
    snakemake,
    write_config,
)
from hubserver import FakeServer, point_hf_at, real_row, tinystories_archive, tinystories_rows
from storylm.io.jsonl import iter_texts
from storylm.plan import config as storylm_config
from storylm.plan import stages
from storylm.pretrain import render

pytestmark = needs_chatglm3

SCHEMA = str(REPO / "config" / "schema.yaml")
CONFIG = REPO / "config" / "microstories.yaml"
HF_REPO = "adam89/TinyStoriesChinese"
TOKENIZER_REPO = "THUDM/chatglm3-6b"
ARCHIVE = "TinyStories_all_data_zh.tar.gz"

# The reference run's litgpt settings (its pretrain YAML, as published with the run).
REFERENCE_MODEL = {
    "name": "microstories",
    "block_size": 512,
    "vocab_size": 64798,
    "padded_vocab_size": 65024,
    "n_layer": 6,
    "n_head": 6,
    "n_query_groups": 6,
    "n_embd": 512,
    "head_size": 48,
    "rotary_percentage": 1.0,
    "parallel_residual": False,
    "bias": False,
    "norm_class_name": "RMSNorm",
    "mlp_class_name": "LLaMAMLP",
    "intermediate_size": 768,
    "scale_embeddings": False,
}
REFERENCE_TRAIN = {
    "save_interval": 1000,
    "log_interval": 1,
    "global_batch_size": 512,
    "micro_batch_size": 32,
    "lr_warmup_steps": 1000,
    "max_seq_length": 512,
    "tie_embeddings": True,
    "max_norm": 1.0,
    "min_lr": 0.0,
}
REFERENCE_EVAL = {"interval": 2000, "max_iters": 100, "initial_validation": False, "final_validation": False}
REFERENCE_OPTIMIZER = {"class_path": "torch.optim.AdamW",
                       "init_args": {"lr": 0.0005, "weight_decay": 0.1, "betas": [0.9, 0.95]}}
REFERENCE_PARAMETERS = 43_915_776  # "about 44M" with tied embeddings


def microstories_config(tokenizer_path: Path = CHATGLM3_DIR) -> dict:
    """config/microstories.yaml with the schema's defaults, its tokenizer at tokenizer_path."""
    config = yaml.safe_load(CONFIG.read_text())
    validate(config, SCHEMA)
    config["tokenizer"].update(source="local", path=str(tokenizer_path))
    del config["runs"]
    return config


def parameter_count(model_config: dict, tie_embeddings: bool) -> int:
    from litgpt import GPT, Config

    with torch.device("meta"):
        model = GPT(Config(**model_config))
    if tie_embeddings:
        model.transformer.wte.weight = model.lm_head.weight  # as litgpt pretrain does
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------
# The config and the litgpt YAML it renders


def test_the_config_file_fetches_the_reference_tokenizer_from_the_hub():
    config = yaml.safe_load(CONFIG.read_text())
    validate(config, SCHEMA)
    tokenizer = config["tokenizer"]
    assert (tokenizer["kind"], tokenizer["source"]) == ("pretrained", "hf")
    assert tokenizer["hf"]["repo_id"] == TOKENIZER_REPO
    assert tokenizer["hf"]["files"] == ["tokenizer.model", "tokenizer_config.json"]
    # Pinned to the very files the reference used (the fixture's copies of them).
    from storylm.io.filehash import file_sha256

    assert tokenizer["hf"]["sha256"] == {name: file_sha256(CHATGLM3_DIR / name) for name in tokenizer["hf"]["files"]}
    corpus = config["corpus"]
    assert corpus["source"] == "hf"
    assert corpus["hf"]["repo_id"] == HF_REPO
    assert corpus["hf"]["allow_patterns"] == [ARCHIVE]
    assert corpus["include"] == ["*.jsonl"]
    assert corpus["text_field"] == "story_zh"
    assert corpus["split"]["val_size"] == 40000


def test_the_config_passes_the_pipeline_checks():
    storylm_config.check(microstories_config())


def test_the_default_config_does_not_leak_into_the_run():
    """`--configfile config/microstories.yaml` is merged over the Snakefile's config/config.yaml
    (dicts key by key). Nothing of the default may survive in any stage's settings, e.g. its
    train.max_tokens would win over epochs."""
    from snakemake.utils import update_config

    merged = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    update_config(merged, yaml.safe_load(CONFIG.read_text()))
    validate(merged, SCHEMA)
    del merged["runs"]
    merged["tokenizer"].update(source="local", path=str(CHATGLM3_DIR))
    assert stages.records(merged) == stages.records(microstories_config())


@pytest.fixture
def rendered(tmp_path):
    """The litgpt pretrain config of the pretrain stage, over shards of a made-up size."""
    config = microstories_config()
    record = stages.records(config)["pretrain"]
    shards = tmp_path / "Data" / "shards" / record["inputs"]["shards"]
    shards.mkdir(parents=True)
    (shards / "stats.json").write_text(json.dumps({"train_tokens": 800_000_000, "val_tokens": 8_000_000}))
    tokenizer = tmp_path / "Data" / "tokenizer" / record["inputs"]["tokenizer"]
    shutil.copytree(CHATGLM3_DIR, tokenizer)  # what the tokenizer stage copies
    out_dir = tmp_path / "results" / "pretrain" / record["hash"]
    return render(record["config"], shards, tokenizer, out_dir), shards, tokenizer, out_dir


def test_rendered_model_is_the_reference_model(rendered):
    litgpt_config = rendered[0]
    assert litgpt_config["model_name"] == "microstories"
    model = litgpt_config["model_config"]
    for key, value in REFERENCE_MODEL.items():
        assert model[key] == value, key
    # Keys the reference left to litgpt's defaults are given here with the same values.
    from litgpt import Config

    defaults = Config()
    for key in set(model) - set(REFERENCE_MODEL):
        assert model[key] == getattr(defaults, key), key


def test_rendered_training_is_the_references(rendered):
    litgpt_config, shards, tokenizer, out_dir = rendered
    train = litgpt_config["train"]
    for key, value in REFERENCE_TRAIN.items():
        assert train[key] == value, key
    # The budget: 2 epochs of the train shards, not the reference's 3 trillion tokens.
    assert "epochs" not in train
    assert train["max_tokens"] == 2 * 800_000_000
    assert litgpt_config["eval"] == REFERENCE_EVAL
    assert litgpt_config["optimizer"] == REFERENCE_OPTIMIZER
    assert litgpt_config["precision"] == "bf16-mixed"
    assert litgpt_config["devices"] == 1 and litgpt_config["num_nodes"] == 1
    assert litgpt_config["seed"] == 42
    assert litgpt_config["logger_name"] == "wandb"
    assert litgpt_config["data"] == {
        "class_path": "litgpt.data.LitData",
        "init_args": {"data_path": str(shards), "split_names": ["train", "val"], "seed": 42, "num_workers": 4},
    }
    assert litgpt_config["tokenizer_dir"] == str(tokenizer)
    assert litgpt_config["out_dir"] == str(out_dir)
    assert litgpt_config["resume"] == "auto"


def test_max_tokens_wins_over_epochs(tmp_path):
    """How to reproduce the reference's constant learning rate: max_tokens 3e12."""
    config = microstories_config()
    config["train"]["max_tokens"] = 3_000_000_000_000
    record = stages.records(config)["pretrain"]
    (tmp_path / "stats.json").write_text(json.dumps({"train_tokens": 800_000_000, "val_tokens": 8_000_000}))
    litgpt_config = render(record["config"], tmp_path, CHATGLM3_DIR, tmp_path / "out")
    assert litgpt_config["train"]["max_tokens"] == 3_000_000_000_000


def test_rendered_yaml_is_accepted_by_litgpt_pretrain(rendered, tmp_path):
    """litgpt's own command-line parser takes the rendered file (no unknown or mistyped keys)."""
    from jsonargparse import CLI
    from litgpt.pretrain import setup

    litgpt_config = rendered[0]
    path = tmp_path / "pretrain.yaml"
    path.write_text(yaml.safe_dump(litgpt_config, sort_keys=False, allow_unicode=True))
    captured = {}

    def fake_setup(**kwargs):
        captured.update(kwargs)

    fake_setup.__signature__ = __import__("inspect").signature(setup)
    fake_setup.__doc__ = setup.__doc__
    CLI(fake_setup, args=["--config", str(path)])
    config = captured["model_config"]
    assert config.name == "microstories" and config.n_layer == 6 and config.padded_vocab_size == 65024
    assert captured["train"].max_tokens == 1_600_000_000
    assert captured["train"].tie_embeddings is True


def test_the_model_has_44m_parameters(rendered):
    model_config = rendered[0]["model_config"]
    assert parameter_count(model_config, tie_embeddings=True) == REFERENCE_PARAMETERS
    assert parameter_count(model_config, tie_embeddings=False) == REFERENCE_PARAMETERS + 65024 * 512


# ---------------------------------------------------------------------------
# The whole pipeline on the config, shrunk in size only


def shrunk_config() -> dict:
    """config/microstories.yaml with only sizes changed (and 32-bit precision for the CPU)."""
    config = copy.deepcopy(yaml.safe_load(CONFIG.read_text()))  # the tokenizer comes from the (stand-in) hub
    config["corpus"]["split"]["val_size"] = 30
    config["model_config"].update(block_size=64, n_layer=2, n_head=2, n_query_groups=2, n_embd=32, head_size=16,
                                  intermediate_size=48)
    # One epoch: enough steps (39) to beat a uniform guess over the vocabulary.
    config["train"].update(global_batch_size=8, micro_batch_size=4, max_seq_length=64, epochs=1.0,
                           lr_warmup_steps=2, save_interval=4)
    config["eval"].update(interval=4, max_iters=2)
    config["precision"] = "32-true"
    config["evaluate"].update(max_tokens=2000)
    config["sample"].update(num_samples=1, max_new_tokens=16)
    return config


def hub_rows() -> list[dict]:
    """Rows of the served archive: the real row 0, generated TinyStories rows and the picture books."""
    picturebooks = [json.loads(line) for line in PICTUREBOOKS.read_text(encoding="utf-8").splitlines() if line]
    return [real_row()] + tinystories_rows(300) + picturebooks


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    if not HAVE_REAL_STORIES:
        pytest.skip(NO_REAL_STORIES)
    rows = hub_rows()
    archive = tinystories_archive({"data00_zh.jsonl": rows[:150], "data01_zh.jsonl": rows[150:301],
                                   "data02_zh.jsonl": rows[301:]})
    hub = FakeServer().start()
    hub.add_dataset_file(HF_REPO, ARCHIVE, archive)
    hub.add_dataset_file(HF_REPO, "README.md", b"# TinyStoriesChinese\n")
    for name in ("tokenizer.model", "tokenizer_config.json", "config.json"):
        # As on the real hub: the SentencePiece model in LFS, the small JSON files in git.
        hub.add_model_file(TOKENIZER_REPO, name, (CHATGLM3_DIR / name).read_bytes(), lfs=name.endswith(".model"))
    workdir = copy_workflow(tmp_path_factory.mktemp("microstories") / "wf")
    config = shrunk_config()
    write_config(workdir, config, "config/microstories_small.yaml")
    try:
        with pytest.MonkeyPatch.context() as env:
            point_hf_at(env, hub.url)
            env.setenv("WANDB_MODE", "offline")
            env.delenv("WANDB_API_KEY", raising=False)
            snakemake(workdir, "results/samples.txt", "results/metrics.json", "results/loss.png", "--cores", "2",
                      "--configfile", "config/microstories_small.yaml", timeout=600)
    finally:
        hub.stop()
    return workdir, config, rows, hub


def only_folder(workdir: Path, parent: str) -> Path:
    folders = [p for p in (workdir / parent).iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


@pytest.mark.slow
def test_pipeline_downloads_from_the_hub(pipeline):
    workdir, config, rows, hub = pipeline
    assert [r.path for r in hub.gets("/cdn/")]  # the archive came from the (stand-in) hub
    assert not hub.gets("README.md")
    corpus = load_json(only_folder(workdir, "Data/corpus") / "stats.json")
    assert corpus["source"] == "hf"
    assert corpus["stories"] == len(rows)
    assert corpus["val"]["stories"] == 30
    assert corpus["duplicates_removed"] == 0


@pytest.mark.slow
def test_pipeline_reports(pipeline):
    workdir, config, rows, hub = pipeline
    samples = (workdir / "results" / "samples.txt").read_text(encoding="utf-8")
    for prompt in config["sample"]["prompts"]:
        assert prompt in samples
    metrics = load_json(workdir / "results" / "metrics.json")
    for key in ("stage_hashes", "val_loss_nats_per_token", "val_perplexity", "val_bits_per_character",
                "val_tokens_scored", "val_tokens_per_character", "parameters", "train_steps", "train_iters",
                "final_train_loss_nats_per_token", "sample_figures"):
        assert key in metrics, key
    assert set(metrics["stage_hashes"]) >= {"download", "corpus", "tokenizer", "shards", "pretrain", "evaluate",
                                            "sample"}
    assert metrics["parameters"] in (parameter_count(config["model_config"], tie_embeddings=True),
                                     parameter_count(config["model_config"], tie_embeddings=False))
    assert metrics["train_steps"] >= 4
    # Below a uniform guess over the vocabulary, ln(65,024) = 11.08 nats, which the untrained model does
    # not reach: after 7 steps (0.2 epochs) it scored 11.21, after this epoch's 39 steps 10.92.
    assert metrics["val_loss_nats_per_token"] < math.log(65024)
    assert (workdir / "results" / "loss.png").stat().st_size > 0


@pytest.mark.slow
def test_pipeline_trained_as_configured(pipeline):
    workdir, config, rows, hub = pipeline
    pretrain = only_folder(workdir, "results/pretrain")
    litgpt_config = yaml.safe_load((pretrain / "pretrain.yaml").read_text())
    assert litgpt_config["model_config"]["vocab_size"] == 64798
    assert litgpt_config["model_config"]["padded_vocab_size"] == 65024
    assert litgpt_config["logger_name"] == "wandb"
    assert litgpt_config["data"]["init_args"]["num_workers"] == config["data_workers"]
    shard_stats = load_json(only_folder(workdir, "Data/shards") / "stats.json")
    assert litgpt_config["train"]["max_tokens"] == int(config["train"]["epochs"] * shard_stats["train_tokens"])
    # wandb logged offline, into the working directory's wandb/ (Lightning's WandbLogger passes
    # save_dir="." to wandb.init), where the README says `wandb sync` finds it.
    assert len(list(workdir.glob("wandb/offline-run-*"))) == 1 and not list(pretrain.rglob("offline-run-*"))
    assert (pretrain / "step-00000004" / "lit_model.pth").is_file()
    # The tokenizer came from the (stand-in) hub: only the two configured files, nothing else.
    resolved = [r.path for r in hub.requests if f"/{TOKENIZER_REPO}/resolve/" in r.path]
    assert {path.rsplit("/", 1)[1] for path in resolved} == {"tokenizer.model", "tokenizer_config.json"}
    tokenizer = only_folder(workdir, "Data/tokenizer")
    assert (tokenizer / "tokenizer.model").read_bytes() == (CHATGLM3_DIR / "tokenizer.model").read_bytes()
    assert load_json(tokenizer / "stats.json")["unknown_token_rate"] == 0.0


@pytest.mark.slow
def test_reported_parameters_count_tied_embeddings_once(pipeline):
    workdir, config, rows, hub = pipeline
    metrics = load_json(workdir / "results" / "metrics.json")
    assert metrics["parameters"] == parameter_count(config["model_config"], tie_embeddings=True)


@pytest.mark.slow
def test_pipeline_shards_decode_to_the_stories(pipeline):
    """Every story of the corpus, in the shards, decodes back to its text with the ChatGLM3 tokenizer."""
    from litdata import StreamingDataset, TokensLoader
    from litgpt import Tokenizer

    workdir, config, rows, hub = pipeline
    tokenizer = Tokenizer(CHATGLM3_DIR)
    shards, corpus = only_folder(workdir, "Data/shards"), only_folder(workdir, "Data/corpus")
    originals = Counter(row["story_zh"].strip() for row in rows)
    decoded_all = Counter()
    for split in ("train", "val"):
        dataset = StreamingDataset(str(shards / split), item_loader=TokensLoader(block_size=1), shuffle=False)
        stream = torch.cat([dataset[i] for i in range(len(dataset))]).tolist()
        assert stream[-1] == tokenizer.eos_id
        pieces, start = [], 0
        for i, token in enumerate(stream):
            if token == tokenizer.eos_id:
                pieces.append(stream[start:i])
                start = i + 1
        decoded = [tokenizer.decode(torch.tensor(p)) for p in pieces]
        assert decoded == list(iter_texts(corpus / f"{split}.jsonl"))
        decoded_all.update(decoded)
    assert decoded_all == originals
