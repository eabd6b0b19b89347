"""The real snakemake over a tiny config: every stage, then what reruns when the config changes."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import SNAKEMAKE_OUTPUT, copy_workflow, dry_run_jobs, load_json, snakemake, tiny_config, write_config
from storylm.model.precision import cpu_has_bf16, training_precision

pytestmark = pytest.mark.slow

# The jobs that gather a run's results (results/runs/<run>/, runs.tsv, samples.txt, metrics.json).
REPORT_JOBS = {"run_results": 1, "compare_runs": 1, "all_samples": 1, "single_run": 1, "all": 1}
STAGE_FOLDERS = ("Data/corpus", "Data/tokenizer", "Data/shards", "results/pretrain", "results/evaluate",
                 "results/sample")


def only_folder(workdir, parent):
    folders = [p for p in (workdir / parent).iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


def stage_mtimes(workdir):
    return {p: p.stat().st_mtime_ns for parent in STAGE_FOLDERS[:3] for p in (workdir / parent).rglob("*")
            if p.is_file()}


@pytest.fixture(scope="module")
def pipeline_run(tiny_local_run):
    return tiny_local_run


def test_every_stage_writes_its_hash_folder_with_its_config(pipeline_run):
    workdir, _ = pipeline_run
    metrics = load_json(workdir / "results/metrics.json")
    for parent in STAGE_FOLDERS:
        folder = only_folder(workdir, parent)
        record = load_json(folder / "config.json")
        stage = parent.split("/")[1]
        assert record["hash"] == folder.name == metrics["stage_hashes"][stage]
    assert set(load_json(only_folder(workdir, "Data/shards") / "config.json")["inputs"]) == {"corpus", "tokenizer"}


def test_outputs_are_what_a_person_reads(pipeline_run):
    workdir, config = pipeline_run
    samples = (workdir / "results/samples.txt").read_text(encoding="utf-8")
    metrics = load_json(workdir / "results/metrics.json")
    assert samples.startswith("# Stories sampled by the storylm pipeline")
    assert f"pretrain={metrics['stage_hashes']['pretrain']}" in samples
    for prompt in config["sample"]["prompts"]:
        assert f"Prompt: {prompt}" in samples
    assert samples.count("--- story") == len(config["sample"]["prompts"]) * config["sample"]["num_samples"]
    for key in ("val_loss_nats_per_token", "val_perplexity", "val_bits_per_character", "sample_figures"):
        assert key in metrics
    # The val metrics and the consistency scores are recomputed in the two tests below.
    # 12 optimizer steps of 4 x 64 tokens, as train.max_tokens asks.
    assert metrics["train_steps"] == config["train"]["max_tokens"] // (4 * 64)
    assert (workdir / "results/loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = only_folder(workdir, "results/pretrain")
    assert sorted(p.name for p in run.glob("step-*")) == ["step-00000004", "step-00000008", "step-00000012"]
    tokenizer_stats = load_json(only_folder(workdir, "Data/tokenizer") / "stats.json")
    # Golden figures of the tiny config's BPE (400 tokens on 360 builtin stories): 0.651 characters a token,
    # where byte-level BPE with no merges would give about 1/3 (3 bytes a Chinese character).
    assert (tokenizer_stats["val_characters"], tokenizer_stats["val_tokens"]) == (7670, 11781)
    assert tokenizer_stats["characters_per_token"] == 7670 / 11781 and tokenizer_stats["unknown_token_rate"] == 0


def test_the_terminal_shows_each_job_briefly_and_its_progress(pipeline_run):
    """What snakemake printed: no job's record (a kilobyte of JSON each), one progress line per long
    stage at its end (in a log: a few seconds' stage prints its last line only), blocks that fit a screen."""
    workdir, config = pipeline_run
    output = (workdir.parent / SNAKEMAKE_OUTPUT).read_text(encoding="utf-8")
    assert "--record" not in output and '"config": {' not in output
    jobs = output.split("\nlocalrule ")[1:]
    assert len(jobs) >= 10 and max(len(job.splitlines()) for job in jobs) <= 24, output  # a 24-line terminal
    steps = config["train"]["max_tokens"] // (4 * 64)
    pretrain = only_folder(workdir, "results/pretrain")
    last_loss = [line for line in (pretrain / "train.log").read_text().splitlines() if line.startswith("Epoch")][-1]
    loss = last_loss.split("loss train: ")[1].split(",")[0]
    training = [line for line in output.splitlines() if line.startswith("pretrain: ")]
    assert training[-1].startswith(f"pretrain: {steps}/{steps} steps (100%) | loss {loss} | "), training
    assert " tokens/s | " in training[-1]
    val_stories = load_json(workdir / "results/metrics.json")["val_stories_scored"]  # as many as evaluate.max_tokens
    for ending in ("shards: 2/2 splits (100%) | val: ", f"evaluate: {val_stories}/{val_stories} val stories (100%)",
                   "sample: 4/4 stories (100%)"):
        assert any(line.startswith(ending) for line in output.splitlines()), ending
    # The record is the first line of each stage job's log, in plain characters.
    evaluate = only_folder(workdir, "results/evaluate")
    first = (workdir / "logs/evaluate" / f"{evaluate.name}.log").read_text(encoding="utf-8").splitlines()[0]
    written = load_json(evaluate / "config.json")  # the record, with the files it wrote and the folders it read
    assert first.startswith("record: ") and json.loads(first.removeprefix("record: ")) == \
        {key: value for key, value in written.items() if key not in ("files", "read")}


def test_the_throughput_in_the_train_log_is_tokens_over_training_time(pipeline_run):
    """litgpt 0.5.13 prints Tok/sec over a clock reading; the train log carries the corrected figure,
    the same one metrics.json holds."""
    workdir, config = pipeline_run
    pretrain = only_folder(workdir, "results/pretrain")
    lines = (pretrain / "train.log").read_text().splitlines()
    tok_sec = [line for line in lines if line.startswith("| - Tok/sec")]
    seconds = float([line for line in lines if line.startswith("| - Training Time")][0].split(":")[1].split()[0])
    assert len(tok_sec) == 1
    assert tok_sec[0] == (f"| - Tok/sec       : {config['train']['max_tokens'] / seconds:.2f} tok/s (storylm:"
                          f" {config['train']['max_tokens']:,} tokens of this part / {seconds:.2f} s;"
                          " litgpt 0.5.13 divides by a clock reading)")
    metrics = load_json(workdir / "results/metrics.json")
    assert metrics["train_tokens_per_second"] == round(config["train"]["max_tokens"] / seconds, 1)


def test_val_metrics_match_an_independent_evaluation(pipeline_run):
    """The final checkpoint scored here with litgpt and litdata directly, on the val windows the
    evaluate stage reads (in shard order, batches of evaluate.batch_size until evaluate.max_tokens)."""
    import math

    import torch
    from litdata import StreamingDataset, TokensLoader
    from litgpt import GPT, Config

    workdir, config = pipeline_run
    metrics = load_json(workdir / "results/metrics.json")
    checkpoint = only_folder(workdir, "results/pretrain") / "final"
    model = GPT(Config.from_file(checkpoint / "model_config.yaml"))
    state = torch.load(checkpoint / "lit_model.pth", map_location="cpu", weights_only=False)
    model.load_state_dict(state.get("model", state))
    model.eval()

    seq, batch_size = config["train"]["max_seq_length"], config["evaluate"]["batch_size"]
    shards = only_folder(workdir, "Data/shards")
    dataset = StreamingDataset(str(shards / "val"), item_loader=TokensLoader(block_size=seq + 1), shuffle=False)
    windows = torch.stack([dataset[i] for i in range(len(dataset))]).long()
    # Whole batches until max_tokens predicted tokens are reached (or the val windows run out).
    batches = math.ceil(config["evaluate"]["max_tokens"] / (batch_size * seq))
    windows = windows[: batches * batch_size]
    with torch.no_grad():
        logits = model(windows[:, :-1])
        nats = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), windows[:, 1:].flatten(),
                                                 reduction="sum").item()
    tokens = windows[:, 1:].numel()
    loss = nats / tokens
    assert metrics["val_tokens_scored"] == tokens
    assert metrics["val_loss_nats_per_token"] == pytest.approx(loss, rel=1e-5)
    assert metrics["val_perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)
    # Tokens per character from the corpus text itself: the val shards' tokens over the val stories' characters.
    val_texts = [json.loads(line)["text"] for line in
                 (only_folder(workdir, "Data/corpus") / "val.jsonl").read_text(encoding="utf-8").splitlines()]
    tokens_per_character = load_json(shards / "stats.json")["val_tokens"] / sum(map(len, val_texts))
    assert metrics["val_bits_per_character"] == pytest.approx(loss * tokens_per_character / math.log(2), rel=1e-5)


def test_consistency_is_the_fraction_of_consistent_samples(pipeline_run):
    from storylm.stories.consistency import check_story

    workdir, config = pipeline_run
    sample_dir = only_folder(workdir, "results/sample")
    samples = load_json(sample_dir / "samples.json")
    scores = load_json(sample_dir / "consistency.json")
    # Every drawn story is scored: num_figure_samples of them (at least one per shown story).
    assert len(samples) == scores["num_samples"] == config["sample"]["num_figure_samples"]
    assert load_json(workdir / "results/metrics.json")["sample_figures"]["consistent_fraction"] == \
        scores["consistent_fraction"]
    for sample in samples:  # the saved verdicts are the checker's on the saved text
        assert sample["check"] == check_story(sample["text"], sample["prompt"])
    rules = [key.removesuffix("_fraction") for key in scores if key.endswith("_fraction")]
    assert "consistent" in rules and len(rules) > 1
    for rule in rules:
        verdicts = [sample["check"][rule] for sample in samples]
        assert scores[f"{rule}_fraction"] == sum(verdicts) / len(verdicts), rule


def test_the_rendered_litgpt_config_is_complete(pipeline_run):
    workdir, config = pipeline_run
    rendered = yaml.safe_load((only_folder(workdir, "results/pretrain") / "pretrain.yaml").read_text())
    assert rendered["resume"] == "auto"
    assert rendered["data"]["class_path"] == "litgpt.data.LitData"
    assert rendered["model_config"]["vocab_size"] == config["tokenizer"]["vocab_size"]
    for key, value in config["train"].items():
        if value is not None and key != "epochs":
            assert rendered["train"][key] == value, key
    assert rendered["optimizer"] == config["optimizer"]
    # litgpt's own parser accepts it: the same file a user reruns by hand.
    from jsonargparse import ArgumentParser
    from litgpt.pretrain import setup

    parser = ArgumentParser()
    parser.add_function_arguments(setup)
    parser.parse_path(str(only_folder(workdir, "results/pretrain") / "pretrain.yaml"))


def test_same_checkpoint_settings_and_seed_give_the_same_stories(pipeline_run, tmp_path):
    workdir, _ = pipeline_run
    sample_dir = only_folder(workdir, "results/sample")
    record = (sample_dir / "config.json").read_text()
    run = only_folder(workdir, "results/pretrain")
    inputs = {"final model": str(run / "final/lit_model.pth"),
              "train split": str(only_folder(workdir, "Data/corpus") / "train.jsonl")}
    subprocess.run([sys.executable, "-m", "storylm.sample", "stories", "--record", record, "--hashes", "{}",
                    "--inputs", json.dumps(inputs), "--out", str(tmp_path)], check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(workdir / "workflow")})
    again = [s["text"] for s in load_json(tmp_path / "samples.json")]
    assert again == [s["text"] for s in load_json(sample_dir / "samples.json")]


