"""Runs: several configs in one workflow, sharing every folder they can, compared side by side.

The unit tests resolve configs with storylm.plan.runs; the slow ones run the real snakemake on two
tiny runs and then change the runs: added, renamed, removed, duplicated, broken.
"""

from __future__ import annotations

import copy
import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO, copy_workflow, dry_run_jobs, load_json, snakemake, tiny_config, write_config
from storylm import report
from storylm.io.jsonl import write_texts
from storylm.plan import stages
from storylm.plan.runs import RunError, plan, resolve
from storylm.results.comparison import Runs
from storylm.stories.storygen import generate_stories


def with_runs(runs: dict) -> dict:
    config = tiny_config()
    config["runs"] = runs
    return config


def test_no_runs_is_one_run_named_default():
    base, runs = resolve(tiny_config())
    assert list(runs) == ["default"]
    assert runs["default"] == base


def test_overrides_are_deep_merged_into_the_base():
    _, runs = resolve(with_runs({"small": {}, "deep": {"model_config": {"n_layer": 2}}}))
    assert list(runs) == ["small", "deep"]
    assert runs["deep"]["model_config"]["n_layer"] == 2 and runs["small"]["model_config"]["n_layer"] == 1
    # Everything else of model_config comes from the base.
    assert runs["deep"]["model_config"]["n_embd"] == runs["small"]["model_config"]["n_embd"] == 32


@pytest.mark.parametrize(
    "override, message",
    [
        ({"model_config": {"n_embd": "wide"}}, "runs.wide.model_config.n_embd: 'wide' is not of type 'integer'"),
        ({"train": {"max_seq_length": 128}},
         "runs.wide.train.max_seq_length: 128 exceeds model_config.block_size 64"),
        ({"modle_config": {"n_embd": 64}},
         "runs.wide: Additional properties are not allowed ('modle_config' was unexpected)"),
        ({"model_config": {"vocab_size": 10}},
         "runs.wide.model_config.vocab_size: 10 is smaller than the tokenizer's 400 token ids"),
    ],
)
def test_an_error_names_the_run_and_the_key(override, message):
    with pytest.raises(RunError) as error:
        resolve(with_runs({"base": {}, "wide": override}))
    assert str(error.value) == message


def test_a_run_that_sets_only_the_learning_rate_keeps_the_other_optimizer_defaults():
    # The base sets no optimizer at all, as config/config.yaml: each init_args key has its own default.
    config = {"corpus": {"source": "builtin"}, "runs": {"base": {}, "hot": {"optimizer": {"init_args": {"lr": 0.01}}}}}
    _, runs = resolve(config)
    assert runs["base"]["optimizer"]["init_args"] == {"lr": 0.003, "weight_decay": 0.1, "betas": [0.9, 0.95]}
    assert runs["hot"]["optimizer"]["init_args"] == {"lr": 0.01, "weight_decay": 0.1, "betas": [0.9, 0.95]}


def test_a_run_name_must_be_plain():
    with pytest.raises(RunError, match=r"^runs\.two words: a run name may hold only letters, digits, _ \. and -$"):
        resolve(with_runs({"two words": {}}))


def test_command_line_strings_are_coerced_to_the_schema_types():
    # What `snakemake --config "model_config={n_layer: 2, n_head: 4}"` hands over (YAML BaseLoader: strings).
    config = tiny_config()
    config["model_config"].update(n_layer="2", n_head="4", bias="false")
    config["train"]["max_tokens"] = "null"
    config["train"]["epochs"] = "1.5"
    config["optimizer"]["init_args"]["lr"] = "0.01"
    config["runs"] = {"deeper": {"model_config": {"n_layer": "3"}}}
    _, runs = resolve(config)
    model = runs["deeper"]["model_config"]
    assert (model["n_layer"], model["n_head"], model["bias"]) == (3, 4, False)
    assert runs["deeper"]["train"]["max_tokens"] is None and runs["deeper"]["train"]["epochs"] == 1.5
    assert runs["deeper"]["optimizer"]["init_args"]["lr"] == 0.01
    # A string where the schema wants a string stays one.
    assert runs["deeper"]["sample"]["prompts"] == tiny_config()["sample"]["prompts"]


