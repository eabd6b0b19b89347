"""The pipeline's config: checks beyond the JSON schema, and the per-stage hashes.

Every stage writes into a folder named by a short hash of exactly the settings that
change its output, plus the hashes of the stages it reads. So a changed setting
invalidates its own stage and everything downstream, nothing upstream, and switching a
setting back finds the earlier folder again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

HASH_LENGTH = 10

# Files of a pretrained tokenizer directory that litgpt.Tokenizer reads.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "generation_config.json")

# Defaults of the trained tokenizer's special tokens; ids 0, 1, 2 in this order.
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key."""


def short_hash(obj) -> str:
    """Hash of a JSON-able object that ignores dict key order."""
    canonical = json.dumps(obj, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:HASH_LENGTH]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------
# Checks the schema cannot express


def check(config: dict) -> None:
    """Raise ConfigError naming the key for values that cannot work together."""
    tok = config["tokenizer"]
    if tok["kind"] == "pretrained" and tok["source"] == "local" and not tok.get("path"):
        raise ConfigError("tokenizer.path: required when tokenizer.kind is 'pretrained' and tokenizer.source 'local'")
    if tok["kind"] == "pretrained" and tok["source"] == "hf" and not tok["hf"].get("repo_id"):
        raise ConfigError("tokenizer.hf.repo_id: required when tokenizer.source is 'hf'")
    _check_model_keys(config)
    _check_vocab(config)
    _check_split(config)
    _check_train(config)
    for index, entry in enumerate(config["evaluate"]["extra_sets"]):
        if not Path(entry["path"]).is_file():
            raise ConfigError(f"evaluate.extra_sets[{index}].path: {entry['path']} does not exist")
    if config["corpus"]["source"] == "url" and not config["corpus"]["url"]["files"]:
        raise ConfigError("corpus.url.files: empty, but corpus.source is 'url'")
    if config["corpus"]["source"] == "local" and not config["corpus"]["local"]["paths"]:
        raise ConfigError("corpus.local.paths: empty, but corpus.source is 'local'")


def _check_model_keys(config: dict) -> None:
    from litgpt import Config

    known = {f.name for f in dataclasses.fields(Config)}
    for key in config["model_config"]:
        if key not in known:
            raise ConfigError(f"model_config.{key}: not a litgpt.Config field")


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
    from litgpt import Tokenizer

    try:
        tokenizer = Tokenizer(path)
    except NotImplementedError:
        raise ConfigError(f"{key}: {path} holds neither tokenizer.json nor tokenizer.model") from None
    return tokenizer_ids(tokenizer)


def tokenizer_ids(tokenizer) -> int:
    """How many ids a litgpt.Tokenizer can produce and decode (its largest id + 1)."""
    if tokenizer.backend == "huggingface":
        return tokenizer.processor.get_vocab_size(with_added_tokens=True)
    return tokenizer.vocab_size


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


# ---------------------------------------------------------------------------
# What each stage depends on


def _corpus_fingerprint(corpus: dict) -> dict:
    """The settings that change the corpus stage's output, for the active source only."""
    source = corpus["source"]
    keys = ["source", "max_stories", "normalize", "dedup", "split"]
    if source != "builtin":
        keys += ["include", "text_field", "max_malformed_fraction"]
    fingerprint = {key: corpus[key] for key in keys}
    fingerprint[source] = corpus[source]
    if source == "local":
        fingerprint["local_files"] = _local_files_fingerprint(corpus["local"]["paths"])
    return fingerprint


def _download_fingerprint(corpus: dict) -> dict:
    """Only where the raw files come from; reading and cleaning settings do not refetch them."""
    source = corpus["source"]
    if source == "builtin":
        return {"source": source}
    fingerprint = {"source": source, source: corpus[source], "include": corpus["include"]}
    if source == "local":
        fingerprint["local_files"] = _local_files_fingerprint(corpus["local"]["paths"])
    return fingerprint


def _local_files_fingerprint(paths: list[str]) -> list:
    """Local files change without a config change; their sizes and times stand in for their contents."""
    entries = []
    for raw in paths:
        path = Path(raw)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            stat = f.stat() if f.exists() else None
            entries.append([str(f), stat.st_size if stat else None, stat.st_mtime_ns if stat else None])
    return entries


def _extra_set_fingerprints(evaluate: dict) -> list:
    """An extra set's contents can change without a config change: its sha256 stands for them."""
    return [file_sha256(Path(entry["path"])) if Path(entry["path"]).is_file() else None
            for entry in evaluate["extra_sets"]]