def test_reruns_follow_the_config(pipeline_run):
    workdir, config = pipeline_run
    try:
        check_reruns(workdir, config)
    finally:
        write_config(workdir, config)


def check_reruns(workdir, config):
    # Nothing changed: nothing to do.
    assert dry_run_jobs(workdir) == {}

    # A sampling setting reruns sampling and the final copy only.
    hotter = copy.deepcopy(config)
    hotter["sample"]["temperature"] = 1.2
    write_config(workdir, hotter)
    assert dry_run_jobs(workdir) == {"sample_prompts": 1, "sample": 1, "export": 1, **REPORT_JOBS}

    # A model setting reruns pretraining and what reads it, not corpus, tokenizer or shards.
    wider = copy.deepcopy(config)
    wider["model_config"]["n_embd"] = 64
    wider["model_config"]["head_size"] = 32
    write_config(workdir, wider)
    assert dry_run_jobs(workdir) == {"pretrain_config": 1, "pretrain": 1, "evaluate": 1, "sample_prompts": 1,
                                     "sample": 1, "export": 1, **REPORT_JOBS}

    # Run the sampling change for real, then switch back: the earlier folders are reused.
    try:
        write_config(workdir, hotter)
        snakemake(workdir, "--cores", "2")
        assert len(list((workdir / "results/sample").iterdir())) == 2
    finally:
        write_config(workdir, config)
    assert dry_run_jobs(workdir) == REPORT_JOBS
    snakemake(workdir, "--cores", "2")
    assert dry_run_jobs(workdir) == {}


