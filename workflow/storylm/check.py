"""Check stage folders against the files their records list: a deleted, cut-off or overwritten file is named.

    python -m storylm.check                      every stage folder under Data/ and results/
    python -m storylm.check Data/shards/<hash>   some folders

Each line says `ok` or what is wrong; the exit status is 1 when a folder is damaged. Snakemake
runs the same check before each run and rebuilds what it finds damaged (storylm.plan.integrity);
this command says it without running anything.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from storylm.io.entry import exit_with
from storylm.io.filehash import HashCache
from storylm.plan import stages
from storylm.plan.integrity import check_folder

HASH_FOLDER = re.compile(rf"^[0-9a-f]{{{stages.HASH_LENGTH}}}$")


def stage_folders() -> list[tuple[str, Path]]:
    """(stage, folder) of every finished stage folder below the working directory."""
    found = []
    for spec in stages.STAGES:
        for folder in sorted(Path(spec.parent).glob("*")):
            if spec.record and HASH_FOLDER.match(folder.name) and (folder / spec.record).is_file():
                found.append((spec.name, folder))
    return found


def stage_of(folder: Path) -> str | None:
    """The stage a folder belongs to: the one whose parent holds it and whose record it has."""
    for spec in stages.STAGES:
        if spec.record and folder.parent == Path(spec.parent) and (folder / spec.record).is_file():
            return spec.name
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m storylm.check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", type=Path, help="stage folders (default: every one)")
    args = parser.parse_args(argv)
    folders = [(stage_of(f), f) for f in args.folders] if args.folders else stage_folders()
    damaged = 0
    with HashCache() as cache:
        for stage, folder in folders:
            if stage is None:
                problem = f"{folder}: not a finished stage folder (no stage record)"
            else:
                problem = check_folder(stage, folder, cache)
            damaged += problem is not None
            print(f"{folder}: ok" if problem is None else f"DAMAGED {problem}")
    if damaged:
        print(f"{damaged} of {len(folders)} folders damaged: the next snakemake run rebuilds them", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    exit_with(main)
