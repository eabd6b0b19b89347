"""The stage table: each stage's folder, the stages it reads, the config keys it depends on, and its hash.

Every stage writes into a folder named by a short hash of exactly the settings that change
its output (its fingerprint) plus the hashes of the stages it reads. So a changed setting
invalidates its own stage and everything downstream, nothing upstream, and switching a
setting back finds the earlier folder again.

STAGES below is the one place that says, for each stage: where its folders live, which
stages it may read, when a run needs it, and which config keys its fingerprint holds.
Everything else is derived from it: the records and hashes (`records`), the folders the
rules use (`folder`), and what a changed key reruns (`reruns`, for config/README.md).

A rule of this table: a new option whose default reproduces today's output leaves every
existing fingerprint unchanged. Such a key enters a fingerprint only when it is set away
from its default (ADDED_KEYS), so an upgrade never forces a user to retrain;
tests/test_stages.py pins the hashes of the shipped configs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from storylm.io.entry import RECORD
from storylm.io.filehash import HashCache, file_sha256
from storylm.model.tokens import TOKENIZER_FILES

HASH_LENGTH = 10

# Keys added to the schema after the hashes were first pinned, by section (TOP: the top-level keys):
# each enters its stage's fingerprint only when set away from its schema default.
TOP = ""
ADDED_KEYS: dict[str, tuple[str, ...]] = {
    "corpus": ("max_story_characters",),
    TOP: ("strategy",),
}


def short_hash(obj) -> str:
    """Hash of a JSON-able object that ignores dict key order."""
    canonical = json.dumps(obj, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:HASH_LENGTH]


# ---------------------------------------------------------------------------
# Fingerprints: the settings that change each stage's output


def _corpus(config: dict) -> dict:
    """The settings that change the corpus stage's output, for the active source only."""
    corpus = config["corpus"]
    source = corpus["source"]
    keys = ["source", "max_stories", "normalize", "dedup", "split"]
    if source != "builtin":
        keys += ["include", "text_field", "max_malformed_fraction"]
    fingerprint = {key: corpus[key] for key in keys}
    fingerprint.update(_source(corpus))
    if source != "builtin":
        fingerprint.update(_away_from_default(corpus, "corpus"))
    return fingerprint


@cache
def _schema_defaults() -> dict:
    from storylm.plan.schema import defaults

    return defaults()


def _section_defaults(name: str) -> dict:
    return _schema_defaults()[name] if name != TOP else _schema_defaults()


def _away_from_default(section: dict, name: str) -> dict:
    """The section's ADDED_KEYS that are set away from their schema default (name TOP: the whole config's
    top-level ones)."""
    default = _section_defaults(name)
    return {key: section[key] for key in ADDED_KEYS[name] if section[key] != default[key]}


def with_added_defaults(section: dict, name: str) -> dict:
    """A stage's settings as its command needs them: the ADDED_KEYS its fingerprint leaves out at their
    default, filled back in."""
    default = _section_defaults(name)
    return {**{key: default[key] for key in ADDED_KEYS.get(name, ())}, **section}


def _download(config: dict) -> dict:
    """Only where the raw files come from; reading and cleaning settings do not refetch them."""
    corpus = config["corpus"]
    if corpus["source"] == "builtin":
        return {"source": "builtin"}
    return {"source": corpus["source"], "include": corpus["include"], **_source(corpus)}


def _source(corpus: dict) -> dict:
    """The active source's settings; local files by their content, not by where they lie."""
    if corpus["source"] == "local":
        return {"local_files": local_files(corpus["local"]["paths"])}
    return {corpus["source"]: corpus[corpus["source"]]}


def local_files(paths: list[str]) -> list:
    """[name, sha256] of every file the download stage reads from corpus.local.paths: a folder's files
    by their path inside it, hidden folders (.cache, .git) left out as the download stage leaves them;
    a file by its own name (a link's, not its target's); a missing path as [path, None].

    Local files change without a config change, so their content stands for them: `touch`, `cp`
    or a moved folder (with corpus.local.paths updated) leave the hash as it was.
    """
    entries = []
    with HashCache() as cache:
        for raw in paths:
            path = Path(raw).expanduser()
            if path.is_dir():
                files = sorted((p.relative_to(path).as_posix(), p) for p in path.rglob("*") if p.is_file()
                               and not any(part.startswith(".") for part in p.relative_to(path).parts))
            elif path.is_file():
                files = [(path.name, path)]
            else:
                entries.append([raw, None])
                continue
            entries += [[name, cache.sha256(f)] for name, f in files]
    return entries


