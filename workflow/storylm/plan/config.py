"""The config checks that config/schema.yaml cannot express: values that cannot work together.

Each error names the key. They run on every run's resolved config before any job
(storylm.plan.runs), so a config that cannot work stops before the first stage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

from storylm.io.entry import StageError, first_line
from storylm.io.filehash import file_sha256
from storylm.model.tokens import NOT_A_TOKENIZER, StoryTokenizer, TokenizerError


class ConfigError(StageError):
    """A config value that cannot work; the message names the key."""


def check(config: dict) -> None:
    """Raise ConfigError naming the key for values that cannot work together."""
    tok = config["tokenizer"]
    if tok["kind"] == "pretrained" and tok["source"] == "local" and not tok.get("path"):
        raise ConfigError("tokenizer.path: required when tokenizer.kind is 'pretrained' and tokenizer.source 'local'")
    if tok["kind"] == "pretrained" and tok["source"] == "hf" and not tok["hf"].get("repo_id"):
        raise ConfigError("tokenizer.hf.repo_id: required when tokenizer.source is 'hf'")
    _check_model(config)
    _check_optimizer(config["optimizer"])
    _check_vocab(config)
    _check_split(config)
    _check_train(config)
    _check_strategy(config)
    _check_prompts(config)
    for index, entry in enumerate(config["evaluate"]["extra_sets"]):
        if not Path(entry["path"]).is_file():
            raise ConfigError(f"evaluate.extra_sets[{index}].path: {entry['path']} does not exist")
    if config["corpus"]["source"] == "url" and not config["corpus"]["url"]["files"]:
        raise ConfigError("corpus.url.files: empty, but corpus.source is 'url'")
    if config["corpus"]["source"] == "local" and not config["corpus"]["local"]["paths"]:
        raise ConfigError("corpus.local.paths: empty, but corpus.source is 'local'")


def _check_model(config: dict) -> None:
    """The model as litgpt builds it: known keys, then litgpt's Config and GPT (on the meta device:
    no memory), so a shape litgpt refuses stops here, not in the pretrain job."""
    model = config["model_config"]
    once("model", model, lambda: _build_model(model))


# Every snakemake run plans, and the checks that need litgpt import it (torch, lightning: 2-10 s a
# run). A check that passed is remembered with what it read and the litgpt and torch versions, and
# not run again on the same; a failed one is never remembered.


def passed_checks_file() -> Path:
    """One key a line of each check that passed (a user cache, as Snakemake's ~/.cache/snakemake)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "storylm" / "passed-checks"


def once(check: str, inputs, run) -> None:
    """run() (which raises ConfigError when the check fails) unless it passed before on the same inputs."""
    versions = {name: metadata.version(name) for name in ("litgpt", "torch")}
    key = hashlib.sha256(json.dumps([check, inputs, versions], sort_keys=True, default=str).encode()).hexdigest()
    try:
        if key in passed_checks_file().read_text(encoding="utf-8").split():
            return
    except OSError:
        pass
    run()
    try:  # a cache: where it cannot be written, the next run checks again
        passed_checks_file().parent.mkdir(parents=True, exist_ok=True)
        with open(passed_checks_file(), "a", encoding="utf-8") as file:
            file.write(key + "\n")  # one short append: concurrent runs cannot tear it
    except OSError:
        pass


def _build_model(model: dict) -> None:
    import torch
    from litgpt import GPT, Config

    known = {f.name for f in dataclasses.fields(Config)}
    for key in model:
        if key not in known:
            raise ConfigError(f"model_config.{key}: not a litgpt.Config field")
    if model.get("head_size") is None and model["n_embd"] % model["n_head"]:
        raise ConfigError(f"model_config.n_head: n_embd {model['n_embd']} is not a multiple of n_head"
                          f" {model['n_head']}; set model_config.head_size (the width of one head) or another n_head")
    groups = model.get("n_query_groups")
    if groups is not None and model["n_head"] % groups:
        raise ConfigError(f"model_config.n_query_groups: n_head {model['n_head']} is not a multiple of {groups}")
    try:
        built = Config(**model)
        with torch.device("meta"):
            gpt = GPT(built)
            gpt.max_seq_length = min(8, built.block_size)
            gpt(torch.zeros(1, min(4, built.block_size), dtype=torch.long))
    except Exception as error:  # noqa: BLE001 - whatever litgpt refuses, said in one line
        raise ConfigError(f"model_config: litgpt cannot build this model ({type(error).__name__}:"
                          f" {first_line(error)})") from None


def _check_optimizer(optimizer: dict) -> None:
    """optimizer.class_path names a torch optimizer, and its init_args are arguments it takes."""
    once("optimizer", optimizer, lambda: _optimizer_class(optimizer))


def _optimizer_class(optimizer: dict) -> None:
    import importlib
    import inspect

    import torch

    path = optimizer["class_path"]
    module_name, _, class_name = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), class_name) if module_name else None
    except (ImportError, AttributeError, ValueError):
        found = None
    if not (inspect.isclass(found) and issubclass(found, torch.optim.Optimizer)):
        known = ", ".join(f"torch.optim.{name}" for name in ("AdamW", "Adam", "SGD"))
        raise ConfigError(f"optimizer.class_path: {path} is not a torch.optim.Optimizer class (e.g. {known})")
    parameters = inspect.signature(found.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    for key, value in optimizer["init_args"].items():
        if value is not None and key not in parameters:
            raise ConfigError(f"optimizer.init_args.{key}: {path} takes no argument {key!r} (set it to null to"
                              " leave it out)")


def tokenizer_vocab_size(config: dict) -> int | None:
    """Number of token ids the tokenizer can produce (its largest id + 1); None until a hub tokenizer is fetched."""
    tok = config["tokenizer"]
    if tok["kind"] == "train":
        return tok["vocab_size"]
    if tok["source"] == "hf":
        return None  # checked by the pretrain_config stage, once the files are downloaded
    path = Path(tok["path"])
    if not path.is_dir():
        raise ConfigError(f"tokenizer.path: {path} is not a directory (or use tokenizer.source: hf)")
    return directory_vocab_size(path, "tokenizer.path")


def directory_vocab_size(path: Path, key: str) -> int:
    """Token ids of the tokenizer files in path (its largest id + 1)."""
    try:
        return StoryTokenizer(path).ids
    except TokenizerError:
        raise ConfigError(f"{key}: {path} {NOT_A_TOKENIZER}") from None


def _check_vocab(config: dict) -> None:
    needed = tokenizer_vocab_size(config)
    if needed is not None:
        check_vocab(config["model_config"], needed)


def check_vocab(model: dict, needed: int) -> None:
    """ConfigError unless the model's (padded) vocabulary holds the tokenizer's `needed` ids."""
    vocab_size = model.get("vocab_size")
    if vocab_size is not None and vocab_size < needed:
        raise ConfigError(
            f"model_config.vocab_size: {vocab_size} is smaller than the tokenizer's {needed} token ids"
        )
    padded = model.get("padded_vocab_size")
    if padded is not None and padded < max(needed, vocab_size or 0):
        raise ConfigError(
            f"model_config.padded_vocab_size: {padded} is smaller than vocab_size {max(needed, vocab_size or 0)}"
        )


def _check_prompts(config: dict) -> None:
    """Prompts against the block size, when the tokenizer is at hand (a local one, or one built by an
    earlier run); otherwise the sample_prompts job checks them as soon as the tokenizer is built."""
    folder = tokenizer_at_hand(config)
    if folder is None:
        return
    prompts, block_size = config["sample"]["prompts"], config["model_config"]["block_size"]
    files = {path.name: file_sha256(path) for path in sorted(folder.iterdir()) if path.is_file()}

    def check():
        try:
            tokenizer = StoryTokenizer(folder)
        except Exception as error:  # noqa: BLE001 - a folder litgpt cannot read is the sample_prompts job's to name
            print(f"storylm: {folder}: the prompts are checked later ({type(error).__name__}: {first_line(error)})")
            return
        check_prompt_tokens(prompts, tokenizer, block_size)

    once("prompts", [prompts, block_size, files], check)


def tokenizer_at_hand(config: dict) -> Path | None:
    """A tokenizer folder that exists now: the tokenizer stage's own folder, else a local pretrained one."""
    # Only the stages up to the tokenizer: the plan computes every record once, later (storylm.plan.runs).
    from storylm.io.filehash import HashCache
    from storylm.plan import stages
    from storylm.plan.integrity import check_folder

    built = Path(stages.folder("tokenizer", stages.records(config, until="tokenizer")["tokenizer"]["hash"]))
    if (built / stages.BY_NAME["tokenizer"].record).is_file():
        with HashCache() as cache:
            if check_folder("tokenizer", built, cache) is None:
                return built
        return None  # damaged: this run rebuilds it, and the sample_prompts job checks the rebuilt one
    tok = config["tokenizer"]
    if tok["kind"] == "pretrained" and tok["source"] == "local" and Path(tok["path"]).is_dir():
        return Path(tok["path"])
    return None


def check_prompt_tokens(prompts: list[str], tokenizer, block_size: int) -> list[int]:
    """Each prompt's token count; ConfigError when one leaves no room for a story in the block."""
    counts = [len(tokenizer.encode(prompt)) for prompt in prompts]
    for index, count in enumerate(counts):
        if count >= block_size:
            raise ConfigError(f"sample.prompts[{index}]: {count} tokens, but model_config.block_size is {block_size}:"
                              f" a prompt must leave room for the story (at most {block_size - 1} tokens)")
    return counts


def _check_split(config: dict) -> None:
    corpus = config["corpus"]
    val_size = corpus["split"]["val_size"]
    if val_size >= 1 and val_size != int(val_size):
        raise ConfigError(f"corpus.split.val_size: {val_size} is neither a count (integer) nor a fraction (< 1)")
    if corpus["source"] == "builtin":
        total = corpus["builtin"]["num_stories"]
        if corpus["max_stories"] is not None:
            total = min(total, corpus["max_stories"])
        if val_size >= 1 and val_size >= total:
            raise ConfigError(
                f"corpus.split.val_size: {int(val_size)} val stories leave none for training out of {total}"
            )


def _check_train(config: dict) -> None:
    train, model = config["train"], config["model_config"]
    if train["max_tokens"] is None and train["epochs"] is None:
        raise ConfigError("train.max_tokens: give a training budget as train.max_tokens or train.epochs")
    if train["max_seq_length"] > model["block_size"]:
        raise ConfigError(
            f"train.max_seq_length: {train['max_seq_length']} exceeds model_config.block_size {model['block_size']}"
        )
    per_step = train["micro_batch_size"] * config["devices"] * config["num_nodes"]
    if train["global_batch_size"] % per_step:
        raise ConfigError(
            f"train.global_batch_size: {train['global_batch_size']} is not a multiple of micro_batch_size x devices"
            f" x num_nodes = {per_step}"
        )


def _check_strategy(config: dict, cuda: bool | None = None) -> None:
    """fsdp needs CUDA (Lightning and torch refuse it on a CPU); `cuda` is this machine's, by default."""
    if config["strategy"] != "fsdp" or config["devices"] * config["num_nodes"] == 1:
        return
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if not cuda:
        raise ConfigError("strategy: fsdp needs CUDA, and this machine has none; auto trains with FSDP where it"
                          " finds CUDA (a cluster's GPU nodes) and with DDP elsewhere")
