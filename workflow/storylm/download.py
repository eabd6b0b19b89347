"""The download stage: fetch the raw corpus files into raw_dir and list them in manifest.json.

Three sources (corpus.source):
  hf     a dataset repository on the Hugging Face hub, through huggingface_hub (which
         honours HF_ENDPOINT and HF_TOKEN, resumes broken downloads and keeps its own
         bookkeeping under raw_dir/hf/<repo>/.cache); sizes and sha256 are checked against
         the hub's file metadata.
  url    plain http(s) files: downloaded to NAME.part, resumed with HTTP Range, checked
         against sha256 (or size), and only then renamed to NAME. A file under its final
         name is therefore always complete, and it is never downloaded twice.
  local  files or folders already on disk, used where they are.

.tar.gz files are extracted (safely, see archive.py) and the files matching corpus.include
are returned. Network problems fail fast with a DownloadError that says what was tried and
how to use local files instead.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import os
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import requests

from storylm.io.archive import ArchiveError, archive_stem, is_archive, safe_extract
from storylm.io.entry import StageError, exit_with
from storylm.io.filehash import file_sha256
from storylm.io.manifest import write_manifest
from storylm.plan.stage import add_stage_arguments, run_step

# The role of each download's manifest (storylm.plan.stages provides).
MANIFEST_ROLES = {"download": "raw files", "tokenizer_download": "hub tokenizer"}

CONNECT_TIMEOUT_S = 10  # to open a connection (the hub's own metadata timeout is 10 s too)
READ_TIMEOUT_S = 60  # between two chunks of a download
ATTEMPTS = 3  # tries per file; each one resumes where the last one stopped
RETRY_WAIT_S = 1
CHUNK_BYTES = 1 << 20
EXTRACTED_MARKER = ".extracted"

LOCAL_HINT = (
    "To use files you already have, download them by other means and point the config at them:\n"
    "  corpus:\n"
    "    source: local\n"
    "    local:\n"
    "      paths: [path/to/TinyStories_all_data_zh.tar.gz]   # or a folder of .jsonl files"
)


class DownloadError(StageError):
    """A file could not be fetched or failed its check; the message says what was tried."""


def fetch(corpus_cfg: dict, raw_dir: Path, local_paths: list[str] | None = None) -> list[Path]:
    """Fetch the files of corpus_cfg's source into raw_dir; return the readable files, sorted.

    A local source's files are `local_paths` (else corpus_cfg's local.paths). Also writes
    raw_dir/manifest.json.
    """
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    source = corpus_cfg["source"]
    if source == "hf":
        downloads = fetch_hf(corpus_cfg["hf"], raw_dir / "hf" / corpus_cfg["hf"]["repo_id"])
    elif source == "url":
        downloads = fetch_urls(corpus_cfg["url"]["files"], raw_dir / "url")
    elif source == "local":
        downloads = local_files(local_paths or corpus_cfg.get("local", {}).get("paths", []))
    else:
        raise DownloadError(f"corpus.source: '{source}' has no files to fetch (builtin stories are generated)")

    files = readable_files(downloads, corpus_cfg["include"], raw_dir)
    write_manifest(raw_dir, source, downloads, files)
    return files


# ---------------------------------------------------------------------------
# hf: a dataset repository on the Hugging Face hub


def fetch_hf(hf_cfg: dict, local_dir: Path, repo_type: str = "dataset", key: str = "corpus.hf",
             hint: str = LOCAL_HINT) -> list[dict]:
    """Download the files of hf_cfg matching allow_patterns into local_dir; check size and sha256.

    `key` names the config section in errors; `hint` says how to do without the hub.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.utils import filter_repo_objects

    repo_id, revision = hf_cfg["repo_id"], hf_cfg["revision"]
    # Read at call time (huggingface_hub reads HF_ENDPOINT once, at import).
    endpoint = os.environ.get("HF_ENDPOINT", "").rstrip("/") or None
    api = HfApi(endpoint=endpoint)
    where = f"{repo_type} {repo_id} (revision {revision}) on {api.endpoint}"

    # One metadata call first: it fails fast when the hub cannot be reached (no retries,
    # unlike the file downloads) and gives each file's size and sha256 to check against.
    try:
        info = api.repo_info(repo_id, repo_type=repo_type, revision=revision, files_metadata=True,
                             timeout=CONNECT_TIMEOUT_S)
    except Exception as e:
        api_path = "datasets" if repo_type == "dataset" else "models"
        tried = f"{api.endpoint}/api/{api_path}/{repo_id}/revision/{revision}"
        raise DownloadError(
            f"Could not get the file list of {where} (tried {tried}): {_short_error(e)}\n"
            f"Set HF_ENDPOINT for a mirror, HF_TOKEN for a private or gated repository, or use local files.\n"
            f"{hint}"
        ) from None

    siblings = {s.rfilename: s for s in info.siblings or []}
    if "files" in hf_cfg:  # exact file names (a tokenizer's): every one must be there
        missing = [name for name in hf_cfg["files"] if name not in siblings]
        if missing:
            raise DownloadError(f"{key}.files: {missing} are not among the files of {where}: {sorted(siblings)[:20]}")
        wanted = sorted(hf_cfg["files"])
    else:
        wanted = sorted(filter_repo_objects(list(siblings), allow_patterns=hf_cfg["allow_patterns"]))
    if not wanted:
        raise DownloadError(
            f"{key}.allow_patterns: {hf_cfg['allow_patterns']} match none of the files of {where}:"
            f" {sorted(siblings)[:20]}"
        )
    for filename in wanted:  # every name first: nothing is written when one of them is unsafe
        check_repo_name(filename, local_dir, key, where)
    expected_sizes = _expected_hf_sizes(hf_cfg.get("sizes") or {}, wanted, siblings)

    downloads = []
    for filename in wanted:
        sibling = siblings[filename]
        path = _hf_download_with_retries(repo_id, filename, info.sha, endpoint, local_dir, where, repo_type, hint)
        expected_sha = sibling.lfs.sha256 if sibling.lfs else None
        pinned = (hf_cfg.get("sha256") or {}).get(filename)
        if pinned and expected_sha and pinned != expected_sha:
            raise DownloadError(f"{key}.sha256: {filename} is pinned to {pinned}, but {where} lists {expected_sha}")
        expected_sha = pinned or expected_sha
        try:
            check_file(path, expected_sizes[filename], expected_sha, f"{where}, file {filename}")
        except DownloadError as e:
            path.unlink()  # so that the next run downloads it again instead of trusting it
            raise DownloadError(f"{e}; the file was removed") from None
        downloads.append({"path": path, "size": path.stat().st_size, "sha256": expected_sha,
                          "origin": f"{repo_id}@{info.sha}/{filename}"})
    return downloads


