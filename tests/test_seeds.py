"""Seeds, intervals and verdicts: runs a user can rank (storylm.results.stats, storylm.results.comparison, storylm.compare).

The unit tests check the plan and the statistics on made-up numbers; the slow ones train the tiny
config under several seeds with the real snakemake and check that an A/A comparison cannot tell
and that a certain difference is seen.
"""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, copy_workflow, dry_run_jobs, load_json, snakemake, stage_hashes, tiny_config, write_config
from storylm.plan.runs import plan
from storylm.results import stats
from storylm.results.comparison import BPC, CHECKER_ELSEWHERE, CONSISTENT, FINISHED, Runs


def with_runs(runs: dict, **base) -> dict:
    config = tiny_config()
    config.update(base)
    config["runs"] = runs
    return config


# ---------------------------------------------------------------------------
# The plan


def test_each_seed_trains_once_and_shares_corpus_tokenizer_and_shards():
    the_plan = plan(with_runs({"a": {"seeds": [1, 2]}, "b": {"seeds": [3, 4]}}))
    assert the_plan.trainings() == [("a", 1), ("a", 2), ("b", 3), ("b", 4)]
    assert {stage: len(by_hash) for stage, by_hash in the_plan.stages.items()} == {
        "corpus": 1, "tokenizer": 1, "shards": 1, "pretrain": 4, "evaluate": 4, "sample": 4, "export": 4}


def test_a_seed_is_the_training_that_seed_alone_would_give():
    """seeds: [42] (or no seeds) is today's training: every folder a user has stays valid."""
    today = stage_hashes(tiny_config())
    assert plan(with_runs({"a": {"seeds": [42]}})).run_hashes("a") == today
    assert plan(with_runs({"a": {}})).run_hashes("a") == today
    assert plan(with_runs({"a": {"seed": 7}})).run_hashes("a") == plan(with_runs({"a": {"seeds": [7, 8]}})).run_hashes("a", 7)


def test_seeds_inside_a_run_override_the_top_level_list():
    the_plan = plan(with_runs({"a": {}, "b": {"seeds": [9]}}, seeds=[1, 2]))
    assert the_plan.seeds == {"a": [1, 2], "b": [9]}


# ---------------------------------------------------------------------------
# The statistics, on numbers whose answer is known


def test_the_seed_spread_is_pooled_over_runs_with_two_or_more_seeds():
    spread = stats.SeedSpread.pooled([[1.0, 3.0], [10.0, 12.0, 14.0], [5.0]])
    # (2 + 8) squared deviations over (1 + 2) degrees of freedom; the one-seed run adds nothing.
    assert (spread.variance, spread.df) == (pytest.approx(10 / 3), 3)
    assert not stats.SeedSpread.pooled([[1.0], [2.0]]).measured


def test_a_run_interval_is_a_t_interval_on_seed_spread_and_story_noise():
    from scipy.stats import t

    spread = stats.SeedSpread(variance=0.04, df=4)
    interval = stats.run_interval([1.0, 1.2, 1.4], spread, sample_se=0.05, sample_df=49)
    seeds, stories = 0.04 / 3, 0.05 ** 2
    df = (seeds + stories) ** 2 / (seeds ** 2 / 4 + stories ** 2 / 49)  # Welch-Satterthwaite
    half = t.ppf(0.975, df) * math.sqrt(seeds + stories)
    assert (interval.lo, interval.hi) == (pytest.approx(1.2 - half), pytest.approx(1.2 + half))
    assert (round(interval.lo, 6), round(interval.hi, 6)) == (0.887051, 1.512949)  # df = 5.62
    alone = stats.run_interval([1.0], stats.SeedSpread(math.nan, 0), sample_se=0.05)
    assert alone.noise == stats.NO_SEED_SPREAD and alone.hi - alone.lo == pytest.approx(2 * 1.959963984540054 * 0.05)


def test_a_pass_rate_of_one_seed_has_a_wilson_interval():
    interval = stats.proportion_interval(159, 300)
    assert (round(interval.lo, 4), round(interval.hi, 4)) == (0.4735, 0.5857)