def test_runs_share_the_folders_of_the_settings_they_share():
    p = plan(with_runs({
        "a": {},
        "wide": {"model_config": {"n_embd": 64}},
        "hot": {"sample": {"temperature": 1.0}},
        "same": {},
    }))
    h = {run: p.run_hashes(run) for run in p.runs}
    for stage in ("corpus", "tokenizer", "shards"):
        assert len({h[run][stage] for run in h}) == 1, stage
    assert h["wide"]["pretrain"] != h["a"]["pretrain"] == h["hot"]["pretrain"]
    assert h["hot"]["sample"] != h["a"]["sample"]
    assert h["same"] == h["a"]
    # One entry, so one Snakemake job, per distinct folder.
    assert {stage: len(by_hash) for stage, by_hash in p.stages.items()} == {
        "corpus": 1, "tokenizer": 1, "shards": 1, "pretrain": 2, "evaluate": 2, "sample": 3, "export": 3}
    assert p.stage("pretrain", h["a"]["pretrain"]).runs == ["a", "hot", "same"]


# ---------------------------------------------------------------------------
# The real snakemake over two tiny runs

TWO_RUNS = {"one": {}, "two": {"model_config": {"n_layer": 2}}}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("runs") / "wf")
    config = with_runs(copy.deepcopy(TWO_RUNS))
    write_config(workdir, config)
    # One job list for both runs: each shared stage once, each pretraining once.
    assert dry_run_jobs(workdir, "--cores", "2") == {
        "corpus": 1, "tokenizer": 1, "shards": 1, "pretrain_config": 2, "pretrain": 2, "evaluate": 2,
        "sample_prompts": 2, "sample": 2, "export": 2, "run_results": 2, "compare_runs": 1, "all_samples": 1, "all": 1}
    snakemake(workdir, "--cores", "2")
    return workdir, config


@pytest.mark.slow
def test_every_run_has_its_results_and_the_table_compares_them(two_runs):
    workdir, config = two_runs
    by_seed = pd.read_csv(workdir / "results/runs_by_seed.tsv", sep="\t")
    table = pd.read_csv(workdir / "results/runs.tsv", sep="\t")
    assert list(by_seed["run"]) == list(table["run"]) == ["one", "two"]
    assert list(by_seed["seed"]) == [42, 42] and list(table["n_seeds"]) == [1, 1]
    assert list(table["differs_from_base"]) == ["(base)", "model_config.n_layer=2"]
    for run in ("one", "two"):
        metrics = load_json(workdir / f"results/runs/{run}/seed-42/metrics.json")
        row, mean = by_seed.set_index("run").loc[run], table.set_index("run").loc[run]
        assert row["val_bits_per_character"] == pytest.approx(metrics["val_bits_per_character"], rel=1e-5)
        assert mean["val_story_bits_per_character"] == pytest.approx(metrics["val_story_bits_per_character"], rel=1e-5)
        assert row["hash.pretrain"] == metrics["stage_hashes"]["pretrain"]
        # 12 steps of 4 sequences of 64 tokens, as train.max_tokens asks.
        assert metrics["train_tokens"] == row["train_tokens"] == 12 * 4 * 64
        assert metrics["train_flops"] == pytest.approx(metrics["flops_per_token"] * 12 * 4 * 64)
        assert (workdir / f"results/runs/{run}/seed-42/loss.png").read_bytes()[:4] == b"\x89PNG"
        resolved = (workdir / f"results/runs/{run}/seed-42/config.yaml").read_text()
        assert f"n_layer: {2 if run == 'two' else 1}\n" in resolved
    assert by_seed.loc[1, "parameters"] > by_seed.loc[0, "parameters"]
    assert by_seed.loc[1, "train_flops"] > by_seed.loc[0, "train_flops"]
    # One seed each: no seed spread, so no verdict can be given, and the tables say why.
    verdicts = pd.read_csv(workdir / "results/verdicts.tsv", sep="\t")
    assert set(verdicts["verdict"]) == {"cannot tell"} and verdicts["noise"].str.contains("not measured").all()
    assert table["noise"].str.contains("seed variance not measured").all()
    samples = (workdir / "results/samples.txt").read_text(encoding="utf-8")
    assert samples.index("# run: one") < samples.index("# run: two")
    assert (workdir / "results/compare.png").read_bytes()[:4] == b"\x89PNG"
    # With two runs there is no single results/metrics.json.
    assert not (workdir / "results/metrics.json").exists()