def check_repo_name(filename: str, local_dir: Path, key: str, where: str) -> None:
    """A file name a hub lists must stay under the download folder.

    Neither huggingface_hub nor this stage chooses the names: a mirror (HF_ENDPOINT) does. So
    absolute names, '..' parts and backslashes are refused, as archive members are, and the
    resolved path must lie under local_dir.
    """
    problem = None
    if filename.startswith("/") or (len(filename) > 1 and filename[1] == ":"):
        problem = "an absolute path"
    elif "\\" in filename:
        problem = "a backslash"
    elif ".." in filename.split("/"):
        problem = "a '..' part"
    elif not (local_dir / filename).resolve().is_relative_to(local_dir.resolve()):
        problem = "a path outside the download folder"
    if problem:
        raise DownloadError(f"{key}: {where} lists a file named {filename!r}, {problem}: it would be written outside"
                            f" {local_dir}. Nothing was downloaded; check that HF_ENDPOINT points at a hub you trust")


def _expected_hf_sizes(config_sizes: dict, wanted: list[str], siblings: dict) -> dict:
    """The hub's size of each wanted file, after checking corpus.hf.sizes agrees with it."""
    unknown = sorted(set(config_sizes) - set(wanted))
    if unknown:
        raise DownloadError(f"corpus.hf.sizes: {unknown} are not among the files to download {wanted}")
    sizes = {}
    for filename in wanted:
        hub_size = siblings[filename].size
        if filename in config_sizes and hub_size is not None and config_sizes[filename] != hub_size:
            raise DownloadError(
                f"corpus.hf.sizes: {filename} is expected to have {config_sizes[filename]} bytes,"
                f" but the hub lists {hub_size} bytes (a different revision?)"
            )
        sizes[filename] = config_sizes.get(filename, hub_size)
    return sizes


