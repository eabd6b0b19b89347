"""Runs: several configs in one workflow, sharing every stage folder they can.

A config's `runs:` maps run names to overrides that are deep-merged into the rest of the
config (the base). No `runs:` means one run named `default`. Each run trains once per seed
of its `seeds` (once with its `seed` when it lists none); the seed goes into the pretrain
folder and everything after it, while corpus, tokenizer and shards are shared. Each run's resolved config
goes through the schema and the checks of storylm.plan.config, and an error names the run and
the key (`runs.wide.model_config.n_embd: ...`).

Every stage folder is named by the hash of its settings (storylm.plan.stages), so two runs that
differ only in model settings have the same corpus, tokenizer and shards hashes: the
stage table below holds one entry per distinct hash, and Snakemake plans one job for it.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from storylm.io.entry import StageError
from storylm.plan import config as config_checks
from storylm.plan import stages
from storylm.plan.schema import SchemaError, validate

RUN_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
DEFAULT_RUN = "default"


class RunError(StageError):
    """A run's config cannot work; the message names the run and the key."""


def deep_merge(base: dict, override: dict) -> dict:
    """base with override's values; nested mappings are merged, everything else replaced."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def check_run_name(name) -> None:
    """A run name becomes a folder (results/runs/<run>) and a command-line word: it must be plain."""
    if not isinstance(name, str):
        raise RunError(f"runs.{name}: quote the name (YAML reads {name} as a {type(name).__name__})")
    if not RUN_NAME.match(name):
        raise RunError(f"runs.{name}: a run name may hold only letters, digits, _ . and -")
    if not name.strip("."):
        raise RunError(f"runs.{name}: a run name of dots only would name a folder above or at results/runs")
    if name.startswith("-"):
        raise RunError(f"runs.{name}: a run name may not start with '-' (commands would read it as an option)")


def resolve(config: dict, check_values: bool = True) -> tuple[dict, dict[str, dict]]:
    """(base, {run name: resolved config}) in the order the config lists them; RunError names run and key.

    check_values=False skips storylm.plan.config's checks (building each model with litgpt, which
    imports torch and lightning: seconds): for a job's own snakemake, whose main process checked them."""
    raw = copy.deepcopy(config)
    for name in (config.get("runs") or {}) if isinstance(config.get("runs"), dict) else ():
        check_run_name(name)  # before the schema, which cannot name an integer key
    try:
        base = validate(raw)
    except SchemaError as error:
        raise RunError(str(error)) from None
    overrides = base.pop("runs") or {DEFAULT_RUN: {}}
    raw.pop("runs", None)
    runs = {}
    for name, override in overrides.items():
        check_run_name(name)
        prefix = f"runs.{name}." if override else ""
        try:
            resolved = validate(deep_merge(raw, override or {}), prefix=prefix)  # its errors carry the prefix
            resolved.pop("runs")
        except SchemaError as error:
            raise RunError(str(error)) from None
        try:
            if check_values:
                config_checks.check(resolved)
        except config_checks.ConfigError as error:
            raise RunError(prefix + str(error)) from None
        runs[name] = resolved
    return base, runs


def differences(base: dict, run: dict, prefix: str = "") -> dict[str, object]:
    """The dotted keys whose values differ between two resolved configs."""
    diff = {}
    for key in sorted(set(base) | set(run)):
        a, b = base.get(key), run.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diff.update(differences(a, b, f"{prefix}{key}."))
        elif a != b:
            diff[prefix + key] = b
    return diff


def seeds_of(run_config: dict) -> list[int]:
    """The training seeds of a run: its `seeds`, or its one `seed` when it lists none."""
    return list(run_config["seeds"] or [run_config["seed"]])


def training_config(run_config: dict, seed: int) -> dict:
    """The config of one training of a run: the run's, with `seed` the training's. A run without `seeds`
    trains once with its `seed`, so its folders are the ones it had before seeds existed."""
    return {**run_config, "seed": seed}