@pytest.mark.slow
def test_adding_a_run_plans_only_its_new_jobs(two_runs):
    workdir, config = two_runs
    write_config(workdir, with_runs({**TWO_RUNS, "hot": {"sample": {"temperature": 1.0}}}))
    try:
        assert dry_run_jobs(workdir) == {"sample_prompts": 1, "sample": 1, "export": 1, "run_results": 1, "compare_runs": 1,
                                         "all_samples": 1, "all": 1}
    finally:
        write_config(workdir, config)


@pytest.mark.slow
def test_renaming_or_removing_a_run_trains_nothing(two_runs):
    workdir, config = two_runs
    try:
        write_config(workdir, with_runs({"one": {}, "deeper": TWO_RUNS["two"]}))
        assert dry_run_jobs(workdir) == {"run_results": 1, "compare_runs": 1, "all_samples": 1, "all": 1}
        write_config(workdir, with_runs({"one": {}}))
        assert dry_run_jobs(workdir) == {"compare_runs": 1, "all_samples": 1, "single_run": 1, "all": 1}
        # Two runs with equal resolved configs share every folder.
        write_config(workdir, with_runs({**TWO_RUNS, "one_again": {"model_config": {"n_layer": 1}}}))
        assert dry_run_jobs(workdir) == {"run_results": 1, "compare_runs": 1, "all_samples": 1, "all": 1}
    finally:
        write_config(workdir, config)


@pytest.mark.slow
def test_a_nested_number_from_the_command_line_is_the_same_run(two_runs):
    workdir, _ = two_runs
    # Snakemake hands "2" over as a string; coerced, it is run two's config exactly: nothing to do.
    assert dry_run_jobs(workdir, "--config", "runs={one: {}, two: {model_config: {n_layer: 2}}}") == {}
    assert dry_run_jobs(workdir, "--config", "model_config={n_embd: 64}") == {
        "pretrain_config": 2, "pretrain": 2, "evaluate": 2, "sample_prompts": 2, "sample": 2, "export": 2, "run_results": 2,
        "compare_runs": 1, "all_samples": 1, "all": 1}


@pytest.mark.slow
def test_with_keep_going_a_failing_run_does_not_stop_the_others(two_runs):
    workdir, config = two_runs
    runs = {**TWO_RUNS,
            # A validation batch larger than the whole val split: its pretrain_config job fails.
            "broken": {"train": {"micro_batch_size": 256, "global_batch_size": 256}},
            "reseeded": {"seed": 7}}
    write_config(workdir, with_runs(runs))
    try:
        result = snakemake(workdir, "--cores", "2", "--keep-going", check=False)
        assert result.returncode != 0
        assert (workdir / "results/runs/reseeded/seed-7/metrics.json").is_file()
        assert not (workdir / "results/runs/broken").exists()
        logs = "".join(p.read_text() for p in (workdir / "logs/pretrain_config").glob("*.log"))
        assert "error: corpus.split.val_size" in logs and "Traceback" not in logs
    finally:
        write_config(workdir, config)


CHROMIUM = shutil.which("chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000", "--virtual-time-budget=5000"]


def chromium(page: Path, *args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
                          capture_output=True, text=True, timeout=120, check=True)


