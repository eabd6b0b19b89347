"""What a finished stage folder holds: every file it provides, with its size and sha256, listed in its record.

A stage lists its folder's files when it finishes (storylm.plan.stage.finish_stage), and the plan
checks every finished folder against that list before each run (storylm.plan.integrity): a file
deleted, cut short or overwritten, even with other valid token ids, is found there. sha256s come
from storylm.io.filehash's cache, so an unchanged folder costs one stat a file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from storylm.io.filehash import HashCache


def list_files(folder: Path, unlisted: Callable[[str], bool], cache: HashCache) -> dict[str, list]:
    """{path relative to folder: [size in bytes, sha256]} of every file below it that `unlisted` keeps in."""
    folder = Path(folder)
    found = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if not unlisted(relative):
            found[relative] = [path.stat().st_size, cache.sha256(path)]
    return found


def digest(files: dict[str, list]) -> str:
    """One sha256 for a folder's list: what a stage that reads the folder records."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def damage(folder: Path, files: dict[str, list], cache: HashCache) -> str | None:
    """The first listed file that is missing, of another size or of other content, said in one line; or None."""
    for relative, (size, sha256) in sorted(files.items()):
        path = Path(folder) / relative
        if not path.is_file():
            return f"{path}: missing (the stage wrote {size:,} bytes)"
        found = path.stat().st_size
        if found != size:
            return f"{path}: {found:,} bytes, but the stage wrote {size:,}"
        if cache.sha256(path) != sha256:
            return f"{path}: changed since the stage wrote it (its sha256 differs)"
    return None