def _tokenizer_download(config: dict) -> dict:
    """A hub tokenizer: the repository, its pinned revision and the files."""
    return {"source": "hf", "hf": config["tokenizer"]["hf"]}


def _tokenizer(config: dict) -> dict:
    tok = config["tokenizer"]
    if tok["kind"] == "train":
        return {"kind": "train", "vocab_size": tok["vocab_size"], "min_frequency": tok["min_frequency"],
                "max_train_characters": tok["max_train_characters"]}
    if tok["source"] == "hf":
        return {"kind": "pretrained", "source": "hf"}  # the files are the tokenizer_download input
    # A pretrained tokenizer is identified by its files, not by where they lie.
    path = Path(tok["path"])
    files = {name: file_sha256(path / name) for name in TOKENIZER_FILES if (path / name).is_file()}
    return {"kind": "pretrained", "files": files}


def _shards(config: dict) -> dict:
    return {"chunk_bytes": config["shards"]["chunk_bytes"]}


PRETRAIN_KEYS = ("model_config", "train", "eval", "optimizer", "precision", "devices", "num_nodes", "seed",
                 "logger_name", "data_workers")


def _pretrain(config: dict) -> dict:
    # vocab_size left out is the tokenizer's, which the tokenizer hash (an input) fixes.
    fingerprint = {key: config[key] for key in PRETRAIN_KEYS}
    if config["logger_name"] == "wandb":
        fingerprint["wandb_project"] = config["wandb_project"]
    if config["devices"] * config["num_nodes"] > 1:  # one process has no strategy to choose
        fingerprint.update(_away_from_default(config, TOP))  # strategy, when not auto
    return fingerprint


def _evaluate(config: dict) -> dict:
    # An extra set's contents can change without a config change: its sha256 stands for them.
    files = [file_sha256(entry["path"]) if Path(entry["path"]).is_file() else None
             for entry in config["evaluate"]["extra_sets"]]
    return {**config["evaluate"], "extra_set_files": files}


def _sample(config: dict) -> dict:
    return config["sample"]


def _export(config: dict) -> dict:
    # The model card names the data; settings left null are the export's own choice.
    return {**{key: value for key, value in config["export"].items() if value is not None},
            "corpus": _corpus(config)}


# ---------------------------------------------------------------------------
# When a run needs a stage


def _always(config: dict) -> bool:
    return True


def _downloads_corpus(config: dict) -> bool:
    return config["corpus"]["source"] != "builtin"


def _hub_tokenizer(config: dict) -> bool:
    return config["tokenizer"]["kind"] == "pretrained" and config["tokenizer"]["source"] == "hf"


# ---------------------------------------------------------------------------
# The table


@dataclass(frozen=True)
class StageSpec:
    name: str
    parent: str  # the folder that holds its hash folders
    inputs: tuple[str, ...]  # the stages it reads (each only when a run needs that stage)
    fingerprint: Callable[[dict], dict]
    # Config keys (dotted prefixes) its fingerprint holds, each with the condition under which
    # it counts (None: always); tests/test_stages.py checks these against what it really reads.
    reads: dict[str, str | None]
    needed: Callable[[dict], bool] = _always
    # What other stages read from its folders: role -> file. A consumer asks for a role and gets the
    # nearest stage upstream that provides it (`provider`), so a stage put in between (a dedup stage
    # that also provides the splits) is found without a rule naming it.
    provides: dict[str, str] = field(default_factory=dict)
    # Stages it reads whose folders its inputs already fix (sample reads the tokenizer its pretrain was
    # built from): edges of the graph, left out of its hash, since the inputs' hashes hold them.
    reads_through: tuple[str, ...] = ()
    rules: str = ""  # its rule file in workflow/rules/ (default <name>.smk), included in table order
    # Its record, written last: a folder with its record is a finished stage. None for the downloads, whose
    # manifest.json lists their files with sizes and sha256s instead.
    record: str | None = RECORD

    @property
    def rule_file(self) -> str:
        return f"workflow/rules/{self.rules or self.name + '.smk'}"


