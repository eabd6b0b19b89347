"""storylm.io.archive: .tar.gz extraction that cannot write outside its destination."""

import io
import tarfile

import pytest

from storylm.io.archive import ArchiveError, archive_stem, safe_extract


def make_archive(path, members):
    """members: list of TarInfo-building tuples (name, kind, payload_or_linkname)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                         "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}[kind]
            if kind in ("symlink", "hardlink"):
                info.linkname = payload
            tar.addfile(info)
    return path


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_extracts_files_and_folders(tmp_path):
    archive = make_archive(tmp_path / "stories.tar.gz", [
        ("data", "dir", None),
        ("data/a.jsonl", "file", b'{"text": "a"}\n'),
        ("data/sub/b.jsonl", "file", "故事\n".encode()),
        ("data/link.jsonl", "symlink", "a.jsonl"),  # a link inside the destination is fine
    ])
    dest = tmp_path / "out"
    files = safe_extract(archive, dest)
    assert files == [dest / "data/a.jsonl", dest / "data/sub/b.jsonl"]
    assert (dest / "data/sub/b.jsonl").read_text() == "故事\n"
    assert (dest / "data/link.jsonl").read_text() == '{"text": "a"}\n'
    assert leftovers(tmp_path) == ["out", "stories.tar.gz"]  # no temporary folder left


def test_extraction_replaces_an_earlier_one(tmp_path):
    dest = tmp_path / "out"
    safe_extract(make_archive(tmp_path / "one.tar.gz", [("old.txt", "file", b"old")]), dest)
    safe_extract(make_archive(tmp_path / "two.tar.gz", [("new.txt", "file", b"new")]), dest)
    assert leftovers(dest) == ["new.txt"]


@pytest.mark.parametrize("members, reason", [
    ([("/etc/evil", "file", b"x")], "absolute path"),
    ([("ok.txt", "file", b"x"), ("../evil", "file", b"x")], "escapes the destination"),
    ([("data/../../evil", "file", b"x")], "escapes the destination"),
    ([("evil", "symlink", "/etc/passwd")], "symlink to absolute path"),
    ([("data/evil", "symlink", "../../outside")], "symlink points outside"),
    ([("evil", "hardlink", "../outside")], "hard link points outside"),
    ([("evil", "chr", None)], "device file"),
    ([("evil", "blk", None)], "device file"),
    ([("evil", "fifo", None)], "device file or FIFO"),
])
def test_refuses_unsafe_members(tmp_path, members, reason):
    archive = make_archive(tmp_path / "bad.tar.gz", members)
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError) as error:
        safe_extract(archive, dest)
    message = str(error.value)
    assert str(archive) in message and reason in message
    assert f"'{members[-1][0]}'" in message  # names the member
    assert leftovers(tmp_path) == ["bad.tar.gz"]  # nothing extracted, no temporary folder


def test_unsafe_member_keeps_the_earlier_extraction(tmp_path):
    dest = tmp_path / "out"
    safe_extract(make_archive(tmp_path / "good.tar.gz", [("good.txt", "file", b"good")]), dest)
    with pytest.raises(ArchiveError):
        safe_extract(make_archive(tmp_path / "bad.tar.gz", [("a.txt", "file", b"a"), ("/abs", "file", b"x")]), dest)
    assert leftovers(dest) == ["good.txt"]


def test_truncated_archive_is_a_clear_error(tmp_path):
    archive = make_archive(tmp_path / "cut.tar.gz", [("a.txt", "file", bytes(range(256)) * 400)])
    archive.write_bytes(archive.read_bytes()[:300])
    with pytest.raises(ArchiveError, match="cut.tar.gz"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_not_an_archive(tmp_path):
    path = tmp_path / "fake.tar.gz"
    path.write_text("not a tar file")
    with pytest.raises(ArchiveError, match="fake.tar.gz"):
        safe_extract(path, tmp_path / "out")


def test_archive_stem(tmp_path):
    assert archive_stem(tmp_path / "TinyStories_all_data_zh.tar.gz") == "TinyStories_all_data_zh"
    assert archive_stem(tmp_path / "x.tgz") == "x"
