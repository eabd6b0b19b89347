"""Intervals and verdicts: how sure a run's figure is, and whether two runs really differ.

A run's figure moves for two reasons besides its settings:
- the training seed (weights' start and data order): measured as the spread of the figure over
  a run's seeds, pooled over every run of the table that has two or more (the usual pooled
  variance of an analysis of variance; it assumes nearby settings vary alike);
- the finite samples it is measured on: the val stories behind bits per character (a bootstrap
  over stories, paired when two runs share them), and the sampled stories behind a pass rate
  (inside the seed spread, since every seed samples its own stories).

An interval is a 95% t interval on those; with no seed spread measured (every run one seed)
it covers the samples only and says so, and a verdict is then `cannot tell`: one training per
setting cannot rank close settings. With several pairs in a table, each verdict's interval is
widened for the number of pairs (Bonferroni), so that the chance of any false verdict about a
figure stays at 5%. The statistics are scipy's (t quantiles, the bootstrap) and statsmodels'
(Wilson intervals), not formulas written here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
NO_SEED_SPREAD = "samples only: seed variance not measured (give runs two or more seeds)"
SEEDS_AND_SAMPLES = "seeds and samples"


@dataclass
class SeedSpread:
    """A figure's seed-to-seed variance, pooled over the runs with two or more seeds, and its degrees of freedom."""

    variance: float
    df: int

    @classmethod
    def pooled(cls, per_run: list[list[float]]) -> SeedSpread:
        groups = [np.asarray(values, dtype=float) for values in per_run if len(values) >= 2]
        df = sum(len(group) - 1 for group in groups)
        squares = sum(float(((group - group.mean()) ** 2).sum()) for group in groups)
        return cls(squares / df if df else math.nan, df)

    @property
    def measured(self) -> bool:
        return self.df > 0


def quantile(df: int, level: float = LEVEL) -> float:
    """The two-sided t quantile (the normal one without degrees of freedom)."""
    tail = 0.5 + level / 2
    return float(stats.t.ppf(tail, df)) if 0 < df < math.inf else float(stats.norm.ppf(tail))


@dataclass
class Interval:
    """A figure's estimate and its interval, which always contains the estimate and stays inside the figure's
    range: rounding in a formula can put a bound a hair past the estimate (Wilson's lower bound for 0 of 1,000
    is 2e-19, above the rate 0), and a t interval on a rate can reach below 0. A bound that cannot be computed
    (a bootstrap over identical stories) is None, not NaN."""

    mean: float
    lo: float | None
    hi: float | None
    noise: str
    lower: float = -math.inf  # the figure's range: [0, 1] for a rate
    upper: float = math.inf

    def __post_init__(self):
        if self.lo is None or self.hi is None or math.isnan(self.lo) or math.isnan(self.hi):
            self.lo = self.hi = None
            return
        self.lo = max(min(self.lo, self.mean), self.lower)
        self.hi = min(max(self.hi, self.mean), self.upper)


def combined(parts: list[tuple[float, float]]) -> tuple[float, float]:
    """(standard error, degrees of freedom) of a sum of independent variance parts (variance, df): the
    Welch-Satterthwaite approximation, so that a part known to many df (the stories) is not held to the
    few of the seeds."""
    parts = [(variance, df) for variance, df in parts if variance > 0]
    total = sum(variance for variance, _ in parts)
    if not parts:
        return 0.0, math.inf
    return math.sqrt(total), total ** 2 / sum(variance ** 2 / df for variance, df in parts)


def run_interval(values: list[float], spread: SeedSpread, sample_se: float | None = None,
                 sample_df: float = math.inf, bounds: tuple[float, float] = (-math.inf, math.inf)) -> Interval:
    """A run's mean over its seeds, with its interval: seed spread and, where given, the samples' standard
    error of the seed mean (val stories shared by the seeds, so it does not shrink with more seeds) with
    its degrees of freedom (stories - 1). bounds is the figure's range (the interval is cut to it)."""
    mean = float(np.mean(values))
    if spread.measured:
        se, df = combined([(spread.variance / len(values), spread.df), ((sample_se or 0.0) ** 2, sample_df)])
        half = quantile(df) * se
        return Interval(mean, mean - half, mean + half, SEEDS_AND_SAMPLES, *bounds)
    if sample_se is not None:
        half = quantile(0) * sample_se
        return Interval(mean, mean - half, mean + half, NO_SEED_SPREAD, *bounds)
    return Interval(mean, None, None, NO_SEED_SPREAD, *bounds)


def proportion_interval(successes: int, trials: int) -> Interval:
    """One seed's pass rate with its Wilson interval (the sampled stories' noise alone)."""
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(successes, trials, alpha=1 - LEVEL, method="wilson")
    return Interval(successes / trials, float(lo), float(hi), NO_SEED_SPREAD, 0.0, 1.0)


@dataclass
class Verdict:
    difference: float
    lo: float | None
    hi: float | None
    verdict: str  # better, worse or cannot tell: of the first run against the second
    noise: str


def compare(a: list[float], b: list[float], spread: SeedSpread, higher_is_better: bool, pairs: int = 1,
            sample_se: float | None = None, sample_df: float = math.inf) -> Verdict:
    """The first run against the second: mean difference, its interval (widened for `pairs` comparisons),
    and the verdict. sample_se is the standard error the samples add to the difference (sample_df its
    degrees of freedom)."""
    difference = float(np.mean(a) - np.mean(b))
    if not spread.measured:
        return Verdict(difference, None, None, "cannot tell", NO_SEED_SPREAD)
    se, df = combined([(spread.variance * (1 / len(a) + 1 / len(b)), spread.df), ((sample_se or 0.0) ** 2, sample_df)])
    half = quantile(df, 1 - (1 - LEVEL) / pairs) * se
    lo, hi = difference - half, difference + half
    if lo > 0 or hi < 0:
        verdict = "better" if (lo > 0) == higher_is_better else "worse"
    else:
        verdict = "cannot tell"
    return Verdict(difference, lo, hi, verdict, SEEDS_AND_SAMPLES)


def ratio_se(numerators: np.ndarray, denominators: np.ndarray) -> float | None:
    """Standard error of sum(numerators) / sum(denominators) over resampled items (a paired bootstrap).

    For bits per character: numerators are each story's nats / ln 2, denominators its characters.
    """
    if len(numerators) < 2:
        return None
    result = stats.bootstrap((np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)),
                             lambda n, c, axis=-1: n.sum(axis=axis) / c.sum(axis=axis), paired=True,
                             vectorized=True, n_resamples=2000, method="percentile",
                             random_state=np.random.default_rng(0))
    return float(result.standard_error)
