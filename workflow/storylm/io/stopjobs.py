"""A SIGTERM to snakemake stops its running jobs too: a training saves its step and stops, and snakemake exits.

Snakemake takes SIGTERM as "exit after the running jobs finish", and a training can run for days:
a systemd stop, a closed tmux window or a batch system's kill would wait for all of it. The
Snakefile's onstart calls `stop_jobs_at_sigterm`, which keeps Snakemake's own handler (no new jobs
start) and first passes the signal to every process below the jobs' shells: the training runner and
litgpt save at it (storylm.model.litgpt_train), other stage commands end, leaving no output (each
is written atomically). The shells themselves are left to wait for their command, so Snakemake sees
each job end only once its command has saved what it had.
"""

from __future__ import annotations

import os
import signal
import sys


def stop_running_jobs(signum: int) -> list[int]:
    """Send signum to every process below this one's children; their process ids."""
    import psutil

    sent = []
    for shell in psutil.Process(os.getpid()).children():
        for process in shell.children(recursive=True):
            try:
                process.send_signal(signum)
                sent.append(process.pid)
            except psutil.NoSuchProcess:
                pass
    return sent


def stop_jobs_at_sigterm() -> None:
    """Install the SIGTERM handler that stops the running jobs, then runs the one installed before it."""
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):
        stopped = stop_running_jobs(signum)
        print(f"storylm: SIGTERM: stopping {len(stopped)} processes of the running jobs (a training saves its step"
              " first) and starting no new job; run the same command again to resume", file=sys.stderr, flush=True)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