def _hf_download_with_retries(repo_id: str, filename: str, commit: str, endpoint: str | None,
                              local_dir: Path, where: str, repo_type: str, hint: str) -> Path:
    """hf_hub_download with a few tries: a connection cut mid-file escapes huggingface_hub's
    own retries, and its .incomplete file lets the next try resume where this one stopped."""
    from huggingface_hub import hf_hub_download

    for attempt in range(1, ATTEMPTS + 1):
        try:
            # The commit (not the branch) makes a second run find the file without any request.
            return Path(hf_hub_download(repo_id, filename, repo_type=repo_type, revision=commit,
                                        endpoint=endpoint, local_dir=local_dir,
                                        etag_timeout=CONNECT_TIMEOUT_S))
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError,
                requests.exceptions.Timeout) as e:
            error = e
            if attempt < ATTEMPTS:
                print(f"download of {filename} broke off ({_short_error(e)}); resuming", file=sys.stderr)
                time.sleep(RETRY_WAIT_S)
        except Exception as e:
            raise DownloadError(
                f"Could not download {filename} from {where}: {_short_error(e)}\n{hint}"
            ) from None
    raise DownloadError(
        f"Could not download {filename} from {where} in {ATTEMPTS} attempts: {_short_error(error)}."
        f" Run again to resume from the part already downloaded.\n{hint}"
    )


TOKENIZER_HINT = (
    "To use tokenizer files you already have, put them in a folder and point the config at it:\n"
    "  tokenizer:\n"
    "    kind: pretrained\n"
    "    source: local\n"
    "    path: path/to/chatglm3-6b   # holding tokenizer.model and tokenizer_config.json"
)


def fetch_tokenizer(tok_cfg: dict, raw_dir: Path) -> Path:
    """Download a pretrained tokenizer's files from a model repository; return the folder holding them."""
    hf_cfg = tok_cfg["hf"]
    local_dir = Path(raw_dir) / "hf" / hf_cfg["repo_id"]
    downloads = fetch_hf(hf_cfg, local_dir, repo_type="model", key="tokenizer.hf", hint=TOKENIZER_HINT)
    write_manifest(Path(raw_dir), "hf", downloads, [d["path"] for d in downloads])
    return local_dir


# ---------------------------------------------------------------------------
# url: plain http(s) files


def fetch_urls(files_cfg: list[dict], out_dir: Path) -> list[dict]:
    if not files_cfg:
        raise DownloadError("corpus.url.files: empty, but corpus.source is 'url'")
    out_dir.mkdir(parents=True, exist_ok=True)
    downloads = []
    for index, entry in enumerate(files_cfg):
        url = entry["url"]
        name = entry.get("filename") or Path(unquote(urlparse(url).path)).name
        if not name or "/" in name or name.startswith("."):
            raise DownloadError(f"corpus.url.files[{index}].filename: give a plain file name for {url}")
        path = fetch_url(url, out_dir / name, entry.get("sha256"), entry.get("size"), f"corpus.url.files[{index}]")
        downloads.append({"path": path, "size": path.stat().st_size, "sha256": entry.get("sha256"), "origin": url})
    return downloads