def test_key_order_in_yaml_changes_nothing(pipeline_run):
    workdir, config = pipeline_run
    reordered = {key: config[key] for key in reversed(list(config))}
    write_config(workdir, reordered)
    try:
        assert dry_run_jobs(workdir) == {}
    finally:
        write_config(workdir, config)


def test_a_failing_stage_leaves_earlier_outputs_untouched(pipeline_run):
    workdir, config = pipeline_run
    before = stage_mtimes(workdir)
    # A validation batch larger than the whole val split: the pretrain config stage refuses it.
    broken = copy.deepcopy(config)
    broken["train"].update(micro_batch_size=256, global_batch_size=256)
    write_config(workdir, broken)
    try:
        result = snakemake(workdir, "--cores", "2", check=False)
        assert result.returncode != 0
        logs = "".join(p.read_text() for p in (workdir / "logs/pretrain_config").glob("*.log"))
        assert "corpus.split.val_size" in logs and "fewer than one validation batch" in logs
        assert stage_mtimes(workdir) == before
    finally:
        write_config(workdir, config)


@pytest.mark.parametrize(
    "change, key",
    [
        (lambda c: c["model_config"].update(vocab_size=100), "model_config.vocab_size"),
        (lambda c: c["corpus"]["split"].update(val_size=400), "corpus.split.val_size"),
        (lambda c: c["sample"].update(prompts=[]), "prompts"),
        (lambda c: c["train"].update(warmup=3), "warmup"),
        (lambda c: c["model_config"].update(n_layer="two"), "n_layer"),
    ],
)
def test_an_invalid_config_stops_before_any_job(tmp_path, change, key):
    workdir = copy_workflow(tmp_path / "wf")
    config = tiny_config()
    change(config)
    write_config(workdir, config)
    result = snakemake(workdir, "--cores", "1", check=False)
    assert result.returncode != 0
    assert key in result.stdout + result.stderr
    assert not (workdir / "Data").exists() and not (workdir / "results").exists()


