"""Compare two runs in a terminal: each headline figure with its 95% interval, the difference and a verdict.

    python -m storylm.compare [--configfile FILE ...] [--config KEY=VALUE ...] RUN_A RUN_B

Run it where you run snakemake, with the config options you ran it with: it reads every finished
training of the config's runs from their stage folders (the seed spread is pooled over all of
them, as in results/verdicts.tsv) and prints, for each figure, both runs, A - B, and whether A is
better, worse, or whether the noise does not allow to tell.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from storylm.io.entry import StageError, exit_with
from storylm.plan.runs import load_config, plan
from storylm.results import summary
from storylm.results.comparison import Runs, summary_lines

# What a finished training has, by role (storylm.plan.stages: provides): the files training_results reads, and the
# story scores; the sample figures and the story scores may be missing.
ROLES = (*summary.ROLES, "story scores")
OPTIONAL = ("sample figures", "story scores")


def finished_trainings(the_plan) -> tuple[list[dict], dict, list[str]]:
    """Every training whose evaluate and sample stages are done, with its story scores; and what is missing."""
    trainings, stories, missing = [], {}, []
    for run, seed in the_plan.trainings():
        files = {role: Path(the_plan.run_file(run, seed, role)) for role in ROLES}
        if not all(files[role].is_file() for role in ROLES if role not in OPTIONAL):
            missing.append(f"{run} seed {seed}")
            continue
        metrics, _ = summary.training_results(the_plan.training_info(run, seed), files)
        trainings.append(metrics)
        if files["story scores"].is_file():
            stories[(run, seed)] = pd.read_csv(files["story scores"], sep="\t")
    return trainings, stories, missing


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m storylm.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", type=Path, action="append", default=[], help="as snakemake's")
    parser.add_argument("--config", action="append", default=[], help="KEY=VALUE, as snakemake's")
    parser.add_argument("run_a", help="a run of the config (the default run: default)")
    parser.add_argument("run_b")
    args = parser.parse_args(argv)
    the_plan = plan(load_config(args.configfile, args.config))
    for name in (args.run_a, args.run_b):
        if name not in the_plan.runs:
            raise StageError(f"{name}: not a run of this config (its runs: {', '.join(the_plan.runs)})")
    trainings, stories, missing = finished_trainings(the_plan)
    runs = Runs(trainings, stories)
    for name in (args.run_a, args.run_b):
        if name not in runs.names:
            raise StageError(f"runs.{name}: no finished training yet; run snakemake with this config first")
    for line in summary_lines(runs, args.run_a, args.run_b):
        print(line)
    if missing:
        print(f"(not finished, left out: {', '.join(missing)})", file=sys.stderr)


if __name__ == "__main__":
    exit_with(main)
