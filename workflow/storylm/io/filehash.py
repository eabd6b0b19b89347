"""Content hashes of files (sha256), and a cache of them for large files that rarely change.

A local corpus file is identified by its content, not by its path, size or time, so `touch`,
`cp` without `-p` or a moved folder changes no stage hash. Hashing a 2.6 GB archive takes about
ten seconds, and the plan is made at every snakemake start: the cache keeps each file's sha256
under its real path with the size, mtime and ctime it had, and hashes it again when any changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

# Beside Snakemake's own bookkeeping in the working directory; deleting it only costs hashing again.
CACHE = Path(".snakemake/storylm/sha256.json")


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class HashCache:
    """sha256 of files, remembered by (real path, size, mtime, ctime); a context manager that saves what it learned."""

    def __init__(self, path: Path = CACHE):
        self.path = Path(path)
        try:
            self.entries = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.entries = {}  # no cache yet, or a damaged one: hash again
        self.changed = False

    def sha256(self, file: Path | str) -> str:
        stat = os.stat(file)  # through links: the content is what counts
        key = os.path.realpath(file)
        known = self.entries.get(key)
        # The change time too: `cp -p` or `touch -r` can give a replaced file its old size and mtime.
        if known and known[:3] == [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]:
            return known[3]
        digest = file_sha256(file)
        self.entries[key] = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, digest]
        self.changed = True
        return digest

    def save(self) -> None:
        if not self.changed:
            return
        from storylm.io.entry import write_text

        try:
            write_text(self.path, json.dumps(self.entries, sort_keys=True))
        except OSError:
            pass  # a read-only working directory: the next plan hashes again
        self.changed = False

    def __enter__(self) -> HashCache:
        return self

    def __exit__(self, *_exc) -> None:
        self.save()