def fetch_url(url: str, path: Path, sha256: str | None, size: int | None, key: str = "corpus.url.files") -> Path:
    """Download url to path via path.part, resuming a part left by an earlier run."""
    if path.is_file():
        try:
            check_file(path, size, sha256, url)
            return path  # complete and verified: never downloaded again
        except DownloadError as e:
            print(f"{e}; downloading it again", file=sys.stderr)
            path.unlink()

    part = path.with_name(path.name + ".part")
    for attempt in range(1, ATTEMPTS + 1):
        try:
            _download_part(url, part, key)
            break
        except BROKEN_OFF as e:
            error = e
            if attempt < ATTEMPTS:
                print(f"download of {url} broke off at {_size(part)} bytes; resuming", file=sys.stderr)
                time.sleep(RETRY_WAIT_S)
    else:
        raise DownloadError(
            f"Download of {url} ({key}) stopped at {_size(part)} bytes in {ATTEMPTS} attempts"
            f" ({_short_error(error)}). The part is kept in {part}: run again to resume.\n{LOCAL_HINT}"
        )

    try:
        check_file(part, size, sha256, f"{url} ({key})")
    except DownloadError as e:
        part.unlink()  # wrong bytes cannot be resumed into right ones
        raise DownloadError(f"{e}; the download was removed") from None
    os.replace(part, path)  # atomic: the final name appears only for a checked file
    return path


class _Incomplete(Exception):
    """The server closed the connection before sending all it announced."""


# Failures in the middle of a transfer: worth resuming. (Failing to connect at all is not.)
BROKEN_OFF = (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError,
              requests.exceptions.Timeout, _Incomplete)


