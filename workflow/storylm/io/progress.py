"""One live progress line per long stage: in place on a terminal, a few whole lines in a log.

    with Progress("evaluate", total=300, unit="stories") as progress:
        for ...:
            progress.update(done, "loss 3.21")

prints `evaluate: 120/300 stories (40%) | loss 3.21 | 12 s, about 18 s left`. Where the line goes:

- under Snakemake, to the terminal Snakemake itself writes to: the rules' shell prefix
  (workflow/rules/common.smk) opens Snakemake's stderr as file descriptor 3 before each
  command sends its own output to the job's log, and sets STORYLM_PROGRESS_FD to it; a stage run by
  hand writes to its stderr;
- on a terminal the line is rewritten in place (at most every TTY_EVERY_S seconds) and ends with a
  newline when the stage does;
- anywhere else (a file, a pipe, a Slurm job's output) a whole line at each quarter of the work
  once the stage has run SPARSE_AFTER_S seconds, every SPARSE_EVERY_S seconds in between, and at the
  end: a log a person reads, not a ticker (a stage of a few seconds prints its last line only).

The time left is the work left at the rate since the first update (the start-up before it, imports
and compilation, is not work done), so it appears from the second update on.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

FD_VARIABLE = "STORYLM_PROGRESS_FD"
TTY_EVERY_S = 0.5
SPARSE_EVERY_S = 300.0
SPARSE_AFTER_S = 10.0
SPARSE_FRACTIONS = (0.25, 0.5, 0.75)


def progress_stream(environ=os.environ) -> TextIO:
    """Where progress goes: the descriptor STORYLM_PROGRESS_FD names when it is open, else stderr."""
    fd = environ.get(FD_VARIABLE, "").strip()
    if fd.isdigit():
        try:
            os.fstat(int(fd))
            return open(int(fd), "w", encoding="utf-8", errors="replace", closefd=False)
        except OSError:  # not open in this process (a command run by hand with the variable left set)
            pass
    return sys.stderr


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def duration(seconds: float) -> str:
    """12 s, 3 min 05 s, 2 h 03 min: as a person reads a time."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def render(label: str, done: int, total: int | None, unit: str, text: str, elapsed: float,
           left: float | None) -> str:
    """The line itself: label, done/total unit (percent), the caller's figures, elapsed and left."""
    count = f"{done:,}/{total:,} {unit}".rstrip() if total else f"{done:,} {unit}".rstrip()
    if total:
        count += f" ({100 * done / total:.0f}%)"
    times = duration(elapsed) + (f", about {duration(left)} left" if left is not None and done < (total or 0) else "")
    return " | ".join(part for part in (f"{label}: {count}", text, times) if part)


class Progress:
    """A live line for `total` units of work; update() as work is done, close() (or leave the with-block) at the end."""

    def __init__(self, label: str, total: int | None, unit: str = "", stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream if stream is not None else progress_stream()
        self.tty = is_terminal(self.stream)
        self.clock = clock
        self.started = clock()
        self.first: tuple[float, int] | None = None  # (time, done) at the first update: the rate starts there
        self.last_shown = self.started  # the first sparse line comes at a quarter or after SPARSE_EVERY_S
        self.shown: tuple[int, str] | None = None  # done and text of the last line written: not written twice
        self.next_fraction = 0
        self.done, self.text = 0, ""
        self.line = ""
        self.closed = False

    def left(self, done: int, now: float) -> float | None:
        """Seconds left at the rate since the first update, or None before a rate is known."""
        if not self.total or self.first is None or done <= self.first[1] or now <= self.first[0]:
            return None
        rate = (done - self.first[1]) / (now - self.first[0])
        return (self.total - done) / rate

    def restart_rate(self) -> None:
        """Measure the rate from the next update on (the work before it was start-up, not the pace)."""
        self.first = None

    def update(self, done: int, text: str = "") -> None:
        now = self.clock()
        if self.first is None:
            self.first = (now, done)
        self.done, self.text = done, text
        self.line = render(self.label, done, self.total, self.unit, text, now - self.started, self.left(done, now))
        if self.tty:
            if not self.shown or now - self.last_shown >= TTY_EVERY_S:
                self._show(now, end="")
            return
        crossed = False
        while (self.total and self.next_fraction < len(SPARSE_FRACTIONS)
               and done >= SPARSE_FRACTIONS[self.next_fraction] * self.total):
            self.next_fraction += 1
            crossed = True
        if (crossed and now - self.started >= SPARSE_AFTER_S) or now - self.last_shown >= SPARSE_EVERY_S:
            self._show(now, end="\n")

    def close(self, text: str | None = None, done: int | None = None) -> None:
        """The last line, always shown (and kept on a terminal): the last update's, or `done` and `text`."""
        if self.closed:
            return
        self.closed = True
        now = self.clock()
        done = self.done if done is None else done
        text = self.text if text is None else text
        line = render(self.label, done, self.total, self.unit, text, now - self.started, None)
        if self.tty or self.shown != (done, text):
            self.done, self.text, self.line = done, text, line
            self._show(now, end="\n")

    def _show(self, now: float, end: str) -> None:
        self.last_shown, self.shown = now, (self.done, self.text)
        prefix = "\r" if self.tty else ""
        clear = "\x1b[K" if self.tty else ""
        try:
            self.stream.write(f"{prefix}{self.line}{clear}{end}")
            self.stream.flush()
        except (OSError, ValueError):  # the terminal went away: the work goes on
            pass

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind, _value, _traceback) -> None:
        if kind is None:
            self.close()
        elif self.tty and self.line:  # keep what was shown, on its own line, above the error
            self._show(self.clock(), end="\n")