@dataclass
class Stage:
    """One stage folder: its hash, the settings its command gets, and the trainings that use it."""

    name: str
    hash: str
    record: dict
    config: dict  # the resolved config of the first training that uses it
    trainings: list[tuple[str, int]] = field(default_factory=list)  # (run, seed)

    @property
    def folder(self) -> str:
        return stages.folder(self.name, self.hash)

    @property
    def runs(self) -> list[str]:
        return list(dict.fromkeys(run for run, _ in self.trainings))


@dataclass
class Plan:
    """Every run, each run's trainings (one per seed), and every distinct stage folder they need."""

    base: dict  # the config without its runs, defaults filled in
    runs: dict[str, dict]  # run -> its resolved config
    seeds: dict[str, list[int]]  # run -> its training seeds
    hashes: dict[str, dict[int, dict[str, str]]]  # run -> seed -> stage -> hash
    stages: dict[str, dict[str, Stage]]  # stage -> hash -> Stage

    def stage(self, name: str, hash_: str) -> Stage:
        return self.stages[name][hash_]

    def upstream(self, stage: str, hash_: str, name: str) -> Stage:
        """The `name` folder that this `stage` folder was built from: named in its record's inputs, or,
        for a stage it reads through them (storylm.plan.stages reads_through), in theirs, nearest first."""
        frontier = [self.stage(stage, hash_)]
        while frontier:
            for entry in frontier:
                if name in entry.record["inputs"]:
                    return self.stage(name, entry.record["inputs"][name])
            frontier = [self.stage(n, h) for entry in frontier for n, h in entry.record["inputs"].items()]
        raise KeyError(f"{stages.folder(stage, hash_)}: built from no {name} folder")

    def files(self, stage: str, hash_: str, roles: tuple[str, ...] | None = None) -> dict[str, str]:
        """The files the `stage` folder with `hash_` reads, by role (the table's uses, or `roles`): each in
        the folder it was built from, a role only a stage its runs lack provides left out."""
        entry = self.stage(stage, hash_)
        found = stages.files(stage, entry.config, lambda name: entry.folder if name == stage
                             else self.upstream(stage, hash_, name).folder, roles)
        continued = entry.record["config"].get(stages.CONTINUE_KEY) if stage == stages.CONTINUED else None
        if continued and (roles is None or stages.INITIAL_MODEL in roles):  # the upstream training's final model
            found[stages.INITIAL_MODEL] = stages.outputs(stage, stages.folder(stage, continued), ("final model",))[
                "final model"]
        return found

    def run_stage(self, run: str, name: str, seed: int | None = None) -> Stage:
        """The stage folder of a run's training with `seed` (default: the run's first)."""
        seed = self.seeds[run][0] if seed is None else seed
        return self.stages[name][self.hashes[run][seed][name]]

    def run_file(self, run: str, seed: int, role: str) -> str:
        """A training's file of `role` (storylm.plan.stages: provides), from the last stage that provides it."""
        name = stages.last_provider(role)
        return f"{self.run_stage(run, name, seed).folder}/{stages.BY_NAME[name].provides[role]}"

    def run_hashes(self, run: str, seed: int | None = None) -> dict[str, str]:
        """stage -> hash of a run's training with `seed` (default: the run's first)."""
        return self.hashes[run][self.seeds[run][0] if seed is None else seed]

    def trainings(self) -> list[tuple[str, int]]:
        return [(run, seed) for run, seeds in self.seeds.items() for seed in seeds]

    def training_info(self, run: str, seed: int) -> dict:
        """What a training's results say of it (results/runs/<run>/seed-<seed>/metrics.json): the hashes
        of the stages it uses (not, say, a download for builtin stories), its config, and how its run
        differs from the base. One place, for the rules (run_results) and storylm.compare alike."""
        return {
            "run": run,
            "seed": seed,
            "stage_hashes": {stage: h for stage, h in self.hashes[run][seed].items() if h in self.stages.get(stage, {})},
            "export_dir": self.run_stage(run, "export", seed).folder,
            "corpus_source": self.runs[run]["corpus"]["source"],
            "differs_from_base": differences(self.base, self.runs[run]),
            "config": training_config(self.runs[run], seed),
        }

    def folders(self) -> dict[str, list[str]]:
        """{folder: runs that use it} over every stage of every training."""
        return {stage.folder: stage.runs for by_hash in self.stages.values() for stage in by_hash.values()}


