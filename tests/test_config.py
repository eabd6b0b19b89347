"""Stage hashes and config checks (storylm/config.py), without running any stage."""

from __future__ import annotations

import copy
import re

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from conftest import CHATGLM3_DIR, REPO, needs_chatglm3
from storylm import config as storylm_config
from storylm.config import ConfigError

SCHEMA = str(REPO / "config" / "schema.yaml")


def default_config() -> dict:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    validate(config, SCHEMA)
    del config["runs"]
    return config


def changed(config: dict, dotted: str, value) -> dict:
    config = copy.deepcopy(config)
    *parents, key = dotted.split(".")
    node = config
    for parent in parents:
        node = node[parent]
    node[key] = value
    return config


def changed_stages(before: dict, after: dict) -> set[str]:
    a, b = storylm_config.stage_hashes(before), storylm_config.stage_hashes(after)
    return {stage for stage in a if a[stage] != b[stage]}


def test_key_order_does_not_change_hashes():
    config = default_config()
    reordered = {key: config[key] for key in reversed(list(config))}
    reordered["model_config"] = dict(reversed(list(config["model_config"].items())))
    assert storylm_config.stage_hashes(reordered) == storylm_config.stage_hashes(config)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("sample.temperature", 0.9, {"sample", "export"}),
        ("sample.prompts", ["在森林里"], {"sample", "export"}),
        ("evaluate.batch_size", 4, {"evaluate", "export"}),
        ("export.license", "mit", {"export"}),
        ("model_config.n_layer", 3, {"pretrain", "evaluate", "sample", "export"}),
        ("optimizer.init_args", {"lr": 0.001, "weight_decay": 0.1, "betas": [0.9, 0.95]},
         {"pretrain", "evaluate", "sample", "export"}),
        ("shards.chunk_bytes", "8MB", {"shards", "pretrain", "evaluate", "sample", "export"}),
        ("tokenizer.vocab_size", 1024, {"tokenizer", "shards", "pretrain", "evaluate", "sample", "export"}),
        ("corpus.split.val_size", 200,
         {"corpus", "tokenizer", "shards", "pretrain", "evaluate", "sample", "export"}),
        ("corpus.builtin.seed", 5, {"corpus", "tokenizer", "shards", "pretrain", "evaluate", "sample", "export"}),
        # Settings of sources that are not in use, and encoding batch sizes, change nothing.
        ("corpus.hf.repo_id", "someone/else", set()),
        ("corpus.text_field", "story_zh", set()),
        ("tokenizer.hf.repo_id", "someone/else", {"tokenizer_download"}),  # not used: no job has this hash
        ("logger_name", "tensorboard", {"pretrain", "evaluate", "sample", "export"}),
    ],
)
def test_a_setting_invalidates_its_stage_and_downstream_only(key, value, expected):
    config = default_config()
    assert changed_stages(config, changed(config, key, value)) == expected


def test_switching_back_gives_the_earlier_hashes():
    config = default_config()
    there = changed(config, "model_config.n_layer", 4)
    back = changed(there, "model_config.n_layer", config["model_config"]["n_layer"])
    assert storylm_config.stage_hashes(back) == storylm_config.stage_hashes(config)


def test_pretrained_tokenizer_is_hashed_by_content(tmp_path):
    """Two copies of one tokenizer folder hash alike; a changed file changes the hash."""
    from storylm.storygen import generate_stories
    from storylm.tokenizer import train_bpe

    config = changed(default_config(), "tokenizer.kind", "pretrained")
    copy_a, copy_b = tmp_path / "a", tmp_path / "b"
    train_bpe((story["text"] for story in generate_stories(50, seed=1)), 300, 2, copy_a)
    copy_b.mkdir()
    for f in copy_a.iterdir():
        (copy_b / f.name).write_bytes(f.read_bytes())
    a = storylm_config.stage_hashes(changed(config, "tokenizer.path", str(copy_a)))
    b = storylm_config.stage_hashes(changed(config, "tokenizer.path", str(copy_b)))
    assert a == b
    (copy_b / "README.md").write_text("not a file litgpt reads")
    assert storylm_config.stage_hashes(changed(config, "tokenizer.path", str(copy_b))) == a
    tokenizer_config = copy_b / "tokenizer_config.json"
    tokenizer_config.write_text(tokenizer_config.read_text().replace('"add_bos_token": false', '"add_bos_token": true'))
    assert storylm_config.stage_hashes(changed(config, "tokenizer.path", str(copy_b)))["tokenizer"] != a["tokenizer"]


