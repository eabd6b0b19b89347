"""A first run as a new user lives it: each stage's seconds on a fresh clone, side by side with another commit.

    PYTHONPATH=workflow python workflow/benchmarks/first_run.py --baseline 6ade104 [--repeats 2]

For this working tree (its tracked files as they are now, edits included) and for the baseline commit
(`git archive`), each in a fresh folder with no Data/, results/ or .snakemake/, it runs the README's
first command, `snakemake --cores all results/samples.txt`, with cold caches: its own empty
TORCHINDUCTOR_CACHE_DIR (torch.compile's) and XDG_CACHE_HOME (storylm's passed config checks), so
nothing a run before it left is reused. The two alternate (this, baseline, this, ...) so that a
machine that slows down or speeds up meets both. Each run's seconds come from Snakemake's own log: the
time from each job's start to its end, by rule, and the whole command's wall time.

It prints the machine and its load average before and after: on a machine other people use, the
figures are the load's as much as the code's. Nothing is installed: both trees run on this Python.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TARGET = "results/samples.txt"
# "[Mon Dec  7 19:40:34 2026]" then "localrule pretrain:" (a job starts) or "Finished jobid: 6 (Rule: pretrain)"
STAMP = re.compile(r"^\[(?P<stamp>\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
START = re.compile(r"^(?:local)?rule (?P<rule>\w+):$")
JOBID = re.compile(r"^\s+jobid: (?P<jobid>\d+)$")
FINISH = re.compile(r"^Finished jobid: (?P<jobid>\d+) \(Rule: (?P<rule>\w+)\)$")


def rule_seconds(log: str) -> dict[str, float]:
    """Seconds from each job's start to its end, summed by rule, from Snakemake's printed log
    (its stamps have whole seconds; jobs that run at once each count their own time)."""
    stamp, started, pending, seconds = None, {}, None, defaultdict(float)
    for line in log.splitlines():
        if m := STAMP.match(line):
            stamp = datetime.strptime(m["stamp"], "%a %b %d %H:%M:%S %Y")
        elif m := START.match(line):
            pending = (m["rule"], stamp)
        elif (m := JOBID.match(line)) and pending:
            started[m["jobid"]] = pending
            pending = None
        elif (m := FINISH.match(line)) and m["jobid"] in started:
            rule, begun = started.pop(m["jobid"])
            seconds[rule] += (stamp - begun).total_seconds()
    return dict(seconds)


def fresh_tree(commit: str | None, dest: Path) -> Path:
    """The files a clone of `commit` holds (None: this working tree's tracked files, edits included)."""
    dest.mkdir(parents=True)
    if commit is None:
        files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
        for name in filter(None, files.decode().split("\0")):
            source = REPO / name
            if source.is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, dest / name)
    else:
        archive = subprocess.run(["git", "archive", commit], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def first_run(tree: Path, caches: Path) -> dict:
    """The README's first command in `tree`, with empty caches: wall seconds and seconds by rule."""
    env = {**os.environ, "PYTHONPATH": str(tree / "workflow"), "TORCHINDUCTOR_CACHE_DIR": str(caches / "inductor"),
           "XDG_CACHE_HOME": str(caches / "xdg"), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "all", TARGET], cwd=tree, env=env,
                          capture_output=True, text=True)
    wall = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"first_run: snakemake failed in {tree}:\n{done.stderr[-3000:]}")
    return {"wall": wall, "rules": rule_seconds(done.stdout + done.stderr)}


def table(results: dict[str, list[dict]], names: list[str]) -> list[str]:
    """Median seconds of each rule and of the whole command, one column per tree."""
    rules = sorted({rule for runs in results.values() for run in runs for rule in run["rules"]},
                   key=lambda rule: -statistics.median(run["rules"].get(rule, 0.0) for run in results[names[0]]))
    width = max(len(rule) for rule in [*rules, "whole command", "seconds (median)"])
    lines = [f"{'seconds (median)':<{width}} " + " ".join(f"{name:>14}" for name in names)]
    for rule in [*rules, "whole command"]:
        cells = [statistics.median(run["wall"] if rule == "whole command" else run["rules"].get(rule, 0.0)
                                   for run in results[name]) for name in names]
        lines.append(f"{rule:<{width}} " + " ".join(f"{cell:>14.0f}" for cell in cells))
    return lines


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else ""
    return f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="the commit to compare with (default: none, this tree alone)")
    parser.add_argument("--repeats", type=int, default=1, help="fresh runs of each tree, alternating")
    args = parser.parse_args()
    trees = {"this tree": None, **({args.baseline: args.baseline} if args.baseline else {})}
    print(f"machine: {machine()}; load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results: dict[str, list[dict]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="first-run-") as tmp:
        for repeat in range(args.repeats):
            for index, (name, commit) in enumerate(trees.items()):
                root = Path(tmp) / f"{repeat}-{index}"
                result = first_run(fresh_tree(commit, root / "clone"), root / "caches")
                results[name].append(result)
                rules = ", ".join(f"{rule} {seconds:.0f}" for rule, seconds in
                                  sorted(result["rules"].items(), key=lambda item: -item[1]))
                print(f"{name}, run {repeat + 1}: {result['wall']:.0f} s ({rules})", flush=True)  # if cut off later
                shutil.rmtree(root)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("\n".join(table(results, list(trees))))


if __name__ == "__main__":
    main()