def continued_order(runs: dict[str, dict]) -> list[str]:
    """The runs with each one after the run it continues (`continue_from`); RunError names the key when
    that run is missing, is itself, or continues from it in turn."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in order:
            return
        upstream = runs[name][stages.CONTINUE_KEY]
        key = f"runs.{name}.{stages.CONTINUE_KEY}" if name != DEFAULT_RUN or len(runs) > 1 else stages.CONTINUE_KEY
        if upstream is not None:
            if upstream not in runs:
                raise RunError(f"{key}: no run named {upstream!r} (this config's runs: {', '.join(runs)})")
            if upstream in path + (name,):
                raise RunError(f"{key}: {' -> '.join((*path, name, upstream))} continue from each other in a circle")
            visit(upstream, (*path, name))
        order.append(name)

    for name in runs:
        visit(name, ())
    return order


# What a continued training must share with the model it continues: the model's shape and its tokenizer.
SHARED_WHEN_CONTINUED = ("model_config", "tokenizer")


def check_continuation(name: str, runs: dict[str, dict], seeds: dict[str, list[int]], seed: int) -> int:
    """The seed of the upstream training that `name`'s training with `seed` continues; RunError names the
    key where the model or the tokenizer would not fit (a continued model keeps its shape and its vocabulary)."""
    upstream = runs[name][stages.CONTINUE_KEY]
    for section in SHARED_WHEN_CONTINUED:
        ours = differences(runs[upstream][section], runs[name][section], f"{section}.")
        if ours:
            key = next(iter(ours))
            theirs = differences(runs[name][section], runs[upstream][section], f"{section}.")[key]
            raise RunError(f"runs.{name}.{key}: {ours[key]!r}, but run {upstream!r}, which it continues, has {theirs!r}:"
                           f" a continued training keeps its model's {section.replace('_', ' ')}")
    if seed in seeds[upstream]:
        return seed
    if len(seeds[upstream]) == 1:
        return seeds[upstream][0]
    raise RunError(f"runs.{name}.seeds: seed {seed} has no training in run {upstream!r} (its seeds:"
                   f" {seeds[upstream]}), which it continues: continue its seeds, or give it one")


def plan(config: dict, check_values: bool = True) -> Plan:
    base, runs = resolve(config, check_values)
    seeds, hashes, by_stage, by_training = {}, {}, {}, {}
    for name in continued_order(runs):
        run_config = runs[name]
        seeds[name] = seeds_of(run_config)
        hashes[name] = {}
        for seed in seeds[name]:
            trained = training_config(run_config, seed)
            upstream = run_config[stages.CONTINUE_KEY]
            continues = by_training[upstream, check_continuation(name, runs, seeds, seed)] if upstream else None
            records = by_training[name, seed] = stages.records(trained, continues=continues)
            hashes[name][seed] = {stage: record["hash"] for stage, record in records.items()}
            for stage in stages.active(trained):
                hash_ = hashes[name][seed][stage]
                entry = by_stage.setdefault(stage, {}).setdefault(hash_, Stage(stage, hash_, records[stage], trained))
                entry.trainings.append((name, seed))
    return Plan(base, runs, {name: seeds[name] for name in runs}, {name: hashes[name] for name in runs}, by_stage)


def load_config(configfiles: list[Path] = (), overrides: list[str] = (), root: Path = Path(".")) -> dict:
    """The config as Snakemake reads it (the one loader of "config.yaml plus overlays", for the tools that
    take Snakemake's options and for the tests): <root>/config/config.yaml, each --configfile (relative
    to root) merged over it, then each --config KEY=VALUE (strings, coerced by the schema later)."""
    config = {}
    for path in [Path("config/config.yaml"), *map(Path, configfiles)]:
        path = root / path
        if not path.is_file():
            raise StageError(f"{path}: no such config file")
        config = deep_merge(config, yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise StageError(f"--config {item}: give KEY=VALUE")
        # As Snakemake: YAML read without types (strings); the schema coerces them.
        config = deep_merge(config, {key: yaml.load(value, Loader=yaml.BaseLoader)})
    return config
