"""storylm.download against local stand-ins of the hub and of a file server (see hubserver.py)."""

import hashlib
import json
import os
import subprocess
import sys
import time

import pytest

from hubserver import (  # noqa: F401
    REPO_ROOT,
    closed_port_url,
    corpus_config,
    hf_env,
    jsonl_bytes,
    server,
    small_tinystories_archive,
    tinystories_rows,
)
from storylm import download
from storylm.corpus import build_corpus
from storylm.download import DownloadError, fetch
from storylm.io.manifest import manifest_files

REPO = "adam89/TinyStoriesChinese"
ARCHIVE = "TinyStories_all_data_zh.tar.gz"
MEMBERS = ["data00_zh.jsonl", "data01_zh.jsonl", "data02_zh.jsonl"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def hub(hf_env):
    """The fake hub holding a small TinyStories_all_data_zh.tar.gz (and a README not to download)."""
    hf_env.archive, hf_env.rows = small_tinystories_archive()
    hf_env.add_dataset_file(REPO, ARCHIVE, hf_env.archive)
    hf_env.add_dataset_file(REPO, "README.md", b"# TinyStoriesChinese\n")
    return hf_env


@pytest.fixture
def small_chunks(monkeypatch):
    """A cut connection loses the chunk being read; small chunks let a 1.5 KB file show resumption."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 512)
    monkeypatch.setattr(download, "CHUNK_BYTES", 512)


def resume_range(data: bytes) -> str:
    """The Range of the retry after a cut at half the file: the 512-byte chunks that arrived whole are kept."""
    kept = len(data) // 2 // 512 * 512
    assert 0 < kept < len(data)  # a real resumption, not a restart
    return f"bytes={kept}-"


@pytest.fixture(autouse=True)
def no_retry_wait(monkeypatch):
    monkeypatch.setattr(download, "RETRY_WAIT_S", 0)


def hf_config(**overrides):
    return corpus_config(source="hf", text_field="story_zh", **overrides)


def url_config(server, data=None, **entry):
    url = server.add_file(ARCHIVE, data) if data is not None else f"{server.url}/files/{ARCHIVE}"
    return corpus_config(source="url", text_field="story_zh", url={"files": [{"url": url, **entry}]})


# ---------------------------------------------------------------------------
# hf


def test_hf_fetch_then_corpus_reads_story_zh(hub, tmp_path):
    raw = tmp_path / "raw"
    files = fetch(hf_config(), raw)
    assert [f.name for f in files] == MEMBERS
    assert all(f.is_relative_to(raw / "hf" / REPO / "TinyStories_all_data_zh") for f in files)

    manifest = json.loads((raw / "manifest.json").read_text())
    assert manifest["downloads"][0]["sha256"] == sha256(hub.archive)
    assert manifest["downloads"][0]["path"] == f"hf/{REPO}/{ARCHIVE}"
    assert manifest_files(raw) == files
    assert not hub.gets("README")  # allow_patterns kept it out
    assert all(r.authorization is None for r in hub.requests)

    stats = build_corpus(hf_config(split={"val_size": 6}), files, tmp_path / "corpus")
    assert (stats["train"]["stories"], stats["val"]["stories"]) == (54, 6)
    texts = [json.loads(line)["text"] for name in ("train", "val")
             for line in (tmp_path / "corpus" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(texts) == sorted(row["story_zh"] for row in hub.rows)  # story_zh of every row, nothing else


def test_hf_second_fetch_downloads_nothing(hub, tmp_path):
    files = fetch(hf_config(), tmp_path)
    extracted_at = files[0].stat().st_mtime_ns
    fetch(hf_config(), tmp_path)
    assert len(hub.gets("/cdn/")) == 1
    assert len([r for r in hub.requests if "/resolve/" in r.path]) == 1  # the 2nd run asks only for the file list
    assert files[0].stat().st_mtime_ns == extracted_at  # and does not extract again


def test_hf_token_from_environment_is_sent(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    fetch(hf_config(), tmp_path)
    hub_requests = [r for r in hub.requests if "/api/" in r.path or "/resolve/" in r.path]
    assert hub_requests and all(r.authorization == "Bearer hf_test_token" for r in hub_requests)


def test_hf_checksum_mismatch(hub, tmp_path):
    hub.fault(ARCHIVE, "corrupt")
    with pytest.raises(DownloadError) as error:
        fetch(hf_config(), tmp_path)
    assert "sha256 mismatch" in str(error.value) and ARCHIVE in str(error.value)
    assert not (tmp_path / "hf" / REPO / ARCHIVE).exists()  # a wrong file is not left to be trusted
    hub.fault(ARCHIVE)
    assert len(fetch(hf_config(), tmp_path)) == 3


def test_hf_interrupted_transfer_resumes(hub, tmp_path, small_chunks):
    hub.fault(ARCHIVE, "interrupt_once")
    files = fetch(hf_config(), tmp_path)
    assert len(files) == 3
    cdn = hub.gets("/cdn/")
    assert len(cdn) == 2 and cdn[0].range is None and cdn[1].range == resume_range(hub.archive)
    assert (tmp_path / "hf" / REPO / ARCHIVE).read_bytes() == hub.archive


def test_hf_truncated_transfer_fails_then_rerun_completes(hub, tmp_path, small_chunks):
    hub.fault(ARCHIVE, "truncate")
    with pytest.raises(DownloadError) as error:
        fetch(hf_config(), tmp_path)
    assert "in 3 attempts" in str(error.value) and "Run again to resume" in str(error.value)
    assert not (tmp_path / "hf" / REPO / ARCHIVE).exists()  # no half file under the final name
    hub.fault(ARCHIVE)
    before = len(hub.gets("/cdn/"))
    assert len(fetch(hf_config(), tmp_path)) == 3
    assert hub.gets("/cdn/")[before].range.startswith("bytes=")  # resumed, not restarted
    assert (tmp_path / "hf" / REPO / ARCHIVE).read_bytes() == hub.archive


def test_hf_sizes_from_config(hub, tmp_path):
    with pytest.raises(DownloadError, match=r"corpus.hf.sizes: .* 12 bytes, but the hub lists"):
        fetch(hf_config(hf={"sizes": {ARCHIVE: 12}}), tmp_path)
    with pytest.raises(DownloadError, match=r"corpus.hf.sizes: \['other.tar.gz'\]"):
        fetch(hf_config(hf={"sizes": {"other.tar.gz": 12}}), tmp_path)
    assert not hub.gets("/cdn/")  # checked before downloading
    assert len(fetch(hf_config(hf={"sizes": {ARCHIVE: len(hub.archive)}}), tmp_path)) == 3


def test_hf_patterns_matching_nothing(hub, tmp_path):
    with pytest.raises(DownloadError, match=r"corpus.hf.allow_patterns: \['\*.parquet'\] match none .*README.md"):
        fetch(hf_config(hf={"allow_patterns": ["*.parquet"]}), tmp_path)


def test_hf_unknown_repo_and_revision(hub, tmp_path):
    with pytest.raises(DownloadError, match="dataset nobody/nothing .*RepositoryNotFoundError"):
        fetch(hf_config(hf={"repo_id": "nobody/nothing"}), tmp_path)
    with pytest.raises(DownloadError, match=r"revision v9.*RevisionNotFoundError"):
        fetch(hf_config(hf={"revision": "v9"}), tmp_path)


def test_hf_offline_fails_fast_with_a_useful_message(tmp_path, monkeypatch):
    endpoint = closed_port_url()
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    start = time.monotonic()
    with pytest.raises(DownloadError) as error:
        fetch(hf_config(), tmp_path)
    assert time.monotonic() - start < 10
    message = str(error.value)
    for expected in (REPO, "revision main", f"{endpoint}/api/datasets/{REPO}/revision/main",
                     "Connection refused", "source: local", "paths:"):
        assert expected in message


# ---------------------------------------------------------------------------
# url


def test_url_fetch_checks_sha256_and_never_downloads_twice(server, tmp_path):
    data, _ = small_tinystories_archive()
    cfg = url_config(server, data, sha256=sha256(data))
    files = fetch(cfg, tmp_path)
    assert [f.name for f in files] == MEMBERS
    assert (tmp_path / "url" / ARCHIVE).read_bytes() == data
    assert not (tmp_path / "url" / f"{ARCHIVE}.part").exists()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["downloads"] == [{"path": f"url/{ARCHIVE}", "size": len(data), "sha256": sha256(data),
                                      "origin": cfg["url"]["files"][0]["url"]}]
    fetch(cfg, tmp_path)
    assert len(server.gets("/files/")) == 1


def test_url_cached_file_that_fails_its_check_is_fetched_again(server, tmp_path):
    data, _ = small_tinystories_archive()
    cfg = url_config(server, data, sha256=sha256(data))
    (tmp_path / "url").mkdir()
    (tmp_path / "url" / ARCHIVE).write_bytes(data[:-1] + b"x")
    fetch(cfg, tmp_path)
    assert len(server.gets("/files/")) == 1 and (tmp_path / "url" / ARCHIVE).read_bytes() == data


def test_url_checksum_mismatch(server, tmp_path):
    data, _ = small_tinystories_archive()
    cfg = url_config(server, data, sha256="0" * 64)
    with pytest.raises(DownloadError) as error:
        fetch(cfg, tmp_path)
    assert "sha256 mismatch, expected " + "0" * 64 in str(error.value) and "corpus.url.files[0]" in str(error.value)
    assert list((tmp_path / "url").iterdir()) == []  # neither a final file nor a .part


def test_url_size_is_checked_without_sha256(server, tmp_path):
    data, _ = small_tinystories_archive()
    with pytest.raises(DownloadError, match=f"size mismatch, expected {len(data) + 1} bytes, got {len(data)}"):
        fetch(url_config(server, data, size=len(data) + 1), tmp_path)
    assert len(fetch(url_config(server, data, size=len(data)), tmp_path)) == 3


def test_url_interrupted_transfer_resumes_with_range(server, tmp_path, small_chunks):
    data, _ = small_tinystories_archive()
    cfg = url_config(server, data, sha256=sha256(data))
    server.fault(ARCHIVE, "interrupt_once")
    assert len(fetch(cfg, tmp_path)) == 3
    assert [r.range for r in server.gets("/files/")] == [None, resume_range(data)]
    assert (tmp_path / "url" / ARCHIVE).read_bytes() == data


def test_url_without_range_support_restarts(server, tmp_path, small_chunks):
    data, _ = small_tinystories_archive()
    cfg = url_config(server, data, sha256=sha256(data))
    server.fault(ARCHIVE, "interrupt_once", "no_range")
    assert len(fetch(cfg, tmp_path)) == 3
    assert (tmp_path / "url" / ARCHIVE).read_bytes() == data  # the 200 answer replaced the part


def test_url_truncated_transfer_fails_then_rerun_completes(server, tmp_path, small_chunks):
    data, _ = small_tinystories_archive()
    cfg = url_config(server, data, sha256=sha256(data))
    server.fault(ARCHIVE, "truncate")
    with pytest.raises(DownloadError) as error:
        fetch(cfg, tmp_path)
    part = tmp_path / "url" / f"{ARCHIVE}.part"
    assert "in 3 attempts" in str(error.value) and str(part) in str(error.value)
    assert not (tmp_path / "url" / ARCHIVE).exists() and 0 < part.stat().st_size < len(data)
    server.fault(ARCHIVE)
    kept = part.stat().st_size
    assert len(fetch(cfg, tmp_path)) == 3
    assert server.gets("/files/")[-1].range == f"bytes={kept}-"
    assert (tmp_path / "url" / ARCHIVE).read_bytes() == data and not part.exists()


def test_url_http_error(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(url_config(server), tmp_path)


def test_url_offline_fails_fast(tmp_path):
    url = f"{closed_port_url()}/{ARCHIVE}"
    start = time.monotonic()
    with pytest.raises(DownloadError) as error:
        fetch(corpus_config(source="url", url={"files": [{"url": url}]}), tmp_path)
    assert time.monotonic() - start < 10
    assert url in str(error.value) and "source: local" in str(error.value)


def test_malicious_archive_is_refused(server, tmp_path):
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("../../escape.jsonl")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"{}\n"))
    data = buffer.getvalue()
    with pytest.raises(DownloadError, match=r"refusing to extract member '../../escape.jsonl'"):
        fetch(url_config(server, data, sha256=sha256(data)), tmp_path / "raw")
    assert not (tmp_path / "escape.jsonl").exists()
    assert not (tmp_path / "raw" / "url" / "TinyStories_all_data_zh").exists()


# ---------------------------------------------------------------------------
# local


def test_local_files_folders_and_include(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / ".cache").mkdir()
    (data / "a.jsonl").write_bytes(jsonl_bytes(tinystories_rows(2)))
    (data / "sub" / "b.txt").write_text("一个故事。\n", encoding="utf-8")
    (data / "README.md").write_text("not a story")
    (data / ".cache" / "c.jsonl").write_text("{}")
    single = tmp_path / "single.json"
    single.write_text("[]")
    monkeypatch.chdir(tmp_path)
    files = fetch(corpus_config(source="local", local={"paths": ["data", str(single)]}), tmp_path / "raw")
    assert files == sorted([data / "a.jsonl", data / "sub" / "b.txt", single])
    only_jsonl = fetch(corpus_config(source="local", local={"paths": ["data"]}, include=["*.jsonl"]), tmp_path / "raw")
    assert only_jsonl == [data / "a.jsonl"]


def test_local_missing_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DownloadError, match=r"corpus.local.paths: nowhere/stories.jsonl does not exist"):
        fetch(corpus_config(source="local", local={"paths": ["nowhere/stories.jsonl"]}), tmp_path / "raw")


def test_local_archive_is_extracted_once_into_raw_dir(tmp_path, monkeypatch):
    archive = tmp_path / "mine" / ARCHIVE
    archive.parent.mkdir()
    archive.write_bytes(small_tinystories_archive()[0])
    calls = []
    real_extract = download.safe_extract
    monkeypatch.setattr(download, "safe_extract", lambda *a: calls.append(a) or real_extract(*a))
    cfg = corpus_config(source="local", local={"paths": [str(archive)]})
    files = fetch(cfg, tmp_path / "raw")
    assert fetch(cfg, tmp_path / "raw") == files and len(calls) == 1
    assert all(f.is_relative_to(tmp_path / "raw" / "extracted") for f in files)  # the user's folder is untouched
    assert sorted(p.name for p in archive.parent.iterdir()) == [ARCHIVE]


def test_include_matching_nothing(tmp_path):
    (tmp_path / "a.csv").write_text("x")
    with pytest.raises(DownloadError, match=r"corpus.include: .* matches none of the 1 files: \['a.csv'\]"):
        fetch(corpus_config(source="local", local={"paths": [str(tmp_path / "a.csv")]}), tmp_path / "raw")


# ---------------------------------------------------------------------------
# command line


def run_cli(module, *args, env=None):
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "workflow"), **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=environment,
                          cwd=REPO_ROOT, timeout=60)


def download_record(settings: dict, stage: str = "download") -> str:
    """A download command's --record: the settings a download's fingerprint holds are the ones it fetches by."""
    return json.dumps({"stage": stage, "hash": "abc", "inputs": {}, "config": settings})


def test_cli_download_then_corpus(hub, tmp_path):
    cfg = hf_config(split={"val_size": 0.1})
    done = run_cli("storylm.download", "--record", download_record(cfg), "--out", str(tmp_path / "raw"),
                   env={"HF_ENDPOINT": hub.url})
    assert done.returncode == 0, done.stderr
    record = json.dumps({"stage": "corpus", "hash": "abc", "inputs": {}, "config": cfg})
    done = run_cli("storylm.corpus", "--record", record, "--out", str(tmp_path / "corpus"),
                   "--inputs", json.dumps({"raw files": str(tmp_path / "raw/manifest.json")}))
    assert done.returncode == 0, done.stderr
    stats = json.loads((tmp_path / "corpus" / "stats.json").read_text())
    assert (stats["train"]["stories"], stats["val"]["stories"]) == (54, 6)


def test_cli_offline_is_one_clear_message(tmp_path):
    done = run_cli("storylm.download", "--record", download_record(hf_config()), "--out", str(tmp_path),
                   env={"HF_ENDPOINT": closed_port_url()})
    assert done.returncode == 1
    assert "error: Could not get the file list of dataset adam89/TinyStoriesChinese" in done.stderr
    assert "Traceback" not in done.stderr


# ---------------------------------------------------------------------------
# a pretrained tokenizer from a model repository (tokenizer.source: hf)

TOKENIZER_REPO = "someone/story-tokenizer"


@pytest.fixture
def tokenizer_hub(hf_env, tmp_path):
    """A model repository holding a small trained BPE tokenizer (tokenizer.json in LFS) and a README."""
    from storylm.stories.storygen import generate_stories
    from storylm.tokenizer import train_bpe

    train_bpe((s["text"] for s in generate_stories(200, seed=3)), 300, 2, tmp_path / "bpe")
    hf_env.tokenizer_files = {name: (tmp_path / "bpe" / name).read_bytes()
                              for name in ("tokenizer.json", "tokenizer_config.json")}
    for name, data in hf_env.tokenizer_files.items():
        hf_env.add_model_file(TOKENIZER_REPO, name, data, lfs=name == "tokenizer.json")
    hf_env.add_model_file(TOKENIZER_REPO, "README.md", b"# a tokenizer\n")
    return hf_env


def tokenizer_config(**hf) -> dict:
    return {"kind": "pretrained", "source": "hf",
            "hf": {"repo_id": TOKENIZER_REPO, "revision": "main", "files": ["tokenizer.json", "tokenizer_config.json"],
                   "sha256": {}, **hf}}


def test_a_hub_tokenizer_is_downloaded_checked_and_cached(tokenizer_hub, tmp_path):
    from litgpt import Tokenizer

    folder = download.fetch_tokenizer(tokenizer_config(), tmp_path)
    assert folder == tmp_path / "hf" / TOKENIZER_REPO
    for name, data in tokenizer_hub.tokenizer_files.items():
        assert (folder / name).read_bytes() == data
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    lfs = next(d for d in manifest["downloads"] if d["path"].endswith("tokenizer.json"))
    assert lfs["sha256"] == sha256(tokenizer_hub.tokenizer_files["tokenizer.json"])  # the hub's sha256, checked
    assert not tokenizer_hub.gets("README")
    assert Tokenizer(folder).encode("从前").tolist()  # litgpt loads what came down
    # Cached: a second fetch asks for the file list only.
    resolves = len([r for r in tokenizer_hub.requests if "/resolve/" in r.path])
    download.fetch_tokenizer(tokenizer_config(), tmp_path)
    assert len([r for r in tokenizer_hub.requests if "/resolve/" in r.path]) == resolves


def test_a_pinned_sha256_that_differs_stops_the_download(tokenizer_hub, tmp_path):
    wrong = "0" * 64
    with pytest.raises(DownloadError, match=r"^tokenizer.hf.sha256: tokenizer.json is pinned to 0{64}, but model"):
        download.fetch_tokenizer(tokenizer_config(sha256={"tokenizer.json": wrong}), tmp_path)
    # A git file (no sha256 on the hub) is checked against its pin after download, and removed when wrong.
    with pytest.raises(DownloadError, match=r"sha256 mismatch.*the file was removed"):
        download.fetch_tokenizer(tokenizer_config(sha256={"tokenizer_config.json": wrong}), tmp_path)
    assert not (tmp_path / "hf" / TOKENIZER_REPO / "tokenizer_config.json").exists()


def test_a_missing_tokenizer_file_is_named(tokenizer_hub, tmp_path):
    with pytest.raises(DownloadError, match=r"^tokenizer.hf.files: \['tokenizer.model'\] are not among the files"):
        download.fetch_tokenizer(tokenizer_config(files=["tokenizer.model"]), tmp_path)


def test_offline_the_tokenizer_error_says_how_to_use_local_files(tmp_path):
    done = run_cli("storylm.download", "--record", download_record(tokenizer_config(), "tokenizer_download"), "--out",
                   str(tmp_path), env={"HF_ENDPOINT": closed_port_url()})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"error: Could not get the file list of model {TOKENIZER_REPO}")
    assert "    source: local\n    path: path/to/chatglm3-6b" in done.stderr


# ---------------------------------------------------------------------------
# A hostile mirror: the file names it lists must not leave the download folder


@pytest.mark.parametrize("name", ["../../../../{outside}/x.jsonl", "{outside}/x.jsonl", "data\\..\\..\\x.jsonl",
                                  "data/../../x.jsonl"])
def test_a_mirror_listing_names_outside_the_download_folder_is_refused_before_any_byte(hf_env, tmp_path, name):
    outside = tmp_path / "outside"
    outside.mkdir()
    name = name.format(outside=str(outside).lstrip("/") if name.startswith("..") else outside)
    hf_env.add_dataset_file(REPO, "data/good.jsonl", jsonl_bytes(tinystories_rows(3)))
    hf_env.add_dataset_file(REPO, name, jsonl_bytes(tinystories_rows(3)))
    raw = tmp_path / "project" / "Data" / "raw" / "abc"
    with pytest.raises(DownloadError, match=r"^corpus\.hf: dataset adam89/TinyStoriesChinese .* lists a file named "
                                            r".*: it would be written outside .*\. Nothing was downloaded; check that"
                                            r" HF_ENDPOINT points at a hub you trust$"):
        fetch(hf_config(hf={"repo_id": REPO, "allow_patterns": ["*.jsonl"]}), raw)
    assert not list(outside.rglob("*")) and not (tmp_path / "x.jsonl").exists()
    assert not [r for r in hf_env.requests if "/resolve/" in r.path or "/cdn/" in r.path]  # not even the good file
