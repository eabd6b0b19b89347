"""The runs compared: one row per training, one row per run with 95% intervals, and verdicts between runs.

A training is one seed of one run; its results are the dict that storylm.results.summary builds (each run's
results/runs/<run>/seed-<seed>/metrics.json) and its val stories' scores (story_scores.tsv). The
statistics are storylm.results.stats's; docs/evaluation.md ("Comparing runs") says what each interval covers.

Headline figures, each with the direction that is better:
- val bits per character of whole stories (lower): comparable across tokenizers;
- the share of sampled stories the builtin-world checker passes (higher), only for runs on the
  builtin corpus: on other corpora the checker has no calibration, so its column is named
  builtin_world_checker_rate there and it gives no verdict;
- the share of sampled stories that end with end-of-text (higher);
- training tokens per second (higher): a machine's figure, not a model's quality.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from storylm.results import stats
from storylm.results.figures import numeric_figures

# The runs_by_seed.tsv columns before the sample figures, in order, with their units in the name.
BY_SEED_COLUMNS = ["run", "seed", "differs_from_base", "parameters", "train_tokens", "train_flops", "train_seconds",
                   "train_tokens_per_second", "val_loss_nats_per_token", "val_bits_per_character",
                   "val_story_bits_per_character"]
# With more runs than this, each run is compared with the base run only, not every pair.
ALL_PAIRS_UP_TO = 4


@dataclass(frozen=True)
class Figure:
    column: str
    label: str
    higher_is_better: bool
    bounds: tuple[float, float] = (0.0, math.inf)  # the range its values and intervals stay in


RATE = (0.0, 1.0)
BPC = Figure("val_story_bits_per_character", "val bits per character, whole stories", higher_is_better=False)
CONSISTENT = Figure("consistent_rate", "stories the builtin-world checker passes", higher_is_better=True, bounds=RATE)
CHECKER_ELSEWHERE = Figure("builtin_world_checker_rate", "builtin-world checker (uncalibrated on this corpus)",
                           higher_is_better=True, bounds=RATE)
FINISHED = Figure("finished_rate", "stories that end with end-of-text", higher_is_better=True, bounds=RATE)
SPEED = Figure("train_tokens_per_second", "training tokens per second", higher_is_better=True)
FIGURES = (BPC, CONSISTENT, CHECKER_ELSEWHERE, FINISHED, SPEED)


def passes(metrics: dict, fraction: str) -> tuple[int, int]:
    """(stories that pass, stories) of a sample figure given as a fraction of num_samples."""
    figures = metrics["sample_figures"]
    return round(figures[fraction] * figures["num_samples"]), figures["num_samples"]


def checker_figure(metrics: dict) -> Figure:
    return CONSISTENT if metrics.get("corpus_source", "builtin") == "builtin" else CHECKER_ELSEWHERE


def training_values(metrics: dict) -> dict[str, float]:
    """Each headline figure of one training (a rate as its fraction)."""
    consistent, samples = passes(metrics, "consistent_fraction")
    finished, _ = passes(metrics, "finished_fraction")
    return {BPC.column: metrics["val_story_bits_per_character"], checker_figure(metrics).column: consistent / samples,
            FINISHED.column: finished / samples, SPEED.column: metrics["train_tokens_per_second"]}


# ---------------------------------------------------------------------------
# runs_by_seed.tsv


def by_seed_table(trainings: list[dict]) -> pd.DataFrame:
    rows = []
    for m in trainings:
        row = {key: m.get(key) for key in BY_SEED_COLUMNS}
        row["differs_from_base"] = describe_differences(m["differs_from_base"])
        row.update({f"sample.{k}": v for k, v in numeric_figures(m["sample_figures"]).items()})
        row.update({f"hash.{stage}": h for stage, h in m["stage_hashes"].items()})
        row["export_dir"] = m["export_dir"]
        rows.append(row)
    return pd.DataFrame(rows)


def describe_differences(differences: dict) -> str:
    return "; ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in differences.items()) or "(base)"


# ---------------------------------------------------------------------------
# The runs: seed spreads, story noise, intervals


class Runs:
    """The trainings grouped by run (in table order), with each figure's pooled seed spread."""

    def __init__(self, trainings: list[dict], stories: dict[tuple[str, int], pd.DataFrame]):
        self.trainings = trainings
        self.stories = stories
        self.names = list(dict.fromkeys(m["run"] for m in trainings))
        self.of = {run: [m for m in trainings if m["run"] == run] for run in self.names}
        self.values = {run: [training_values(m) for m in self.of[run]] for run in self.names}
        self.spread = {figure.column: stats.SeedSpread.pooled(
            [[v[figure.column] for v in self.values[run] if figure.column in v] for run in self.names])
            for figure in FIGURES}

    def series(self, run: str, figure: Figure) -> list[float]:
        return [v[figure.column] for v in self.values[run] if figure.column in v]

    def story_nats(self, run: str) -> tuple[np.ndarray, np.ndarray] | None:
        """Each val story's nats averaged over the run's seeds, and its characters (None without scores)."""
        tables = [self.stories.get((run, m["seed"])) for m in self.of[run]]
        if any(table is None for table in tables):
            return None
        nats = np.mean([table["nats"].to_numpy() for table in tables], axis=0)
        return nats, tables[0]["characters"].to_numpy(dtype=float)

    def story_se(self, run: str) -> tuple[float | None, int]:
        """The val stories' standard error of the run's bits per character, and its degrees of freedom."""
        found = self.story_nats(run)
        if not found:
            return None, 0
        return stats.ratio_se(found[0] / math.log(2), found[1]), len(found[1]) - 1

    def paired_story_se(self, a: str, b: str) -> tuple[float | None, int]:
        """The val stories' share of the noise of a difference in bits per character: paired story by story
        when both runs scored the same stories (one corpus), else the two runs' own added."""
        found_a, found_b = self.story_nats(a), self.story_nats(b)
        if found_a is None or found_b is None:
            return None, 0
        same = (self.of[a][0]["stage_hashes"].get("corpus") == self.of[b][0]["stage_hashes"].get("corpus")
                and len(found_a[1]) == len(found_b[1]))
        if same:
            return stats.ratio_se((found_a[0] - found_b[0]) / math.log(2), found_a[1]), len(found_a[1]) - 1
        (se_a, df_a), (se_b, df_b) = self.story_se(a), self.story_se(b)
        return math.hypot(se_a, se_b), min(df_a, df_b)

    def interval(self, run: str, figure: Figure) -> stats.Interval | None:
        values = self.series(run, figure)
        if not values:
            return None
        spread = self.spread[figure.column]
        if figure is BPC:
            return stats.run_interval(values, spread, *self.story_se(run), bounds=figure.bounds)
        if figure in (CONSISTENT, CHECKER_ELSEWHERE, FINISHED) and not spread.measured:
            fraction = "finished_fraction" if figure is FINISHED else "consistent_fraction"
            counts = [passes(m, fraction) for m in self.of[run]]
            return stats.proportion_interval(sum(k for k, _ in counts), sum(n for _, n in counts))
        return stats.run_interval(values, spread, bounds=figure.bounds)

    def table(self) -> pd.DataFrame:
        rows = []
        for run in self.names:
            first = self.of[run][0]
            row = {"run": run, "differs_from_base": describe_differences(first["differs_from_base"]),
                   "n_seeds": len(self.of[run]), "seeds": " ".join(str(m["seed"]) for m in self.of[run]),
                   "parameters": first.get("parameters")}
            for figure in FIGURES:
                interval = self.interval(run, figure)
                if interval is None:
                    continue
                row.update({figure.column: interval.mean, f"{figure.column}_lo": interval.lo,
                            f"{figure.column}_hi": interval.hi})
            row["val_bits_per_character_windows"] = float(np.mean([m["val_bits_per_character"] for m in self.of[run]]))
            row["noise"] = stats.SEEDS_AND_SAMPLES if self.spread[BPC.column].measured else stats.NO_SEED_SPREAD
            rows.append(row)
        return pd.DataFrame(rows)

    # -----------------------------------------------------------------------
    # Verdicts

    def pairs(self) -> list[tuple[str, str]]:
        if len(self.names) <= ALL_PAIRS_UP_TO:
            return list(itertools.combinations(self.names, 2))
        base = next((run for run in self.names if not self.of[run][0]["differs_from_base"]), self.names[0])
        return [(run, base) for run in self.names if run != base]

    def verdict(self, a: str, b: str, figure: Figure, pairs: int) -> stats.Verdict | None:
        values_a, values_b = self.series(a, figure), self.series(b, figure)
        if not values_a or not values_b:
            return None
        story_se, story_df = self.paired_story_se(a, b) if figure is BPC else (None, 0)
        return stats.compare(values_a, values_b, self.spread[figure.column], figure.higher_is_better, pairs, story_se,
                             story_df)

    def verdicts(self) -> pd.DataFrame:
        pairs = self.pairs()
        rows = []
        for figure in FIGURES:
            if figure is CHECKER_ELSEWHERE:
                continue  # uncalibrated off the builtin corpus: no verdict
            for a, b in pairs:
                found = self.verdict(a, b, figure, len(pairs))
                if found is None:
                    continue
                rows.append({"figure": figure.column, "better_is": "higher" if figure.higher_is_better else "lower",
                             "run_a": a, "run_b": b, "mean_a": float(np.mean(self.series(a, figure))),
                             "mean_b": float(np.mean(self.series(b, figure))), "difference": found.difference,
                             "difference_lo": found.lo, "difference_hi": found.hi, "verdict": found.verdict,
                             "n_seeds_a": len(self.of[a]), "n_seeds_b": len(self.of[b]), "noise": found.noise})
        return pd.DataFrame(rows, columns=["figure", "better_is", "run_a", "run_b", "mean_a", "mean_b", "difference",
                                           "difference_lo", "difference_hi", "verdict", "n_seeds_a", "n_seeds_b",
                                           "noise"])


