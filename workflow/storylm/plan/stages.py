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
existing fingerprint unchanged. The fingerprints see the config through
storylm.plan.added_keys.pinned_view, which leaves out every key added to the schema after the
hashes were pinned while it is at its default, in any section; so an upgrade never forces a user
to retrain, and no key needs listing. tests/test_stages.py pins the hashes of the shipped configs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from storylm.io.entry import RECORD
from storylm.io.filehash import HashCache, file_sha256
from storylm.io.manifest import MANIFEST
from storylm.model.tokens import TOKENIZER_FILES
from storylm.model.training_runner import TRAIN_LOG
from storylm.plan.added_keys import TOP, added, pinned_view

HASH_LENGTH = 10


def short_hash(obj) -> str:
    """Hash of a JSON-able object that ignores dict key order."""
    canonical = json.dumps(obj, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:HASH_LENGTH]


# ---------------------------------------------------------------------------
# Fingerprints: the settings that change each stage's output


# How files are read: nothing to the builtin generator's stories.
READING_KEYS = ("include", "text_field", "max_malformed_fraction", "max_story_characters")


def _corpus(config: dict) -> dict:
    """The settings that change the corpus stage's output, for the active source only."""
    corpus = config["corpus"]
    builtin = corpus["source"] == "builtin"
    fingerprint = {key: corpus[key] for key in ("source", "max_stories", "normalize", "dedup", "split")}
    if not builtin:  # an added one only while set away from its default (the fingerprints' view)
        fingerprint.update({key: corpus[key] for key in READING_KEYS if key in corpus})
    fingerprint.update(_source(corpus))
    fingerprint.update({key: value for key, value in added(corpus, "corpus").items()
                        if not (builtin and key in READING_KEYS)})
    return fingerprint


def _download(config: dict) -> dict:
    """Only where the raw files come from; reading and cleaning settings do not refetch them."""
    corpus = config["corpus"]
    if corpus["source"] == "builtin":
        return {"source": "builtin"}
    return {"source": corpus["source"], "include": corpus["include"], **_source(corpus)}


def _source(corpus: dict) -> dict:
    """The active source's settings; local files by their content, not by where they lie."""
    if corpus["source"] == "local":
        return {"local_files": local_files(corpus["local"]["paths"]), **added(corpus["local"], "corpus.local")}
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
    return {**_tokenizer_source(tok), **added(tok, "tokenizer")}


def _tokenizer_source(tok: dict) -> dict:
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
    return config["shards"]


PRETRAIN_KEYS = ("model_config", "train", "eval", "optimizer", "precision", "devices", "num_nodes", "seed",
                 "logger_name", "data_workers")


def _pretrain(config: dict) -> dict:
    # vocab_size left out is the tokenizer's, which the tokenizer hash (an input) fixes.
    fingerprint = {key: config[key] for key in PRETRAIN_KEYS}
    if config["logger_name"] == "wandb":
        fingerprint["wandb_project"] = config["wandb_project"]
    # The top level's added keys are training settings (litgpt's CLI takes them there); a new stage's
    # section is not one of them (added leaves it out). One process has no strategy to choose.
    single = config["devices"] * config["num_nodes"] == 1
    fingerprint.update({key: value for key, value in added(config, TOP).items() if not (single and key == "strategy")})
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
    # Its rule file in workflow/rules/, included in table order: default <name>.smk where there is one, else
    # stage.smk's one rule (its command on its files by role: a stage needs no rule file of its own).
    rules: str = ""
    # Its record, written last: a folder with its record is a finished stage. None for the downloads, whose
    # manifest.json lists their files with sizes and sha256s instead.
    record: str | None = RECORD
    # The roles it reads (`provides` of the stages upstream): the plan resolves each to a file per run
    # (`provider`), and a role only a stage some runs lack provides is an input of the other runs no more.
    uses: tuple[str, ...] = ()

    @property
    def rule_file(self) -> str:
        own = self.rules or f"{self.name}.smk"
        return f"workflow/rules/{own if self.rules or (RULES_DIR / own).is_file() else GENERIC_RULES}"


