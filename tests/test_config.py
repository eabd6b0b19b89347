"""Config checks (storylm/plan/config.py) and the schema's refusals, without running any stage."""

from __future__ import annotations

import re

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from conftest import CHATGLM3_DIR, REPO, changed, needs_chatglm3
from storylm.plan import config as storylm_config
from storylm.plan.config import ConfigError

SCHEMA = str(REPO / "config" / "schema.yaml")


def default_config() -> dict:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    validate(config, SCHEMA)
    del config["runs"]
    return config


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

    from storylm.plan.schema import validate as fill_defaults
    from storylm.pretrain import optimizer_args

    config = fill_defaults({"optimizer": {"class_path": "torch.optim.SGD",
                                          "init_args": {"lr": 0.1, "betas": None, "momentum": "0.9"}}})
    optimizer = optimizer_args(config["optimizer"])
    assert optimizer == {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1, "weight_decay": 0.1, "momentum": 0.9}}
    built = instantiate_torch_optimizer(optimizer, [torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(built, torch.optim.SGD)
    assert (built.defaults["lr"], built.defaults["momentum"], built.defaults["weight_decay"]) == (0.1, 0.9, 0.1)
