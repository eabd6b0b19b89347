"""Runs: several configs in one workflow, sharing every stage folder they can.

A config's `runs:` maps run names to overrides that are deep-merged into the rest of the
config (the base). No `runs:` means one run named `default`. Each run's resolved config
goes through the schema and the checks of storylm.config, and an error names the run and
the key (`runs.wide.model_config.n_embd: ...`).

Every stage folder is named by the hash of its settings (storylm.stages), so two runs that
differ only in model settings have the same corpus, tokenizer and shards hashes: the
stage table below holds one entry per distinct hash, and Snakemake plans one job for it.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field

from storylm import config as config_checks
from storylm import stages
from storylm.entry import StageError
from storylm.schema import SchemaError, validate

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


def resolve(config: dict) -> tuple[dict, dict[str, dict]]:
    """(base, {run name: resolved config}) in the order the config lists them; RunError names run and key."""
    raw = copy.deepcopy(config)
    try:
        base = validate(raw)
    except SchemaError as error:
        raise RunError(str(error)) from None
    overrides = base.pop("runs") or {DEFAULT_RUN: {}}
    raw.pop("runs", None)
    runs = {}
    for name, override in overrides.items():
        if not RUN_NAME.match(name):
            raise RunError(f"runs.{name}: a run name may hold only letters, digits, _ . and -")
        prefix = f"runs.{name}." if override else ""
        try:
            resolved = validate(deep_merge(raw, override or {}), prefix=prefix)  # its errors carry the prefix
            resolved.pop("runs")
        except SchemaError as error:
            raise RunError(str(error)) from None
        try:
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


@dataclass
class Stage:
    """One stage folder: its hash, the settings its command gets, and the runs that use it."""

    name: str
    hash: str
    record: dict
    config: dict  # the resolved config of the first run that uses it
    runs: list[str] = field(default_factory=list)

    @property
    def folder(self) -> str:
        return stages.folder(self.name, self.hash)


@dataclass
class Plan:
    """Every run and every distinct stage folder they need."""

    base: dict  # the config without its runs, defaults filled in
    runs: dict[str, dict]
    hashes: dict[str, dict[str, str]]  # run -> stage -> hash
    stages: dict[str, dict[str, Stage]]  # stage -> hash -> Stage

    def stage(self, name: str, hash_: str) -> Stage:
        return self.stages[name][hash_]

    def run_stage(self, run: str, name: str) -> Stage:
        return self.stages[name][self.hashes[run][name]]

    def folders(self) -> dict[str, list[str]]:
        """{folder: runs that use it} over every stage of every run."""
        used = {}
        for by_hash in self.stages.values():
            for stage in by_hash.values():
                used.setdefault(stage.folder, [])
                used[stage.folder] += [r for r in stage.runs if r not in used[stage.folder]]
        return used


def plan(config: dict) -> Plan:
    base, runs = resolve(config)
    hashes, by_stage = {}, {}
    for name, run_config in runs.items():
        records = stages.records(run_config)
        hashes[name] = {stage: record["hash"] for stage, record in records.items()}
        for stage in stages.active(run_config):
            hash_ = hashes[name][stage]
            entry = by_stage.setdefault(stage, {}).setdefault(hash_, Stage(stage, hash_, records[stage], run_config))
            entry.runs.append(name)
    return Plan(base, runs, hashes, by_stage)
