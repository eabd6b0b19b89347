"""The error model every stage command shares, and atomic writes of its outputs.

A stage command is `python -m storylm.<stage> ...`. A config or data error is a StageError
(or a subclass): the command prints one line that names the config key or the file, and
exits 1, without a traceback. Anything else is a bug and keeps its traceback.

Every output file is written to a temporary name beside it and renamed into place, so a
file under its final name is always complete: a killed job never leaves half a file that
a later run would take for a result.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path


class StageError(Exception):
    """A config or data error; the message names the config key or the file."""


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
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path | str, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def run_stage(main: Callable[[list[str] | None], object], argv: list[str] | None = None,
              errors: tuple[type[BaseException], ...] = ()) -> int:
    """Call a stage's main; a StageError (or one of `errors`) becomes one line on stderr and exit status 1."""
    try:
        main(argv)
    except (StageError, *errors) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def exit_with(main: Callable[[list[str] | None], object], errors: tuple[type[BaseException], ...] = ()) -> None:
    """The `if __name__ == "__main__":` body of every stage module."""
    sys.exit(run_stage(main, None, errors))
