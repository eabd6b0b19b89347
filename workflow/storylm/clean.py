"""Housekeeping: list every stage folder with the runs that use it, and remove those no run uses.

    python -m storylm.clean [--configfile FILE ...] [--config KEY=VALUE ...]            list only
    python -m storylm.clean [--configfile FILE ...] --delete                             list, then delete

Run it where you run snakemake (the folders and config/config.yaml are relative to it).

The config is read as Snakemake reads it: config/config.yaml, then each --configfile merged
over it, then --config values (strings, coerced by the schema like Snakemake's). A folder
is in use when any run of that config needs it; those are never touched. Folders that a
run in another config file still needs are removed too when that file is not given, so
name every config you keep (e.g. --configfile config/sweeps/model_size.yaml).

What it never touches: anything while a snakemake holds locks in this folder (--delete is
refused: another config's pipeline may be writing folders this config does not know);
a folder a stage command is working in (its lock is held); a name that is not a stage hash
(ten hex digits: Data/raw/my_stories stays); a symbolic link (skipped with a warning); and
in results/runs/, anything but the run folders the pipeline wrote.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

from storylm.io.entry import StageError
from storylm.io.stagelock import holders, is_locked
from storylm.plan import stages
from storylm.plan.runs import load_config, plan

STAGE_HASH = re.compile(rf"^[0-9a-f]{{{stages.HASH_LENGTH}}}$")
SNAKEMAKE_LOCKS = Path(".snakemake/locks")
RUN_MARKER = "seed-*/config.yaml"  # every results/runs/<run>/ the report step writes holds one


def stage_folders(root: Path) -> tuple[list[Path], list[Path]]:
    """(every stage hash folder and pipeline-written run folder, the symbolic links skipped among them)."""
    found, links = set(), set()
    for parent in {spec.parent for spec in stages.STAGES}:
        if (root / parent).is_dir():
            for path in (root / parent).iterdir():
                if STAGE_HASH.match(path.name) and (path.is_dir() or path.is_symlink()):
                    (links if path.is_symlink() else found).add(path)
    if (root / "results/runs").is_dir():
        for path in (root / "results/runs").iterdir():
            if path.is_symlink():
                links.add(path)
            elif any(path.glob(RUN_MARKER)):
                found.add(path)
    return sorted(found), sorted(links)


def usage(config: dict, root: Path) -> tuple[list[tuple[Path, list[str]]], list[str]]:
    """((folder, runs that use it) for every folder on disk, warnings); an empty list: no run uses it."""
    try:
        the_plan = plan(config)
    except StageError as error:
        raise StageError(f"Invalid config: {error}") from None
    used = {root / folder: runs for folder, runs in the_plan.folders().items()}
    used.update({root / "results/runs" / run: [run] for run in the_plan.runs})
    folders, links = stage_folders(root)
    warnings = [f"{link}: a symbolic link, skipped (remove it yourself if you mean to)" for link in links]
    warnings += local_file_warnings(the_plan, root)
    return [(folder, used.get(folder, [])) for folder in folders], warnings


def local_file_warnings(the_plan, root: Path) -> list[str]:
    """Local corpus files that are gone or changed: the folders built from them are listed as unused."""
    warnings = []
    for run, config in the_plan.runs.items():
        corpus = config["corpus"]
        if corpus["source"] != "local":
            continue
        missing = [p for p in corpus["local"]["paths"] if not Path(p).expanduser().exists()]
        if missing:
            warnings.append(f"runs.{run}: corpus.local.paths: {', '.join(missing)} do not exist; the folders built"
                            " from them are listed as unused")
        elif not (root / the_plan.run_stage(run, "corpus").folder).is_dir():
            warnings.append(f"runs.{run}: corpus.local.paths: no corpus folder was built from these files as they"
                            " are now (new, or changed since); folders built from earlier files are listed as unused")
    return warnings


def snakemake_locks(root: Path) -> list[Path]:
    locks = root / SNAKEMAKE_LOCKS
    return sorted(locks.glob("*.lock")) if locks.is_dir() else []


def refuse_while_locked(root: Path) -> None:
    locks = snakemake_locks(root)
    if locks:
        locked = locks[0].read_text(encoding="utf-8", errors="replace").split()
        example = f", e.g. {locked[0]}" if locked else ""
        raise StageError(f"{root / SNAKEMAKE_LOCKS} holds {len(locks)} locks ({', '.join(p.name for p in locks)}"
                         f"{example}): a snakemake is running here, and its folders may not be in this config."
                         " Wait for it to finish; if none is running, run `snakemake --unlock` first")


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m storylm.clean", description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", type=Path, action="append", default=[], help="as snakemake's")
    parser.add_argument("--config", action="append", default=[], help="KEY=VALUE, as snakemake's")
    parser.add_argument("--delete", action="store_true", help="remove the folders no run uses (after listing)")
    args = parser.parse_args(argv)
    root = Path(".")  # like snakemake, run from the workflow's working directory
    try:
        if args.delete:
            refuse_while_locked(root)
        rows, warnings = usage(load_config(args.configfile, args.config), root)
    except StageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    busy = {folder for folder, _ in rows if is_locked(folder)}
    unused = [folder for folder, runs in rows if not runs]
    print(f"{'folder':<40} {'MB':>9}  runs")
    for folder, runs in rows:
        state = ", ".join(runs) or "(unused)"
        if folder in busy:
            state += f"; in use by {holders(folder) or 'a running stage'}"
        print(f"{str(folder.relative_to(root)):<40} {size_mb(folder):>9.1f}  {state}")
    print(f"{len(rows) - len(unused)} folders in use, {len(unused)} unused ({sum(map(size_mb, unused)):.1f} MB)")
    if args.delete:
        for folder in unused:
            if folder in busy:
                print(f"warning: {folder.relative_to(root)}: in use by {holders(folder)}; not removed", file=sys.stderr)
                continue
            shutil.rmtree(folder)
            print(f"removed {folder.relative_to(root)}")
    elif unused:
        print("run again with --delete to remove the unused folders")
    return 0


if __name__ == "__main__":
    sys.exit(main())
