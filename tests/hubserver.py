"""Offline stand-ins for the internet, for the download tests.

FakeServer is one threaded HTTP server on 127.0.0.1 (random port) that plays two parts:

* the Hugging Face hub, as huggingface_hub talks to it (point HF_ENDPOINT at server.url):
    GET  /api/datasets/{repo}/revision/{rev}?blobs=True   repo info with siblings (size, blobId, lfs.sha256)
         (and /api/models/... for model repositories)
    HEAD /datasets/{repo}/resolve/{rev}/{file}            302 to the CDN for LFS files, with
         (and /{repo}/resolve/... for model repositories)
                                                          X-Repo-Commit, X-Linked-Etag, X-Linked-Size;
                                                          200 with ETag for small git files
    GET  /cdn/{sha256}                                    the LFS bytes, with Range support
* a plain file server:  GET /files/{name}  (Range support, ETag, Content-Length)

Faults, set per file name with server.fault(name, *kinds) (none clears them):
    "corrupt"         same length, one byte changed (a checksum mismatch)
    "truncate"        every answer announces its full Content-Length, sends half, closes
    "interrupt_once"  the first body is cut like "truncate"; later requests are fine
    "no_range"        Range headers are ignored (200 and the whole file every time)

server.requests logs every request (method, path, Range, Authorization). Also here: the
test corpus helpers shared by the download and corpus tests; they make their own rows.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import socket
import tarfile
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import PICTUREBOOKS, TINYSTORIES_ROW  # noqa: F401  (the fixtures' one setting)

REPO_ROOT = Path(__file__).resolve().parents[1]

FAULTS = ("corrupt", "truncate", "interrupt_once", "no_range")


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    authorization: str | None


@dataclass
class RepoFile:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def git_sha1(self) -> str:
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()


class FakeServer:
    def __init__(self):
        self.repos: dict[str, dict] = {}  # repo id -> {"sha": commit, "files": {name: RepoFile}}
        self.files: dict[str, bytes] = {}  # plain files by name
        self.faults: dict[str, set[str]] = {}
        self.requests: list[Request] = []
        self._bodies_sent: dict[str, int] = {}
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # -- content ------------------------------------------------------------

    def add_dataset_file(self, repo_id: str, filename: str, data: bytes, lfs: bool | None = None) -> None:
        repo = self.repos.setdefault(repo_id, {"sha": hashlib.sha1(repo_id.encode()).hexdigest(), "files": {}})
        if lfs is None:  # like the real hub: small text files in git, data files in LFS
            lfs = filename not in ("README.md", ".gitattributes")
        repo["files"][filename] = RepoFile(data, lfs)

    # A model repository (a tokenizer's files) is served the same way, at the hub's model paths.
    add_model_file = add_dataset_file

    def add_file(self, name: str, data: bytes) -> str:
        self.files[name] = data
        return f"{self.url}/files/{name}"

    def fault(self, name: str, *kinds: str) -> None:
        assert all(kind in FAULTS for kind in kinds), kinds
        self.faults[name] = set(kinds)
        self._bodies_sent[name] = 0  # "interrupt_once" counts from here

    # -- what happened ------------------------------------------------------

    def gets(self, fragment: str) -> list[Request]:
        """GET requests whose path contains fragment."""
        return [r for r in self.requests if r.method == "GET" and fragment in r.path]

    def _log(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _count_body(self, name: str) -> int:
        with self._lock:
            self._bodies_sent[name] = self._bodies_sent.get(name, 0) + 1
            return self._bodies_sent[name]


def _handler_for(server: FakeServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output clean
            pass

        def do_HEAD(self):
            self._route(send_body=False)

        def do_GET(self):
            self._route(send_body=True)

        def _route(self, send_body: bool):
            server._log(Request(self.command, self.path, self.headers.get("Range"), self.headers.get("Authorization")))
            path = self.path.split("?", 1)[0]
            # Dataset repositories live under /datasets/, model repositories at the root.
            if m := re.fullmatch(r"/api/(?:datasets|models)/([^/]+/[^/]+)/revision/([^/]+)", path):
                return self._repo_info(m[1], m[2])
            if m := re.fullmatch(r"/(?:datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                return self._resolve(m[1], m[2], m[3], send_body)
            if m := re.fullmatch(r"/cdn/([0-9a-f]{64})", path):
                return self._cdn(m[1], send_body)
            if m := re.fullmatch(r"/files/(.+)", path):
                if m[1] in server.files:
                    return self._send_bytes(m[1], server.files[m[1]], send_body, {})
            self._error(404, "EntryNotFound", "not found")

        # -- the hub ---------------------------------------------------------

        def _repo(self, repo_id: str, revision: str):
            repo = server.repos.get(repo_id)
            if repo is None:
                # The real hub answers 401 for unknown (or private) repositories.
                self._error(401, "RepoNotFound", "Repository not found")
                return None
            if revision not in ("main", repo["sha"]):
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                return None
            return repo

        def _repo_info(self, repo_id: str, revision: str):
            repo = self._repo(repo_id, revision)
            if repo is None:
                return
            siblings = []
            for name, f in sorted(repo["files"].items()):
                sibling = {"rfilename": name, "size": len(f.data), "blobId": f.git_sha1}
                if f.lfs:
                    sibling["lfs"] = {"sha256": f.sha256, "size": len(f.data), "pointerSize": 134}
                siblings.append(sibling)
            info = {"_id": repo["sha"][:24], "id": repo_id, "author": repo_id.split("/")[0], "sha": repo["sha"],
                    "private": False, "gated": False, "disabled": False, "downloads": 0, "likes": 0,
                    "tags": [], "siblings": siblings}
            self._send_json(info)

        def _resolve(self, repo_id: str, revision: str, filename: str, send_body: bool):
            repo = self._repo(repo_id, revision)
            if repo is None:
                return
            f = repo["files"].get(filename)
            if f is None:
                self._error(404, "EntryNotFound", f"{filename} does not exist on {revision}",
                            {"X-Repo-Commit": repo["sha"]})
                return
            if f.lfs:
                # Like the real hub: LFS files redirect to a CDN; the headers carry the
                # file's sha256 and size (what huggingface_hub checks), not the redirect's.
                self.send_response(302)
                self.send_header("Location", f"{server.url}/cdn/{f.sha256}")
                self.send_header("X-Repo-Commit", repo["sha"])
                self.send_header("X-Linked-Etag", f'"{f.sha256}"')
                self.send_header("X-Linked-Size", str(len(f.data)))
                self.send_header("ETag", f'"{f.git_sha1}"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._send_bytes(filename, f.data, send_body, {"X-Repo-Commit": repo["sha"], "ETag": f'"{f.git_sha1}"'})

        def _cdn(self, sha256: str, send_body: bool):
            for repo in server.repos.values():
                for name, f in repo["files"].items():
                    if f.lfs and f.sha256 == sha256:
                        return self._send_bytes(name, f.data, send_body, {"ETag": f'"{sha256}"'})
            self._error(404, "EntryNotFound", "no such blob")

        # -- bytes, ranges and faults -----------------------------------------

        def _send_bytes(self, name: str, data: bytes, send_body: bool, headers: dict):
            faults = server.faults.get(name, set())
            if "corrupt" in faults:
                middle = len(data) // 2
                data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
            start, end, status = 0, len(data) - 1, 200
            wanted = self.headers.get("Range")
            if wanted and "no_range" not in faults:
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted.strip())
                start = int(m[1])
                end = min(int(m[2]), end) if m[2] else end
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            body = data[start:end + 1]
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            if "no_range" not in faults:
                self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not send_body:
                return
            served = server._count_body(name)
            if "truncate" in faults or ("interrupt_once" in faults and served == 1):
                # Announce everything, send half, hang up: what a dropped connection looks like.
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)

        def _send_json(self, obj):
            payload = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def _error(self, status: int, code: str, message: str, headers: dict | None = None):
            payload = json.dumps({"error": message}).encode()
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

    return Handler


def closed_port_url() -> str:
    """An address where nothing listens: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def server():
    fake = FakeServer().start()
    yield fake
    fake.stop()