def test_the_default_target_finishes_on_a_model_that_learns_nothing(tmp_path):
    """A first small experiment: the tiny config at a learning rate too small to move the weights. Its
    stories all fail the checker, and 6 of them is a sample size where Wilson's formula puts the lower
    bound a rounding error above the rate 0: the runs table, the plot, the report and the export still
    come out, and the table's interval contains its estimate."""
    import pandas as pd

    workdir = copy_workflow(tmp_path / "wf")
    config = tiny_config()
    config["optimizer"]["init_args"]["lr"] = 1e-12
    config["sample"]["num_figure_samples"] = 6
    config["precision"] = "auto"  # the embedded default's: this machine's choice, made where it trains
    write_config(workdir, config)
    snakemake(workdir, "--cores", "2")
    pretrain = only_folder(workdir, "results/pretrain")
    assert yaml.safe_load((pretrain / "pretrain.yaml").read_text())["precision"] is None  # litgpt: "pick one"
    [part] = load_json(pretrain / "environment.json")
    assert part["precision"] == training_precision() == ("bf16-mixed" if cpu_has_bf16() else "32-true")
    amp = "Using bfloat16 Automatic Mixed Precision (AMP)" in (pretrain / "train.log").read_text()
    assert amp == (part["precision"] == "bf16-mixed")  # what Lightning trained in
    runs = pd.read_csv(workdir / "results/runs.tsv", sep="\t")
    assert (runs.loc[0, "consistent_rate_lo"], runs.loc[0, "consistent_rate"]) == (0.0, 0.0)
    assert round(runs.loc[0, "consistent_rate_hi"], 4) == 0.3903  # Wilson's upper bound for 0 of 6
    assert (workdir / "results/compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = load_json(workdir / "results/metrics.json")
    assert metrics["sample_figures"]["num_samples"] == 6
    assert (workdir / metrics["export_dir"] / "config.json").is_file()
    card = (workdir / metrics["export_dir"] / "README.md").read_text()
    assert f"| precision | auto: {part['precision']} |" in card.splitlines()  # what it trained in


def test_jobs_import_the_workflows_own_package_without_an_inherited_pythonpath(pipeline_run):
    """Snakemake clears PYTHONPATH when it activates a conda env; each command line sets its own."""
    workdir, _ = pipeline_run
    init = workdir / "workflow/storylm/__init__.py"
    original = init.read_text()
    # Each process that imports this copy of the package (an installed storylm elsewhere would not)
    # notes its command line.
    init.write_text(original + "\nimport sys\nwith open('imported-from-the-workflow', 'a') as f:\n"
                    "    f.write(' '.join(sys.orig_argv) + '\\n')\n")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    try:
        result = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--forcerun", "sample",
                                 "results/samples.txt"], cwd=workdir, env=env, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stderr
        importers = (workdir / "imported-from-the-workflow").read_text().splitlines()
        assert any("-m storylm.sample stories --record" in line for line in importers), importers
    finally:
        init.write_text(original)
        (workdir / "imported-from-the-workflow").unlink(missing_ok=True)