RULES_DIR = Path(__file__).resolve().parents[2] / "rules"
GENERIC_RULES = "stage.smk"


# Continued pretraining (`continue_from: <run>`): a training of CONTINUED starts from the final model of
# the same stage of another run's training, read as INITIAL_MODEL, and keeps that training's folders of
# KEPT_WHEN_CONTINUED (the model's tokenizer: its own shards are tokenized with it). The key holds the run's
# name in the config and the upstream training's hash in the fingerprint, so a renamed run moves nothing.
CONTINUE_KEY = "continue_from"
CONTINUED = "pretrain"
INITIAL_MODEL = "initial model"
KEPT_WHEN_CONTINUED = ("tokenizer",)

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
              needed=_downloads_corpus, provides={"raw files": MANIFEST}, rules="corpus.smk", record=None),
    StageSpec("corpus", "Data/corpus", ("download",), _corpus, CORPUS_READS,
              provides={"train split": "train.jsonl", "val split": "val.jsonl", "corpus stats": "stats.json"},
              uses=("raw files",)),
    StageSpec("tokenizer_download", "Data/raw", (), _tokenizer_download,
              {"tokenizer.hf": "when tokenizer.source is hf"}, needed=_hub_tokenizer,
              provides={"hub tokenizer": MANIFEST}, rules="tokenizer.smk", record=None),
    # The tokenizer reads the corpus to train on its train split (kind: train) and, in any case,
    # to measure itself on the val split.
    StageSpec("tokenizer", "Data/tokenizer", ("corpus", "tokenizer_download"), _tokenizer,
              {"tokenizer.kind": None, "tokenizer.source": "when tokenizer.kind is pretrained",
               "tokenizer.vocab_size": "when tokenizer.kind is train",
               "tokenizer.min_frequency": "when tokenizer.kind is train",
               "tokenizer.max_train_characters": "when tokenizer.kind is train",
               "tokenizer.path": "when tokenizer.source is local"},
              provides={"tokenizer": "tokenizer_config.json", "tokenizer stats": "stats.json"},
              uses=("train split", "val split", "hub tokenizer")),
    StageSpec("shards", "Data/shards", ("corpus", "tokenizer"), _shards,
              {"shards": None}, uses=("train split", "val split", "tokenizer"),
              provides={"shards": "stats.json", "train shards": "train/index.json", "val shards": "val/index.json"}),
    StageSpec("pretrain", "results/pretrain", ("shards", "tokenizer"), _pretrain,
              {**{key: None for key in PRETRAIN_KEYS}, "wandb_project": "when logger_name is wandb",
               "strategy": "when not auto and devices x num_nodes > 1", CONTINUE_KEY: "when set"},
              provides={"final model": "final/lit_model.pth", "hyperparameters": "final/hyperparameters.yaml",
                        "train log": TRAIN_LOG, "litgpt config": "pretrain.yaml"}, uses=("shards", "tokenizer")),
    StageSpec("evaluate", "results/evaluate", ("pretrain", "shards", "corpus"), _evaluate, {"evaluate": None},
              provides={"metrics": "metrics.json", "story scores": "story_scores.tsv", "loss plot": "loss.png",
                        "train loss": "train_loss.tsv"},
              uses=("final model", "train log", "shards", "train split", "val split", "corpus stats")),
    StageSpec("sample", "results/sample", ("pretrain", "corpus"), _sample, {"sample": None},
              provides={"samples": "samples.json", "samples text": "samples.txt", "sample checks": "consistency.json",
                        "sample figures": "figures.json", "prompt tokens": "prompt_tokens.json"},
              uses=("tokenizer", "final model", "train split", "val split"),
              reads_through=("tokenizer",)),  # the prompts' token counts, before training
    StageSpec("export", "results/export", ("pretrain", "evaluate", "sample"), _export, {"export": None, **CORPUS_READS},
              provides={"export": "model.safetensors"}, record="storylm_stage.json",  # config.json is the model's
              uses=("final model", "hyperparameters", "litgpt config", "metrics", "story scores", "samples",
                    "sample checks", "sample figures", "val split", "tokenizer"),
              # the val split for the lm-eval task; the tokenizer folder's licence file
              reads_through=("corpus", "tokenizer")),
)