NOT_BUILTIN = "not for builtin"
# What the corpus fingerprint holds (the export's card holds it too).
CORPUS_READS = {"corpus.source": None, "corpus.max_stories": None, "corpus.normalize": None, "corpus.dedup": None,
                "corpus.split": None, "corpus.include": NOT_BUILTIN, "corpus.text_field": NOT_BUILTIN,
                "corpus.max_malformed_fraction": NOT_BUILTIN, "corpus.max_story_characters": NOT_BUILTIN,
                "corpus.builtin": "when corpus.source is builtin",
                "corpus.hf": "when corpus.source is hf", "corpus.url": "when corpus.source is url",
                "corpus.local": "when corpus.source is local"}

# In the order they run; each reads only stages above it.
STAGES: tuple[StageSpec, ...] = (
    StageSpec("download", "Data/raw", (), _download,
              {"corpus.source": None, "corpus.hf": "when corpus.source is hf",
               "corpus.url": "when corpus.source is url", "corpus.local": "when corpus.source is local",
               "corpus.include": NOT_BUILTIN},
              needed=_downloads_corpus, provides={"raw files": "manifest.json"}, rules="corpus.smk", record=None),
    StageSpec("corpus", "Data/corpus", ("download",), _corpus, CORPUS_READS,
              provides={"train split": "train.jsonl", "val split": "val.jsonl", "corpus stats": "stats.json"}),
    StageSpec("tokenizer_download", "Data/raw", (), _tokenizer_download,
              {"tokenizer.hf": "when tokenizer.source is hf"}, needed=_hub_tokenizer,
              provides={"hub tokenizer": "manifest.json"}, rules="tokenizer.smk", record=None),
    # The tokenizer reads the corpus to train on its train split (kind: train) and, in any case,
    # to measure itself on the val split.
    StageSpec("tokenizer", "Data/tokenizer", ("corpus", "tokenizer_download"), _tokenizer,
              {"tokenizer.kind": None, "tokenizer.source": "when tokenizer.kind is pretrained",
               "tokenizer.vocab_size": "when tokenizer.kind is train",
               "tokenizer.min_frequency": "when tokenizer.kind is train",
               "tokenizer.max_train_characters": "when tokenizer.kind is train",
               "tokenizer.path": "when tokenizer.source is local"},
              provides={"tokenizer": "tokenizer_config.json"}),
    StageSpec("shards", "Data/shards", ("corpus", "tokenizer"), _shards,
              {"shards": None}, provides={"shards": "stats.json"}),
    StageSpec("pretrain", "results/pretrain", ("shards", "tokenizer"), _pretrain,
              {**{key: None for key in PRETRAIN_KEYS}, "wandb_project": "when logger_name is wandb",
               "strategy": "when not auto and devices x num_nodes > 1"},
              provides={"final model": "final/lit_model.pth", "hyperparameters": "final/hyperparameters.yaml",
                        "train log": "train.log", "litgpt config": "pretrain.yaml"}),
    StageSpec("evaluate", "results/evaluate", ("pretrain", "shards", "corpus"), _evaluate, {"evaluate": None},
              provides={"metrics": "metrics.json", "story scores": "story_scores.tsv", "loss plot": "loss.png"}),
    StageSpec("sample", "results/sample", ("pretrain", "corpus"), _sample, {"sample": None},
              provides={"samples": "samples.json", "samples text": "samples.txt", "sample checks": "consistency.json"},
              reads_through=("tokenizer",)),  # the prompts' token counts, before training
    StageSpec("export", "results/export", ("pretrain", "evaluate", "sample"), _export, {"export": None, **CORPUS_READS},
              provides={"export": "model.safetensors"}, record="storylm_stage.json",  # config.json is the model's
              # the val split for the lm-eval task; the tokenizer folder's licence file
              reads_through=("corpus", "tokenizer")),
)

