"""An exclusive lock on a stage folder, held for a stage command's whole life.

Snakemake's own locks guard against two snakemake processes, not against the work they leave
behind: after `kill -9` of snakemake, litgpt trains on, and `snakemake --unlock` with a rerun
would start a second training in the same folder, both writing step-*, the logs and final/.
So every stage command takes this lock first (storylm.plan.stage) and refuses to start while another
process holds it, naming that process.

The lock is flock(2) on <folder>/.lock: the kernel releases it when the last process holding
the file open ends, however it ends (a killed process cannot leave a stale lock behind). The
pretrain command hands the open file to litgpt, so the folder stays locked while litgpt runs,
even if the command itself is killed. The file holds the holders' process ids, for the message,
and is emptied when the command lets go (a finished stage keeps no stale process id). The file
itself stays: removing a lock file that another process may have just opened would let two
processes lock two different files.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from storylm.io.entry import StageError

LOCK_FILE = ".lock"


class StageBusy(StageError):
    """Another process holds the stage folder's lock."""


def holders(folder: Path) -> str:
    """What the lock file says about the processes holding it ("" when nothing is written there)."""
    try:
        return (Path(folder) / LOCK_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def is_locked(folder: Path) -> bool:
    """True while some process holds the folder's lock (a test that takes and drops it at once)."""
    path = Path(folder) / LOCK_FILE
    if not path.is_file():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the lock taken just now
    return False


@contextmanager
def stage_lock(folder: Path, command: str):
    """Hold the folder's lock for the block; yields the lock file's descriptor (to hand to a child process).

    StageBusy names the holder when another process has it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StageBusy(f"{folder}: in use by {holders(folder) or 'another process'}; a second {command} there"
                        f" would write the same files. Wait for it to end, or stop it first") from None
    try:
        note(fd, f"process {os.getpid()} ({command})")
        yield fd
    finally:
        os.ftruncate(fd, 0)  # still ours here: the note goes with the lock
        os.close(fd)


def note(fd: int, text: str) -> None:
    """Write who holds the lock (replacing what was there)."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, (text + "\n").encode(), 0)