def _tokenizer_download_fingerprint(tok: dict) -> dict:
    """A hub tokenizer: the repository, its pinned revision and the files."""
    return {"source": "hf", "hf": tok["hf"]}


def _tokenizer_fingerprint(tok: dict) -> dict:
    if tok["kind"] == "train":
        return {"kind": "train", "vocab_size": tok["vocab_size"], "min_frequency": tok["min_frequency"],
                "max_train_characters": tok["max_train_characters"]}
    if tok["source"] == "hf":
        return {"kind": "pretrained", "source": "hf"}  # the files are the tokenizer_download input
    # A pretrained tokenizer is identified by its files, not by where they lie.
    path = Path(tok["path"])
    files = {name: file_sha256(path / name) for name in TOKENIZER_FILES if (path / name).is_file()}
    return {"kind": "pretrained", "files": files}


def stage_configs(config: dict) -> dict[str, dict]:
    """For each stage, the settings its output depends on (upstream hashes are added by stage_hashes)."""
    return {
        "download": _download_fingerprint(config["corpus"]),
        "corpus": _corpus_fingerprint(config["corpus"]),
        "tokenizer_download": _tokenizer_download_fingerprint(config["tokenizer"]),
        "tokenizer": _tokenizer_fingerprint(config["tokenizer"]),
        "shards": {"chunk_bytes": config["shards"]["chunk_bytes"]},
        "pretrain": {
            # vocab_size left out is the tokenizer's, which the tokenizer hash (an input) fixes.
            "model_config": config["model_config"],
            **{key: config[key] for key in ("train", "eval", "optimizer", "precision", "devices", "num_nodes",
                                            "seed", "logger_name", "data_workers")},
            **({"wandb_project": config["wandb_project"]} if config["logger_name"] == "wandb" else {}),
        },
        "evaluate": {**config["evaluate"], "extra_set_files": _extra_set_fingerprints(config["evaluate"])},
        "sample": config["sample"],
        # The model card names the data; settings left null are the export's own choice.
        "export": {**{key: value for key, value in config["export"].items() if value is not None},
                   "corpus": _corpus_fingerprint(config["corpus"])},
    }


# Which stages each stage reads. The tokenizer reads the corpus to train on its train split
# (kind: train) and, in any case, to measure itself on the val split.
def stage_inputs(config: dict) -> dict[str, list[str]]:
    return {
        "download": [],
        "corpus": [] if config["corpus"]["source"] == "builtin" else ["download"],
        "tokenizer_download": [],
        "tokenizer": ["corpus"] + (["tokenizer_download"] if _hub_tokenizer(config) else []),
        "shards": ["corpus", "tokenizer"],
        "pretrain": ["shards", "tokenizer"],
        "evaluate": ["pretrain", "shards", "corpus"],
        "sample": ["pretrain", "corpus"],
        "export": ["pretrain", "evaluate", "sample"],
    }


STAGE_ORDER = ("download", "corpus", "tokenizer_download", "tokenizer", "shards", "pretrain", "evaluate", "sample",
               "export")


def _hub_tokenizer(config: dict) -> bool:
    return config["tokenizer"]["kind"] == "pretrained" and config["tokenizer"]["source"] == "hf"


def active_stages(config: dict) -> list[str]:
    """The stages a run needs: no download for builtin stories, no tokenizer download unless from the hub."""
    skip = set()
    if config["corpus"]["source"] == "builtin":
        skip.add("download")
    if not _hub_tokenizer(config):
        skip.add("tokenizer_download")
    return [stage for stage in STAGE_ORDER if stage not in skip]


def stage_records(config: dict) -> dict[str, dict]:
    """Every stage's record: its settings and the hashes it was built from (a folder's config.json).

    Computed once for all stages: the settings read and hash files (a pretrained tokenizer's,
    the extra evaluation sets).
    """
    configs, inputs = stage_configs(config), stage_inputs(config)
    records: dict[str, dict] = {}
    for stage in STAGE_ORDER:
        upstream = {name: records[name]["hash"] for name in inputs[stage]}
        records[stage] = {"stage": stage,
                          "hash": short_hash({"stage": stage, "config": configs[stage], "inputs": upstream}),
                          "inputs": upstream, "config": configs[stage]}
    return records


def stage_hashes(config: dict) -> dict[str, str]:
    return {stage: record["hash"] for stage, record in stage_records(config).items()}


def stage_record(config: dict, stage: str) -> dict:
    """What a stage folder's config.json holds: its settings and the hashes it was built from."""
    return stage_records(config)[stage]


def write_stage_record(record_json: str, out_dir: Path, name: str = "config.json") -> None:
    from storylm.cli import write_json

    write_json(Path(out_dir) / name, json.loads(record_json))