# ---------------------------------------------------------------------------
# In a terminal


def fmt(value: float | None, figure: Figure, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    digits = 0 if figure is SPEED else (4 if figure is BPC else 3)
    return f"{value:{'+' if signed else ''},.{digits}f}"


def bracket(lo, hi, figure: Figure, signed: bool = False) -> str:
    return "" if lo is None else f" [{fmt(lo, figure, signed)}, {fmt(hi, figure, signed)}]"


def summary_lines(runs: Runs, a: str, b: str) -> list[str]:
    """A few lines a person reads at a glance: each figure for both runs, the difference and the verdict."""
    pairs = max(len(runs.pairs()), 1)
    spread = runs.spread[BPC.column]
    lines = [f"A = {a} (seeds {' '.join(str(m['seed']) for m in runs.of[a])}),"
             f" B = {b} (seeds {' '.join(str(m['seed']) for m in runs.of[b])}); 95% intervals"
             + (f", seed spread pooled over {len(runs.names)} runs ({spread.df} df), {pairs} pairs in the table"
                if spread.measured else "; seed spread not measured: give the runs seeds to rank them")]
    for figure in FIGURES:
        verdict = runs.verdict(a, b, figure, pairs)
        if verdict is None:
            continue
        ia, ib = runs.interval(a, figure), runs.interval(b, figure)
        word = "no verdict (uncalibrated)" if figure is CHECKER_ELSEWHERE else verdict.verdict
        lines.append(f"{figure.label} ({'higher' if figure.higher_is_better else 'lower'} is better):"
                     f" A {fmt(ia.mean, figure)}{bracket(ia.lo, ia.hi, figure)}"
                     f"  B {fmt(ib.mean, figure)}{bracket(ib.lo, ib.hi, figure)}"
                     f"  A-B {fmt(verdict.difference, figure, True)}{bracket(verdict.lo, verdict.hi, figure, True)}"
                     f"  {word}")
    return lines
