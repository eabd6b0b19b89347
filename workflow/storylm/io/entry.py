"""The stage entry point: the error model every stage command shares, and atomic writes of its outputs.

A stage command is `python -m storylm.<stage> ...`, its `if __name__ == "__main__":` body is
`exit_with(main)`. A config or data error is a StageError (every public exception class of the
package derives from it): the command prints one line that names the config key or the file,
and exits 1, without a traceback. Anything else is a bug and keeps its traceback.

Every output file is written to a temporary name beside it and renamed into place, so a
file under its final name is always complete: a killed job never leaves half a file that
a later run would take for a result. A stage writes its record (config.json: its settings
and the hashes it was built from) last, so a folder with its record is a finished stage
(storylm.plan.stage, the protocol every stage command follows).
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

RECORD = "config.json"


class StageError(Exception):
    """The root of the package's errors: a config or data error whose message names the config key or the file."""


@contextmanager
def atomic_path(path: Path | str):
    """Yield a temporary path beside `path`; rename it to `path` only when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; outputs get the usual mode
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        if error.filename is None:  # a failed write names no file (a full disk): name the one being written
            raise OSError(error.errno, error.strerror, str(path)) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: Path):
    """Yield a fresh folder beside `path`; it replaces `path` whole only when the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            # Snakemake creates an output's folder before the job; a folder cannot be renamed onto a
            # non-empty one, so the old one is moved aside first and removed after.
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path | str, obj) -> None:
    """obj as JSON, atomically; a NaN or infinite number anywhere in it is refused, naming its key: a
    figure that exists is a figure that is right (a diverged or damaged model gives NaN, not a result)."""
    bad = non_finite(obj)
    if bad is not None:
        key, value = bad
        raise StageError(f"{path}: {key or '(value)'} is {value}, not a finite number: nothing was recorded"
                         " (a diverged or damaged model? see the pretrain log)")
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def non_finite(obj, key: str = "") -> tuple[str, float] | None:
    """(dotted key, value) of the first NaN or infinite float in a JSON-able object, or None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return key, obj
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for name, value in items:
        found = non_finite(value, f"{key}[{name}]" if isinstance(name, int) else f"{key}.{name}".lstrip("."))
        if found is not None:
            return found
    return None


def read_json(path: Path, what: str):
    if not path.is_file():
        raise StageError(f"{path}: missing ({what})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise StageError(f"{path}: not valid JSON ({first_line(error)})") from None


def first_line(error: BaseException) -> str:
    """The error model prints one line; library errors sometimes span several."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def run_stage(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Call a stage's main; a StageError becomes one line on stderr and exit status 1."""
    try:
        main(argv)
    except StageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: {disk_full(error)}", file=sys.stderr)
        return 1
    return 0


def disk_full(error: OSError) -> str:
    """A full disk (or quota), in one line naming the folder: nothing finished was lost (every output is
    written under a temporary name first), so freeing space and rerunning goes on from there."""
    where = Path(error.filename).parent if error.filename else Path.cwd()
    return (f"{where}: {error.strerror} (errno {error.errno}): free space there and run the same command again;"
            " finished outputs are kept")


def exit_with(main: Callable[[list[str] | None], object]) -> None:
    """The `if __name__ == "__main__":` body of every stage module."""
    sys.exit(run_stage(main, None))
