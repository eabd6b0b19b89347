"""A finished stage folder is what its record says: checked before every run, rebuilt when it is not.

Every stage's record lists the files its folder provides (size and sha256) and a digest of each
folder it read (storylm.plan.stage.finish_stage). Before each run the Snakefile calls
`mark_damaged`: a folder whose files no longer match its list (deleted, cut short, overwritten
even with other valid token ids), or whose inputs changed since it read them (a replaced
checkpoint), is said in one line, and its rebuild count goes up. The count enters the stage's
record param (`with_rebuilds`) once it is above zero, so Snakemake's params trigger reruns that
stage, and with it everything downstream, in the same command, dry runs included. Snakemake
itself would not: it reruns a job whose outputs are missing only when a job after it must run.

The counts live beside Snakemake's own bookkeeping (.snakemake/storylm/rebuilds.json); a folder
never found damaged has none, so its param, and its jobs, are as they always were. A record
without a file list (written before files were listed) is trusted as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

from storylm.io.contents import damage, digest
from storylm.io.entry import StageError, write_json
from storylm.io.filehash import HashCache
from storylm.plan import stages
from storylm.plan.stage import finished_record, listed_files, upstream_folder

REBUILDS = Path(".snakemake/storylm/rebuilds.json")


def check_folder(stage: str, folder: Path, cache: HashCache) -> str | None:
    """What is wrong with a finished stage folder, in one line; None when it is right or not finished."""
    try:  # none for a download (the corpus and tokenizer stages check its manifest) or an unfinished folder
        record = finished_record(folder, stage)
    except (OSError, ValueError):
        return f"{Path(folder) / stages.BY_NAME[stage].record}: not valid JSON"
    files = record.get("files") if record else None
    if files is None:
        return None
    problem = damage(folder, files, cache)
    if problem:
        return problem
    for name, recorded in (record.get("read") or {}).items():
        upstream = upstream_folder(folder, stage, name, record["inputs"][name])
        now = listed_files(upstream, name)
        if recorded is not None and (now is None or digest(now) != recorded):
            return f"{upstream}: changed since {folder} read it"
    return None


def require_intact(stage: str, folder: Path) -> None:
    """For a stage command about to read a folder: StageError naming what is wrong with it."""
    with HashCache() as cache:
        problem = check_folder(stage, folder, cache)
    if problem:
        raise StageError(f"{problem}; run the same snakemake command again: it rebuilds the {stage} folder")


def rebuild_counts(path: Path = REBUILDS) -> dict[str, int]:
    """{stage folder: how many times a plan found it damaged}."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def mark_damaged(plan, path: Path = REBUILDS) -> list[str]:
    """Count every planned folder that is not what its record says as one to rebuild; one line each."""
    counts, said = rebuild_counts(path), []
    with HashCache() as cache:
        for name in stages.ORDER:  # in table order: a folder is said before those built from it
            for entry in plan.stages.get(name, {}).values():
                problem = check_folder(name, Path(entry.folder), cache)
                if problem is None:
                    continue
                counts[entry.folder] = counts.get(entry.folder, 0) + 1
                said.append(f"storylm: {problem}: this run rebuilds {entry.folder} ({name}) and what reads it")
    if said:
        write_json(path, counts)
    return said


def with_rebuilds(record: dict, count: int) -> dict:
    """A stage's record as its rule's param: with its rebuild count once it has one (so a folder never found
    damaged keeps the param, and the jobs, it always had)."""
    return {**record, "rebuild": count} if count else record