def test_verdicts_need_a_measured_seed_spread_and_widen_with_the_pairs():
    spread = stats.SeedSpread(variance=1e-6, df=8)
    assert stats.compare([0.30, 0.301], [0.32, 0.321], spread, higher_is_better=False).verdict == "better"
    assert stats.compare([0.30, 0.301], [0.32, 0.321], spread, higher_is_better=True).verdict == "worse"
    assert stats.compare([0.30], [0.32], stats.SeedSpread(math.nan, 0), False).verdict == "cannot tell"
    one = stats.compare([0.300, 0.302], [0.3035, 0.3045], spread, higher_is_better=False, pairs=1)
    six = stats.compare([0.300, 0.302], [0.3035, 0.3045], spread, higher_is_better=False, pairs=6)
    assert one.verdict == "better" and six.verdict == "cannot tell" and six.hi - six.lo > one.hi - one.lo


def training(run: str, seed: int, bpc: float, consistent: int, finished: int, source: str = "builtin",
             samples: int = 100) -> dict:
    return {"run": run, "seed": seed, "differs_from_base": {}, "corpus_source": source,
            "stage_hashes": {"corpus": "c" * 10}, "val_story_bits_per_character": bpc, "val_bits_per_character": bpc,
            "train_tokens_per_second": 1000.0 + seed, "parameters": 10, "export_dir": "x",
            "train_tokens": 3072, "val_loss_nats_per_token": 6.0,
            "sample_figures": {"num_samples": samples, "consistent_fraction": consistent / samples,
                               "finished_fraction": finished / samples}}