def point_hf_at(monkeypatch, url: str) -> None:
    """Environment that sends huggingface_hub to the fake hub at url, with its fast paths off."""
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_ENABLE_HF_TRANSFER", "0")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.fixture
def hf_env(server, monkeypatch):
    point_hf_at(monkeypatch, server.url)
    return server


# ---------------------------------------------------------------------------
# Test corpus helpers


def corpus_config(**overrides) -> dict:
    """A corpus config as the pipeline passes it: overrides plus the schema's defaults, validated."""
    from snakemake.utils import validate

    config = {"corpus": json.loads(json.dumps(overrides))}
    validate(config, str(REPO_ROOT / "config" / "schema.yaml"), set_default=True)
    return config["corpus"]


def real_row() -> dict:
    """Row 0 of the real TinyStoriesChinese (a fixture: tests that read it need conftest.needs_real_stories)."""
    return json.loads(TINYSTORIES_ROW.read_text(encoding="utf-8"))


def tinystories_rows(count: int, start: int = 0) -> list[dict]:
    """Rows shaped like TinyStoriesChinese (the real row's keys, `prompt:` with its colon), distinct stories."""
    names = ["莉莉", "小明", "汤姆", "安娜", "本"]
    places = ["公园", "森林", "海边", "花园", "学校"]
    things = ["一个红色的球", "一只小狗", "一朵花", "一棵大树", "一本书"]
    rows = []
    for i in range(start, start + count):
        name, place, thing = names[i % 5], places[(i // 5) % 5], things[(i // 25) % 5]
        story_zh = f"从前，{name}去了{place}。{name}在那里看到了{thing}。这是第{i}个故事。{name}很开心。"
        rows.append({
            "story": f"Once upon a time, story number {i}.",
            "instruction": {"prompt:": f"Write a short story number {i}.", "words": ["play", "happy"],
                            "features": ["Dialogue"]},
            "summary": f"Story {i}.",
            "source": "GPT-4",
            "story_zh": story_zh,
        })
    return rows


def jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def tinystories_archive(files: dict[str, list[dict]]) -> bytes:
    """A TinyStories_all_data_zh.tar.gz in memory: {member name: rows}."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, rows in files.items():
            data = jsonl_bytes(rows)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def small_tinystories_archive() -> tuple[bytes, list[dict]]:
    """Three data files like the real archive's, of 60 generated rows."""
    rows = tinystories_rows(60)
    files = {"data00_zh.jsonl": rows[:20], "data01_zh.jsonl": rows[20:40], "data02_zh.jsonl": rows[40:]}
    return tinystories_archive(files), rows