def visible_text(dom: str) -> str:
    """What the page shows: the rendered DOM without its scripts (which embed every result as data)."""
    dom = re.sub(r"<script.*?</script>", " ", dom, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium to render the report: apt-get install chromium")
def test_the_report_shows_the_runs_table_first_in_a_browser(two_runs, tmp_path):
    workdir, _ = two_runs
    snakemake(workdir, "--report", "results/report.html")
    page = workdir / "results/report.html"
    screenshot = workdir / "results/report.png"
    chromium(page, f"--screenshot={screenshot}", profile=tmp_path / "profile1")
    assert screenshot.read_bytes()[:4] == b"\x89PNG"
    shown = visible_text(chromium(page, "--dump-dom", profile=tmp_path / "profile2").stdout)
    table = pd.read_csv(workdir / "results/runs.tsv", sep="\t")
    # The first page: the runs table, a row per run with its name and bits per character.
    start = shown.index("The runs compared")
    assert start < shown.index("1. Runs compared holds")
    rows = shown[start:shown.index("1. Runs compared holds")]
    for run, bpc, lo, hi in zip(table["run"], table["val_story_bits_per_character"],
                                table["val_story_bits_per_character_lo"], table["val_story_bits_per_character_hi"],
                                strict=True):
        assert re.search(rf"\b{run}\b .*?{bpc:.4f} \[{lo:.4f}, {hi:.4f}\]", rows), (run, bpc, rows)
    # One category per run, after the comparison.
    assert shown.index("1. Runs compared") < shown.index(" one ") and " two " in shown


@pytest.mark.slow
def test_clean_lists_every_folder_and_removes_only_the_unused(two_runs):
    workdir, config = two_runs
    env = {**os.environ, "PYTHONPATH": str(workdir / "workflow")}

    def clean(*args):
        return subprocess.run([sys.executable, "-m", "storylm.clean", *args], cwd=workdir, env=env,
                              capture_output=True, text=True, check=True).stdout

    hashes = {run: load_json(workdir / f"results/runs/{run}/seed-42/metrics.json")["stage_hashes"] for run in ("one", "two")}
    listing = clean()
    assert f"Data/shards/{hashes['one']['shards']}" in listing and "one, two" in listing
    assert f"results/pretrain/{hashes['two']['pretrain']}" in listing
    assert all(not line.endswith("(unused)") for line in listing.splitlines() if hashes["two"]["pretrain"] in line)
    # With run two gone from the config, its folders are listed as unused, then removed with --delete.
    only_one = with_runs({"one": {}})
    write_config(workdir, only_one)
    try:
        listing = clean()
        for stage in ("pretrain", "evaluate", "sample", "export"):
            line = next(line for line in listing.splitlines() if hashes["two"][stage] in line)
            assert line.endswith("(unused)"), line
        assert "results/runs/two" in listing and (workdir / f"results/pretrain/{hashes['two']['pretrain']}").is_dir()
        removed = clean("--delete")
        assert f"removed results/pretrain/{hashes['two']['pretrain']}" in removed
        assert not (workdir / f"results/pretrain/{hashes['two']['pretrain']}").exists()
        assert not (workdir / "results/runs/two").exists()
        # Run one's folders, shared ones included, are untouched: nothing for snakemake to redo but the gathering.
        for stage in ("corpus", "tokenizer", "shards", "pretrain", "evaluate", "sample", "export"):
            assert (workdir / stages.folder(stage, hashes["one"][stage])).is_dir(), stage
        assert dry_run_jobs(workdir) == {"compare_runs": 1, "all_samples": 1, "single_run": 1, "all": 1}
    finally:
        write_config(workdir, config)


@pytest.mark.parametrize("path", sorted((REPO / "config" / "sweeps").glob("*.yaml")), ids=lambda path: path.name)
def test_every_sweep_file_plans_its_runs_on_one_corpus(path):
    """Each file in config/sweeps/, as `--configfile` lays it over config/config.yaml, is valid and shares its data."""
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8")) or {}
    sweep = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert not set(base) & set(sweep), "a key in both files would need a deep merge here"
    sweep_plan = plan({**base, **sweep})
    assert list(sweep_plan.runs) == list(sweep["runs"])
    assert len({sweep_plan.run_hashes(run)["corpus"] for run in sweep_plan.runs}) == 1


def test_a_jobs_own_plan_skips_the_value_checks_and_never_imports_litgpt():
    """A Slurm job's snakemake plans again before it runs its one rule; the value checks build each
    model with litgpt (torch and lightning: 5-10 s of a job's time limit), which its main process did."""
    script = ("import sys; from storylm.plan.runs import load_config, plan;"
              " config = load_config(); config['model_config'] = {'n_embd': 64, 'n_head': 7};"  # 7 heads cannot split 64
              " plan(config, check_values=False); print(sorted(m for m in ('litgpt', 'torch', 'lightning')"
              " if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr
    with pytest.raises(RunError, match="model_config.n_head"):
        plan({**tiny_config(), "model_config": {"n_embd": 64, "n_head": 7}})


# ---------------------------------------------------------------------------
# The same two runs on a user's own corpus: what the card, the plot and the report show


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("local")
    folder = root / "my_stories"
    folder.mkdir()
    write_texts(folder / "stories.jsonl", [story["text"] for story in generate_stories(400, seed=77)])
    workdir = copy_workflow(root / "wf")
    config = with_runs(copy.deepcopy(TWO_RUNS))
    config["corpus"].update(source="local", local={"paths": [str(folder)]})
    write_config(workdir, config)
    snakemake(workdir, "--cores", "2")
    return workdir, config, folder


@pytest.mark.slow
def test_on_a_local_corpus_the_card_names_the_files_and_every_table_marks_the_checker(local_runs, tmp_path):
    from storylm.io.filehash import file_sha256

    workdir, _, folder = local_runs
    table = pd.read_csv(workdir / "results/runs.tsv", sep="\t")
    assert "builtin_world_checker_rate" in table and "consistent_rate" not in table
    first_page = pd.read_csv(workdir / "results/runs_summary.tsv", sep="\t")
    column = "builtin-world checker (uncalibrated on this corpus)"
    assert list(first_page.columns) == ["run", "differs from base", "seeds", "val bits/char", column]
    assert first_page[column].str.match(r"^0\.\d\d \[0\.\d\d, [01]\.\d\d\]$").all(), first_page[column]
    for run in ("one", "two"):
        export = Path(load_json(workdir / f"results/runs/{run}/seed-42/metrics.json")["export_dir"])
        card = (workdir / export / "README.md").read_text(encoding="utf-8")
        data = card.split("## Data\n")[1].split("\n## ")[0]
        assert f"- `stories.jsonl` sha256 `{file_sha256(folder / 'stories.jsonl')}`" in data
        assert "Corpus source" not in data and "A local corpus of 1 file," in data
        figures = card.split("Figures of the sampled stories")[1].split("\n## ")[0]
        rows = [line for line in figures.splitlines() if line.startswith("| consistency.")]
        assert rows and all("(uncalibrated on this corpus) |" in row for row in rows)
        assert "children's stories, pretrained" not in card
    # compare.png, drawn again from the same results: bars from zero, every title whole inside the picture.
    trainings, stories = report.read_trainings([workdir / f"results/runs/{run}/seed-42" for run in ("one", "two")])
    runs = Runs(trainings, stories)
    curves = {(m["run"], m["seed"]): pd.read_csv(workdir / f"results/runs/{m['run']}/seed-42/val_curve.tsv",
                                                 sep="\t") for m in trainings}
    seen = report.plot_comparison(runs, curves, runs.table(), tmp_path / "compare.png")
    assert [panel["title_inside"] for panel in seen] == [True, True, True], seen
    assert [panel["ylim_bottom"] for panel in seen[1:]] == [0.0, 0.0]
    assert "uncalibrated on this corpus" in seen[2]["title"].replace("\n", " ")
    assert (tmp_path / "compare.png").read_bytes() == (workdir / "results/compare.png").read_bytes()


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium to render the report: apt-get install chromium")
def test_on_a_local_corpus_the_reports_first_page_shows_the_verdicts_and_the_uncalibrated_checker(local_runs, tmp_path):
    workdir, _, _ = local_runs
    snakemake(workdir, "--report", "results/report.html")
    page = workdir / "results/report.html"
    chromium(page, f"--screenshot={workdir / 'results/report.png'}", profile=tmp_path / "profile1")
    shown = visible_text(chromium(page, "--dump-dom", profile=tmp_path / "profile2").stdout)
    first = shown[shown.index("The runs compared"):shown.index("1. Runs compared holds")]
    assert "builtin-world checker (uncalibrated on this corpus)" in first
    # The verdicts, each row as the page shows it: one seed a run, so no interval and "cannot tell".
    assert "The verdicts: which run is better" in first
    verdicts = pd.read_csv(workdir / "results/verdicts.tsv", sep="\t")
    assert set(verdicts["figure"]) == {"val_story_bits_per_character", "finished_rate", "train_tokens_per_second"}
    bpc = verdicts.set_index("figure").loc["val_story_bits_per_character"]
    assert (f"val bits per character, whole stories (lower is better) one two {bpc['difference']:+.4f}"
            " (no interval: one seed a run) cannot tell") in first, first
    assert first.split("every pair in verdicts.tsv")[1].count("cannot tell") == len(verdicts) == 3