def _download_part(url: str, part: Path, key: str) -> None:
    """Append the rest of url to part (or restart it when the server cannot resume)."""
    have = _size(part)
    headers = {"Accept-Encoding": "identity"}  # the checksum is of the bytes as stored
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = requests.get(url, headers=headers, stream=True, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
        raise DownloadError(f"Could not reach {url} ({key}): {_short_error(e)}\n{LOCAL_HINT}") from None
    with response:
        if response.status_code == 416 and have == _total_size(response):
            return  # an earlier run got every byte but stopped before the check
        if response.status_code == 416:
            part.unlink()  # the part is longer than the file: start over
            raise _Incomplete(f"server refused to resume at byte {have}")
        if response.status_code not in (200, 206):
            raise DownloadError(f"Download of {url} ({key}) failed: HTTP {response.status_code} {response.reason}")
        if response.status_code == 206 and _range_start(response) != have:
            part.unlink()  # not the bytes we asked for: start over
            raise _Incomplete(f"asked for bytes from {have}, got {response.headers.get('Content-Range')}")
        # A 200 answer to a Range request means the server cannot resume: restart from zero.
        with open(part, "ab" if response.status_code == 206 else "wb") as f:
            for chunk in response.iter_content(chunk_size=CHUNK_BYTES):
                f.write(chunk)
        expected = _total_size(response)
        if expected is not None and _size(part) != expected:
            raise _Incomplete(f"got {_size(part)} of {expected} bytes")


def _range_start(response: requests.Response) -> int | None:
    """First byte of a 206 answer, from 'Content-Range: bytes START-END/TOTAL'."""
    value = response.headers.get("Content-Range", "")
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _total_size(response: requests.Response) -> int | None:
    """Size of the whole file: TOTAL of Content-Range, else Content-Length of a 200 answer."""
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and not content_range.endswith("/*"):
        return int(content_range.rsplit("/", 1)[1])
    if response.status_code == 200 and response.headers.get("Content-Length"):
        return int(response.headers["Content-Length"])
    return None


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


# ---------------------------------------------------------------------------
# local: files already on disk


def local_files(paths: list[str]) -> list[dict]:
    if not paths:
        raise DownloadError("corpus.local.paths: empty, but corpus.source is 'local'")
    found = []
    for raw in paths:
        # Absolute, but links kept: a file's own name (a Hugging Face cache's train.jsonl -> ../../blobs/<sha>)
        # is what corpus.include and the file type are read from.
        path = Path(os.path.abspath(Path(raw).expanduser()))
        if not path.exists():
            raise DownloadError(
                f"corpus.local.paths: {raw} does not exist (resolved to {path}, working directory {Path.cwd()})"
            )
        if path.is_dir():
            found += [{"path": p, "size": p.stat().st_size} for p in _files_under(path)]
        else:
            found.append({"path": path, "size": path.stat().st_size})
    return found


def _files_under(folder: Path) -> list[Path]:
    # Hidden folders hold bookkeeping (.cache, .git), not stories.
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


# ---------------------------------------------------------------------------
# Archives, include patterns, checks, manifest


def readable_files(downloads: list[dict], include: list[str], raw_dir: Path) -> list[Path]:
    """Extract archives, then keep the files whose names match corpus.include."""
    candidates: list[Path] = []
    for entry in downloads:
        path = Path(entry["path"])
        candidates += extract_once(path, _extract_dir(path, raw_dir)) if is_archive(path) else [path]
    files = sorted({p for p in candidates if any(fnmatch.fnmatch(p.name, pattern) for pattern in include)})
    if not files:
        names = sorted({p.name for p in candidates})
        raise DownloadError(f"corpus.include: {include} matches none of the {len(names)} files: {names[:20]}")
    return files


def _extract_dir(archive: Path, raw_dir: Path) -> Path:
    """Beside the archive when it is ours (in raw_dir); in raw_dir when it is a user's file."""
    if raw_dir.resolve() in archive.resolve().parents:
        return archive.parent / archive_stem(archive)
    # Two user archives may share a name; the hash of the full path keeps them apart.
    tag = hashlib.sha256(str(archive.resolve()).encode()).hexdigest()[:8]
    return raw_dir / "extracted" / f"{archive_stem(archive)}-{tag}"


def extract_once(archive: Path, dest: Path) -> list[Path]:
    """Extract archive into dest unless an earlier run already did (marker with the archive's size and time)."""
    stat = archive.stat()
    stamp = f"{archive.resolve()}\n{stat.st_size}\n{stat.st_mtime_ns}\n"
    marker = dest / EXTRACTED_MARKER
    if not (marker.is_file() and marker.read_text() == stamp):
        try:
            safe_extract(archive, dest)
        except ArchiveError as e:
            raise DownloadError(str(e)) from None
        marker.write_text(stamp)
    return sorted(p for p in dest.rglob("*") if p.is_file() and p.name != EXTRACTED_MARKER)


def check_file(path: Path, size: int | None, sha256: str | None, what: str) -> None:
    """Raise DownloadError unless path has the expected size and sha256 (each when given)."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise DownloadError(f"{what}: size mismatch, expected {size} bytes, got {actual_size} ({path})")
    if sha256 is not None:
        actual = file_sha256(path)
        if actual != sha256.lower():
            raise DownloadError(f"{what}: sha256 mismatch, expected {sha256}, got {actual} ({path})")


def _short_error(error: Exception) -> str:
    """One line for an exception. requests wraps urllib3's MaxRetryError, whose reason is the real cause."""
    inner = error.args[0] if error.args else None
    cause = getattr(inner, "reason", None) or error
    text = " ".join(line.strip() for line in str(cause).splitlines() if line.strip())
    return f"{type(cause).__name__}: {text}"[:400]


# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m storylm.download", description=__doc__.splitlines()[0])
    add_stage_arguments(parser, "raw_dir: where the files and their manifest go")
    parser.add_argument("--local", action="append", default=[], help="a file or folder of a local corpus")
    # One command for both downloads, told apart by the record's stage; no record is written: the manifest,
    # written last, lists the folder's files with their sha256s.
    run_step(parser.parse_args(argv), download_stage, None)


def download_stage(args: argparse.Namespace, settings: dict) -> str:
    manifest = args.files.output(MANIFEST_ROLES[args.files.stage])
    if args.files.stage == "tokenizer_download":
        return f"tokenizer files ready in {fetch_tokenizer(settings, args.out)}, listed in {manifest}"
    return f"{len(fetch(settings, args.out, args.local))} files ready, listed in {manifest}"


if __name__ == "__main__":
    exit_with(main)