BY_NAME = {spec.name: spec for spec in STAGES}
ORDER = tuple(spec.name for spec in STAGES)


def folder(stage: str, hash_: str) -> str:
    """A stage folder, relative to the working directory."""
    return f"{BY_NAME[stage].parent}/{hash_}"


def provider(stage: str, role: str, config: dict) -> str | None:
    """The nearest stage upstream of `stage` (by its inputs, breadth first, in table order) that a run of
    `config` has and that provides `role`; None when only stages the run lacks provide it (the download
    of a builtin corpus). It must be one the stage reads (its inputs or reads_through), so every edge is in
    the table."""
    frontier, seen, lacking = list(BY_NAME[stage].inputs), set(), False
    while frontier:
        for name in frontier:
            if role in BY_NAME[name].provides and not BY_NAME[name].needed(config):
                lacking = True  # an optional stage this run has not: a stage further up may provide it
            elif role in BY_NAME[name].provides:
                spec = BY_NAME[stage]
                if name not in spec.inputs + spec.reads_through:
                    raise KeyError(f"{stage} reads {role!r} from {name}: add {name} to its inputs or reads_through")
                return name
        seen.update(frontier)
        frontier = [n for n in ORDER if n not in seen and any(n in BY_NAME[m].inputs for m in frontier)]
    if lacking:
        return None
    raise KeyError(f"{stage}: no stage upstream provides {role!r}")


def files(stage: str, config: dict, folders: Callable[[str], str], roles: tuple[str, ...] | None = None
          ) -> dict[str, str]:
    """The files a run of `config` gives `stage` by role (its `uses`, or `roles`), each in the folder
    `folders(provider)` of its provider; a role the stage provides and no stage above it does (an earlier
    step's file: pretrain's litgpt config) in its own. (A continued training reads the final model upstream.)"""
    found = {}
    for role in BY_NAME[stage].uses if roles is None else roles:
        above = any(role in BY_NAME[name].provides for name in ancestors(stage))
        name = stage if role in BY_NAME[stage].provides and not above else provider(stage, role, config)
        if name is not None:
            found[role] = f"{folders(name)}/{BY_NAME[name].provides[role]}"
    return found


def outputs(stage: str, folder: str, roles: tuple[str, ...] | None = None) -> dict[str, str]:
    """The files a stage writes in its folder, by role (all it provides, or `roles`: one step's)."""
    provides = BY_NAME[stage].provides
    return {role: f"{folder}/{provides[role]}" for role in (provides if roles is None else roles)}


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


def records(config: dict, until: str | None = None, continues: dict[str, dict] | None = None) -> dict[str, dict]:
    """Every stage's record: its settings and the hashes it was built from (a folder's config.json).

    Computed once for all stages: the fingerprints read and hash files (a pretrained
    tokenizer's, the extra evaluation sets, local corpus files). With `until`, only the stages up
    to that one in table order (all it can read), for a check that needs one early stage's hash.
    `continues`: the records of the training this one continues (its `continue_from`), whose folders of
    KEPT_WHEN_CONTINUED are this one's, and whose CONTINUED hash enters this one's in place of the run's name.
    """
    found: dict[str, dict] = {}
    view = pinned_view(config)  # the added keys at their default left out
    for spec in STAGES[:ORDER.index(until) + 1] if until else STAGES:
        if continues and spec.name in KEPT_WHEN_CONTINUED:
            found[spec.name] = continues[spec.name]
            continue
        settings = spec.fingerprint(view)
        if continues and spec.name == CONTINUED:
            settings[CONTINUE_KEY] = continues[spec.name]["hash"]
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
