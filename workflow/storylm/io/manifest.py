"""manifest.json: the files a download folder holds (with origin and sha256) and the ones to read.

The download stage writes it; the corpus and tokenizer stages read the files it lists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from storylm.io.entry import StageError, write_json

MANIFEST = "manifest.json"


def write_manifest(raw_dir: Path, source: str, downloads: list[dict], files: list[Path]) -> Path:
    """raw_dir/manifest.json: the downloaded files (with origin and sha256) and the files to read."""
    def relative(path) -> str:
        # Links are kept, not resolved: a file's name is what the corpus stage reads its type from.
        path, root = Path(os.path.abspath(path)), Path(os.path.abspath(raw_dir))
        return str(path.relative_to(root)) if root in path.parents else str(path)

    manifest = {
        "source": source,
        "downloads": [
            {"path": relative(d["path"]), "size": d["size"], **({"sha256": d["sha256"]} if d.get("sha256") else {}),
             **({"origin": d["origin"]} if d.get("origin") else {})}
            for d in downloads
        ],
        "files": [{"path": relative(p), "size": p.stat().st_size} for p in files],
    }
    out = raw_dir / MANIFEST
    write_json(out, manifest)
    return out


def manifest_files(raw_dir: Path) -> list[Path]:
    """The readable files listed in raw_dir/manifest.json (relative paths are under raw_dir)."""
    manifest_path = Path(raw_dir) / MANIFEST
    if not manifest_path.is_file():
        raise StageError(f"{manifest_path}: no manifest; run the download stage first")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    return [Path(raw_dir) / entry["path"] for entry in manifest["files"]]


def manifest_folder(manifest: Path) -> Path:
    """The folder a download's files lie in, from its manifest (a hub tokenizer's, for the tokenizer stage)."""
    files = manifest_files(Path(manifest).parent)
    if not files:
        raise StageError(f"{manifest}: lists no files; run the download stage again")
    return Path(os.path.commonpath([path.parent for path in files]))
