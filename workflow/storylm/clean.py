"""Housekeeping: list every stage folder with the runs that use it, and remove those no run uses.

    python -m storylm.clean [--configfile FILE ...] [--config KEY=VALUE ...]            list only
    python -m storylm.clean [--configfile FILE ...] --delete                             list, then delete

Run it where you run snakemake (the folders and config/config.yaml are relative to it).

The config is read as Snakemake reads it: config/config.yaml, then each --configfile merged
over it, then --config values (strings, coerced by the schema like Snakemake's). A folder
is in use when any run of that config needs it; those are never touched. Folders that a
run in another config file still needs are removed too when that file is not given, so
name every config you keep (e.g. --configfile config/sweeps/model_size.yaml).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import yaml

from storylm import stages
from storylm.entry import StageError
from storylm.runs import deep_merge, plan


def load_config(configfiles: list[Path], overrides: list[str]) -> dict:
    config = {}
    for path in [Path("config/config.yaml"), *configfiles]:
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


def stage_folders(root: Path) -> list[Path]:
    """Every hash folder under the stages' parents, and every run's results folder."""
    found = set()
    for parent in {spec.parent for spec in stages.STAGES}:
        if (root / parent).is_dir():
            found |= {p for p in (root / parent).iterdir() if p.is_dir() and len(p.name) == stages.HASH_LENGTH}
    if (root / "results/runs").is_dir():
        found |= {p for p in (root / "results/runs").iterdir() if p.is_dir()}
    return sorted(found)


def usage(config: dict, root: Path) -> list[tuple[Path, list[str]]]:
    """(folder, runs that use it) for every folder on disk; an empty list: no run uses it."""
    try:
        the_plan = plan(config)
    except StageError as error:
        raise StageError(f"Invalid config: {error}") from None
    used = {root / folder: runs for folder, runs in the_plan.folders().items()}
    used.update({root / "results/runs" / run: [run] for run in the_plan.runs})
    return [(folder, used.get(folder, [])) for folder in stage_folders(root)]


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m storylm.clean", description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", type=Path, action="append", default=[], help="as snakemake's")
    parser.add_argument("--config", action="append", default=[], help="KEY=VALUE, as snakemake's")
    parser.add_argument("--delete", action="store_true", help="remove the folders no run uses (after listing)")
    args = parser.parse_args(argv)
    root = Path(".")  # like snakemake, run from the workflow's working directory
    try:
        rows = usage(load_config(args.configfile, args.config), root)
    except StageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    unused = [folder for folder, runs in rows if not runs]
    print(f"{'folder':<40} {'MB':>9}  runs")
    for folder, runs in rows:
        print(f"{str(folder.relative_to(root)):<40} {size_mb(folder):>9.1f}  {', '.join(runs) or '(unused)'}")
    print(f"{len(rows) - len(unused)} folders in use, {len(unused)} unused ({sum(map(size_mb, unused)):.1f} MB)")
    if args.delete:
        for folder in unused:
            shutil.rmtree(folder)
            print(f"removed {folder.relative_to(root)}")
    elif unused:
        print("run again with --delete to remove the unused folders")
    return 0


if __name__ == "__main__":
    sys.exit(main())
