"""A finished stage folder is what its record says: checked before every run, rebuilt when it is not.

Every stage's record lists the files its folder provides (size and sha256) and a digest of each
folder it read (storylm.plan.stage.finish_stage). Before each run the Snakefile calls
`set_aside_damaged`: a folder whose files no longer match its list (deleted, cut short, overwritten),
or whose inputs changed since it read them (a replaced checkpoint), has its record renamed to
damaged-<record>. The record is a declared output of the stage's rule, so the same snakemake command
then rebuilds the folder and everything that reads it; nothing else in the folder is touched.

A record without a file list (written before files were listed) is trusted as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

from storylm.io.contents import damage, digest
from storylm.io.entry import StageError
from storylm.io.filehash import HashCache
from storylm.plan import stages
from storylm.plan.stage import DAMAGED_PREFIX, listed_files


def check_folder(stage: str, folder: Path, cache: HashCache) -> str | None:
    """What is wrong with a finished stage folder, in one line; None when it is right or not finished."""
    if not stages.BY_NAME[stage].record:
        return None  # a download: the corpus and tokenizer stages check its manifest
    record_path = Path(folder) / stages.BY_NAME[stage].record
    if not record_path.is_file():
        return None  # not finished: Snakemake runs it anyway
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"{record_path}: not valid JSON"
    files = record.get("files") if isinstance(record, dict) else None
    if files is None:
        return None
    problem = damage(folder, files, cache)
    if problem:
        return problem
    for name, recorded in (record.get("read") or {}).items():
        upstream = Path(stages.folder(name, record["inputs"][name]))
        now = listed_files(upstream, name)
        if recorded is not None and (now is None or digest(now) != recorded):
            return f"{upstream}: changed (or rebuilt) since {folder} read it"
    return None


def require_intact(stage: str, folder: Path) -> None:
    """For a stage command about to read a folder: StageError naming what is wrong with it."""
    with HashCache() as cache:
        problem = check_folder(stage, folder, cache)
    if problem:
        raise StageError(f"{problem}; run the same snakemake command again: it rebuilds the {stage} folder")


def set_aside_damaged(plan) -> list[str]:
    """Rename the record of every planned folder that is not what it says, in table order (so a folder
    built from a damaged one follows it); one line each, saying what was found and what happens."""
    said = []
    with HashCache() as cache:
        for name in stages.ORDER:
            for entry in plan.stages.get(name, {}).values():
                folder = Path(entry.folder)
                problem = check_folder(name, folder, cache)
                if problem is None:
                    continue
                record = folder / stages.BY_NAME[name].record
                aside = record.with_name(DAMAGED_PREFIX + record.name)
                record.replace(aside)
                said.append(f"storylm: {problem}. The {name} stage's record is set aside as {aside}: this run"
                            " rebuilds the folder and what reads it")
    return said