def stories(bpc: float, count: int = 50, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    chars = rng.integers(100, 300, count)
    nats = chars * bpc * math.log(2) * rng.normal(1, 0.05, count)
    return pd.DataFrame({"story": range(count), "characters": chars, "tokens": chars // 2, "nats": nats,
                         "eos_nats": 0.1})


def test_the_runs_table_and_verdicts_on_known_numbers():
    trainings = [training("a", 1, 0.50, 60, 90), training("a", 2, 0.52, 62, 92),
                 training("b", 3, 0.80, 20, 50), training("b", 4, 0.82, 22, 52)]
    runs = Runs(trainings, {(m["run"], m["seed"]): stories(m["val_story_bits_per_character"], seed=m["seed"])
                            for m in trainings})
    table = runs.table().set_index("run")
    assert list(table["n_seeds"]) == [2, 2] and table.loc["a", "seeds"] == "1 2"
    assert table.loc["a", CONSISTENT.column] == pytest.approx(0.61)
    assert table.loc["a", f"{BPC.column}_lo"] < 0.51 < table.loc["a", f"{BPC.column}_hi"]
    verdicts = runs.verdicts().set_index("figure")
    assert verdicts.loc[BPC.column, "verdict"] == "better"  # lower bits per character
    assert verdicts.loc[CONSISTENT.column, "verdict"] == "better"
    assert verdicts.loc[FINISHED.column, "verdict"] == "better"
    assert verdicts.loc[BPC.column, "better_is"] == "lower"


WEAK_RUNS = {  # runs a first small experiment gives: rates of exactly 0 and 1, one or two seeds, tiny val sets
    "one seed, none of 1,000 pass": ([training("a", 1, 9.0, 0, 0, samples=1000)], 50),
    "one seed, all of 300 pass": ([training("a", 1, 0.3, 300, 300, samples=300)], 50),
    "one seed, one story each": ([training("a", 1, 9.0, 0, 1, samples=1)], 1),
    "two equal seeds of 0": ([training("a", 1, 9.0, 0, 0), training("a", 2, 9.0, 0, 0)], 2),
    "two seeds near 0 and 1": ([training("a", 1, 9.0, 0, 100), training("a", 2, 9.1, 1, 99)], 2),
    "two runs, one weak": ([training("a", 1, 0.5, 60, 90), training("a", 2, 0.52, 62, 92),
                            training("b", 3, 9.0, 0, 0), training("b", 4, 9.0, 0, 0)], 50),
}


@pytest.mark.parametrize("case", WEAK_RUNS)
def test_every_interval_contains_its_estimate_and_the_plot_draws_it(case, tmp_path):
    from storylm.report import plot_comparison
    from storylm.results.comparison import FIGURES

    trainings, story_count = WEAK_RUNS[case]
    runs = Runs(trainings, {(m["run"], m["seed"]): stories(m["val_story_bits_per_character"], story_count, m["seed"])
                            for m in trainings})
    table = runs.table()
    for figure in FIGURES:
        if figure.column not in table:
            continue
        low, high = figure.bounds
        for _, row in table.iterrows():
            lo, mean, hi = row[f"{figure.column}_lo"], row[figure.column], row[f"{figure.column}_hi"]
            assert pd.isna(lo) == pd.isna(hi), (figure.column, row["run"])
            if not pd.isna(lo):
                assert low <= lo <= mean <= hi <= high, (figure.column, row["run"], lo, mean, hi)
    if case.startswith("one seed, none"):  # Wilson's formula gives 2e-19 here, above the rate 0
        assert (table.loc[0, "consistent_rate_lo"], table.loc[0, "consistent_rate"]) == (0.0, 0.0)
        assert round(table.loc[0, "consistent_rate_hi"], 6) == 0.003827
    curves = {(m["run"], m["seed"]): pd.DataFrame({"train_tokens": [1024], "val_loss_nats_per_token": [7.0]})
              for m in trainings}
    seen = plot_comparison(runs, curves, table, tmp_path / "compare.png")
    assert (tmp_path / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # What a person sees: every title whole inside the picture, the bars of both value panels from zero.
    assert all(panel["title_inside"] for panel in seen), seen
    assert [panel["ylim_bottom"] for panel in seen[1:]] == [0.0, 0.0]


def test_the_reports_first_page_gives_each_verdict_in_a_row():
    from storylm.report import verdict_summary

    trainings, story_count = WEAK_RUNS["two runs, one weak"]
    runs = Runs(trainings, {(m["run"], m["seed"]): stories(m["val_story_bits_per_character"], story_count, m["seed"])
                            for m in trainings})
    verdicts = runs.verdicts()
    shown = verdict_summary(verdicts)
    bpc = verdicts.set_index("figure").loc["val_story_bits_per_character"]
    assert bpc["verdict"] == "better"  # run a's 0.51 bits per character against b's 9.0
    assert shown.iloc[0].tolist() == [
        "val bits per character, whole stories (lower is better)", "a", "b",
        f"{bpc['difference']:+.4f} [{bpc['difference_lo']:+.4f}, {bpc['difference_hi']:+.4f}]", "A better than B"]
    assert len(shown) == len(verdicts)
    assert verdict_summary(verdicts.iloc[:0]).iloc[0].tolist() == ["(one run: nothing to compare)", "", "", "", ""]


def test_off_the_builtin_corpus_the_checker_is_named_so_and_gives_no_verdict():
    trainings = [training("a", 1, 0.5, 60, 90, "local"), training("a", 2, 0.5, 61, 91, "local"),
                 training("b", 3, 0.6, 20, 90, "local"), training("b", 4, 0.6, 21, 91, "local")]
    runs = Runs(trainings, {})
    table = runs.table()
    assert CHECKER_ELSEWHERE.column in table and CONSISTENT.column not in table
    assert CHECKER_ELSEWHERE.column not in set(runs.verdicts()["figure"])


# ---------------------------------------------------------------------------
# The real snakemake: an A/A comparison, a certain difference, and a seed added

AA = {"a": {"seeds": [1, 2]}, "b": {"seeds": [3, 4]}}  # the same config under two names and other seeds


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("seeds") / "wf")
    write_config(workdir, with_runs(copy.deepcopy(AA)))
    jobs = dry_run_jobs(workdir, "--cores", "2")
    assert {rule: jobs[rule] for rule in ("corpus", "tokenizer", "shards", "pretrain")} == \
        {"corpus": 1, "tokenizer": 1, "shards": 1, "pretrain": 4}
    snakemake(workdir, "--cores", "2")
    return workdir


@pytest.mark.slow
def test_two_runs_of_two_seeds_give_tables_by_seed_and_by_run(seeded):
    by_seed = pd.read_csv(seeded / "results/runs_by_seed.tsv", sep="\t")
    table = pd.read_csv(seeded / "results/runs.tsv", sep="\t")
    assert list(zip(by_seed["run"], by_seed["seed"], strict=True)) == [("a", 1), ("a", 2), ("b", 3), ("b", 4)]
    assert list(table["n_seeds"]) == [2, 2]
    for run in ("a", "b"):
        row = table.set_index("run").loc[run]
        seeds = by_seed[by_seed["run"] == run]
        assert row[BPC.column] == pytest.approx(seeds[BPC.column].mean(), rel=1e-5)
        assert row[f"{BPC.column}_lo"] < row[BPC.column] < row[f"{BPC.column}_hi"]
    assert dry_run_jobs(seeded) == {}  # a rerun has nothing to do


@pytest.mark.slow
def test_the_same_config_under_two_names_cannot_be_told_apart(seeded):
    verdicts = pd.read_csv(seeded / "results/verdicts.tsv", sep="\t")
    quality = verdicts[verdicts["figure"] != "train_tokens_per_second"]
    assert set(quality["figure"]) == {BPC.column, CONSISTENT.column, FINISHED.column}
    assert list(zip(quality["run_a"], quality["run_b"], strict=True)) == [("a", "b")] * 3
    assert set(quality["verdict"]) == {"cannot tell"}, quality.to_string()


@pytest.mark.slow
def test_a_third_seed_plans_one_more_training_per_run(seeded):
    write_config(seeded, with_runs({"a": {"seeds": [1, 2, 5]}, "b": {"seeds": [3, 4, 6]}}))
    try:
        jobs = dry_run_jobs(seeded)
        assert {rule: jobs.get(rule) for rule in ("corpus", "shards", "pretrain", "evaluate", "sample", "export")} == \
            {"corpus": None, "shards": None, "pretrain": 2, "evaluate": 2, "sample": 2, "export": 2}
    finally:
        write_config(seeded, with_runs(copy.deepcopy(AA)))


@pytest.mark.slow
def test_a_certain_difference_gets_its_verdict_here_and_in_the_terminal(seeded):
    runs = {**AA, "barely": {"seeds": [1, 2], "train": {"max_tokens": 256, "lr_warmup_steps": 0}}}  # one step
    write_config(seeded, with_runs(runs))
    try:
        snakemake(seeded, "--cores", "2")
        verdicts = pd.read_csv(seeded / "results/verdicts.tsv", sep="\t")
        bpc = verdicts[verdicts["figure"] == BPC.column].set_index(["run_a", "run_b"])
        assert bpc.loc[("a", "barely"), "verdict"] == bpc.loc[("b", "barely"), "verdict"] == "better"
        assert bpc.loc[("a", "b"), "verdict"] == "cannot tell"
        env = {**os.environ, "PYTHONPATH": str(seeded / "workflow")}
        shown = subprocess.run([sys.executable, "-m", "storylm.compare", "barely", "a"], cwd=seeded, env=env,
                               capture_output=True, text=True, check=True).stdout.splitlines()
        assert shown[0].startswith("A = barely (seeds 1 2), B = a (seeds 1 2); 95% intervals, seed spread pooled")
        line = next(line for line in shown if line.startswith("val bits per character"))
        assert line.endswith("  worse") and "(lower is better)" in line
        metrics = load_json(seeded / "results/runs/barely/seed-1/metrics.json")
        assert metrics["environment"]["pretrain"][0]["torch_threads"] >= 1
    finally:
        write_config(seeded, with_runs(copy.deepcopy(AA)))


def test_compare_names_a_run_the_config_does_not_have(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    write_config(workdir, with_runs(copy.deepcopy(AA)))
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    result = subprocess.run([sys.executable, "-m", "storylm.compare", "a", "c"], cwd=workdir, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr == "error: c: not a run of this config (its runs: a, b)\n"