def test_stage_record_names_its_inputs():
    record = storylm_config.stage_record(default_config(), "shards")
    assert set(record["inputs"]) == {"corpus", "tokenizer"}
    assert record["config"] == {"chunk_bytes": "16MB"}


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("model_config.vocab_size", 100, "model_config.vocab_size"),
        ("model_config.padded_vocab_size", 1000, "model_config.padded_vocab_size"),
        ("model_config.n_layers", 2, "model_config.n_layers"),
        ("corpus.split.val_size", 6000, "corpus.split.val_size"),
        ("corpus.split.val_size", 12.5, "corpus.split.val_size"),
        ("train.max_seq_length", 1024, "train.max_seq_length"),
        ("train.global_batch_size", 20, "train.global_batch_size"),  # micro_batch_size is 8
        ("tokenizer.kind", "pretrained", "tokenizer.path"),
    ],
)
def test_check_names_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        storylm_config.check(changed(default_config(), key, value))


@needs_chatglm3
def test_vocab_smaller_than_a_pretrained_tokenizer_is_an_error():
    config = changed(default_config(), "tokenizer.kind", "pretrained")
    config = changed(config, "tokenizer.path", str(CHATGLM3_DIR))
    config["model_config"]["vocab_size"] = 64000
    with pytest.raises(ConfigError, match="64789"):
        storylm_config.check(config)
    config["model_config"]["vocab_size"] = 64798
    storylm_config.check(config)


@pytest.mark.parametrize(
    "key, value, failure",
    [
        ("sample.prompts", [], "[] should be non-empty"),
        ("model_config.n_layer", "two", "'two' is not of type 'integer'"),
        ("corpus.sources", "hf", "Additional properties are not allowed ('sources' was unexpected)"),
        ("sample.top_p", 0, "0 is less than or equal to the minimum of 0"),
    ],
)
def test_schema_rejects(key, value, failure):
    """The schema itself refuses the value, for the reason given, at that key (not some other error)."""
    config = changed(default_config(), key, value)
    *parents, last = key.split(".")
    at = "".join(f"[{name!r}]" for name in (parents if key == "corpus.sources" else [*parents, last]))
    with pytest.raises(WorkflowError, match=re.escape(f"ValidationError: {failure}")) as error:
        validate(config, SCHEMA)
    assert f"On instance{at}:" in str(error.value)


def test_an_optimizer_argument_set_to_null_is_left_out_and_litgpt_builds_the_optimizer():
    """betas: null lets a user pick an optimizer without betas (SGD); litgpt's own helper then builds it."""
    import torch
    from litgpt.utils import instantiate_torch_optimizer

    from storylm.pretrain import optimizer_args
    from storylm.schema import validate as fill_defaults

    config = fill_defaults({"optimizer": {"class_path": "torch.optim.SGD",
                                          "init_args": {"lr": 0.1, "betas": None, "momentum": "0.9"}}})
    optimizer = optimizer_args(config["optimizer"])
    assert optimizer == {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1, "weight_decay": 0.1, "momentum": 0.9}}
    built = instantiate_torch_optimizer(optimizer, [torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(built, torch.optim.SGD)
    assert (built.defaults["lr"], built.defaults["momentum"], built.defaults["weight_decay"]) == (0.1, 0.9, 0.1)