BY_NAME = {spec.name: spec for spec in STAGES}
ORDER = tuple(spec.name for spec in STAGES)


def folder(stage: str, hash_: str) -> str:
    """A stage folder, relative to the working directory."""
    return f"{BY_NAME[stage].parent}/{hash_}"


def provider(stage: str, role: str) -> str:
    """The nearest stage upstream of `stage` (by its inputs, breadth first, in table order) that provides
    `role`; it must be one the stage reads (its inputs or reads_through), so every edge is in the table."""
    frontier, seen = list(BY_NAME[stage].inputs), set()
    while frontier:
        for name in frontier:
            if role in BY_NAME[name].provides:
                spec = BY_NAME[stage]
                if name not in spec.inputs + spec.reads_through:
                    raise KeyError(f"{stage} reads {role!r} from {name}: add {name} to its inputs or reads_through")
                return name
        seen.update(frontier)
        frontier = [n for n in ORDER if n not in seen and any(n in BY_NAME[m].inputs for m in frontier)]
    raise KeyError(f"{stage}: no stage upstream provides {role!r}")


def last_provider(role: str) -> str:
    """The last stage in table order that provides `role` (a training's final model, its metrics)."""
    return [spec.name for spec in STAGES if role in spec.provides][-1]


def ancestors(stage: str) -> list[str]:
    """Every stage `stage` descends from, in table order."""
    reached = set(BY_NAME[stage].inputs)
    for spec in reversed(STAGES):
        if spec.name in reached:
            reached |= set(spec.inputs)
    return [name for name in ORDER if name in reached]


def always_needed(stage: str) -> bool:
    """Every run has this stage (no download for builtin stories, no tokenizer download but from the hub)."""
    return BY_NAME[stage].needed is _always


def inputs(stage: str, config: dict) -> list[str]:
    """The stages this stage reads in a run of `config`."""
    return [name for name in BY_NAME[stage].inputs if BY_NAME[name].needed(config)]


def active(config: dict) -> list[str]:
    """The stages a run needs: no download for builtin stories, no tokenizer download unless from the hub."""
    return [spec.name for spec in STAGES if spec.needed(config)]


def records(config: dict, until: str | None = None) -> dict[str, dict]:
    """Every stage's record: its settings and the hashes it was built from (a folder's config.json).

    Computed once for all stages: the fingerprints read and hash files (a pretrained
    tokenizer's, the extra evaluation sets, local corpus files). With `until`, only the stages up
    to that one in table order (all it can read), for a check that needs one early stage's hash.
    """
    found: dict[str, dict] = {}
    for spec in STAGES[:ORDER.index(until) + 1] if until else STAGES:
        settings = spec.fingerprint(config)
        upstream = {name: found[name]["hash"] for name in inputs(spec.name, config)}
        found[spec.name] = {"stage": spec.name,
                            "hash": short_hash({"stage": spec.name, "config": settings, "inputs": upstream}),
                            "inputs": upstream, "config": settings}
    return found


def hashes(config: dict) -> dict[str, str]:
    return {stage: record["hash"] for stage, record in records(config).items()}


# ---------------------------------------------------------------------------
# What a changed key reruns (config/README.md)


def downstream(stage: str) -> list[str]:
    """The stage and every stage that may read it, directly or not, in table order."""
    reached = {stage}
    for spec in STAGES:
        if reached & set(spec.inputs):
            reached.add(spec.name)
    return [name for name in ORDER if name in reached]


def _overlaps(key: str, read: str) -> bool:
    return key == read or key.startswith(read + ".") or read.startswith(key + ".")


def reruns(key: str) -> tuple[list[str], list[str]]:
    """(the stages a change of `key` reruns, in order; the conditions under which it counts)."""
    direct = [spec for spec in STAGES if any(_overlaps(key, read) for read in spec.reads)]
    stages = {name for spec in direct for name in downstream(spec.name)}
    notes = {note for spec in direct for read, note in spec.reads.items() if _overlaps(key, read) and note}
    return [name for name in ORDER if name in stages], sorted(notes)
