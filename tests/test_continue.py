"""Continued pretraining (`continue_from`): a run starts from another run's final model, on its own corpus,
keeping that model's tokenizer and shape; its folders hold the upstream's hash; refused before any job
when the model or the tokenizer would not fit; stopped, it resumes like any training."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import copy_workflow, load_json, owned_env, snakemake, tiny_config, training_pid, wait_for, write_config
from storylm.hub import model_card
from storylm.plan import stages
from storylm.plan.runs import RunError, plan
from storylm.results import litgpt_log
from storylm.stories.storygen import write_jsonl

STEPS = 200  # optimizer steps of the continued training: time to stop it after its step-10 checkpoint
SAVE_INTERVAL = 5


def continued_config(corpus_file, **adapted) -> dict:
    """Two runs: `stories` trains on the builtin generated stories, `adapted` continues it on a local file."""
    config = tiny_config()
    config["runs"] = {"stories": {}, "adapted": {
        "continue_from": "stories",
        "corpus": {"source": "local", "local": {"paths": [str(corpus_file)]}},
        **adapted}}
    return config


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "mine.jsonl"
    write_jsonl(path, 300, seed=7)  # other stories than the builtin corpus's (seed 42 by default)
    return path


def test_a_continued_run_keeps_its_models_tokenizer_and_holds_its_hash(corpus_file):
    the_plan = plan(continued_config(corpus_file), check_values=False)
    stories, adapted = the_plan.run_hashes("stories"), the_plan.run_hashes("adapted")
    assert adapted["corpus"] != stories["corpus"]
    assert adapted["tokenizer"] == stories["tokenizer"]  # trained on the stories' corpus, not its own
    assert the_plan.stage("shards", adapted["shards"]).record["inputs"] == {
        "corpus": adapted["corpus"], "tokenizer": stories["tokenizer"]}
    record = the_plan.stage("pretrain", adapted["pretrain"]).record
    assert record["config"]["continue_from"] == stories["pretrain"]  # the upstream's hash, not the run's name
    assert the_plan.files("pretrain", adapted["pretrain"])["initial model"] == \
        f"results/pretrain/{stories['pretrain']}/final/lit_model.pth"
    assert "initial model" not in the_plan.files("pretrain", stories["pretrain"])
    # Another upstream training (here a longer one) is another continued training.
    longer = continued_config(corpus_file)
    longer["runs"]["stories"] = {"train": {"max_tokens": 4096}}
    longer["runs"]["adapted"]["train"] = {"max_tokens": 3072}
    other = plan(longer, check_values=False).run_hashes("adapted")
    assert other["shards"] == adapted["shards"] and other["pretrain"] != adapted["pretrain"]


def test_each_seed_continues_the_same_seed_or_the_upstreams_one(corpus_file):
    config = continued_config(corpus_file, seeds=[1, 2])
    config["runs"]["stories"] = {"seeds": [1, 2]}
    the_plan = plan(config, check_values=False)
    for seed in (1, 2):
        assert the_plan.stage("pretrain", the_plan.run_hashes("adapted", seed)["pretrain"]).record["config"][
            "continue_from"] == the_plan.run_hashes("stories", seed)["pretrain"]
    config["runs"]["stories"] = {}  # one training (seed 42): every seed continues it
    the_plan = plan(config, check_values=False)
    assert {the_plan.stage("pretrain", the_plan.run_hashes("adapted", seed)["pretrain"]).record["config"][
        "continue_from"] for seed in (1, 2)} == {the_plan.run_hashes("stories")["pretrain"]}
    config["runs"]["stories"] = {"seeds": [3, 4]}
    with pytest.raises(RunError, match=r"^runs\.adapted\.seeds: seed 1 has no training in run 'stories' \(its seeds:"
                                       r" \[3, 4\]\), which it continues"):
        plan(config, check_values=False)


@pytest.mark.parametrize("adapted, line", [
    ({"model_config": {"n_layer": 2}}, "runs.adapted.model_config.n_layer: 2, but run 'stories', which it continues,"
                                       " has 1: a continued training keeps its model's model config"),
    ({"tokenizer": {"vocab_size": 500}}, "runs.adapted.tokenizer.vocab_size: 500, but run 'stories', which it"
                                         " continues, has 400: a continued training keeps its model's tokenizer"),
    ({"continue_from": "stores"}, "runs.adapted.continue_from: no run named 'stores' (this config's runs: stories,"
                                  " adapted)"),
    ({"continue_from": "adapted"}, "runs.adapted.continue_from: adapted -> adapted continue from each other in a"
                                   " circle"),
])
def test_a_model_or_tokenizer_that_would_not_fit_is_refused_naming_the_key(corpus_file, adapted, line):
    config = continued_config(corpus_file)
    config["runs"]["adapted"].update(adapted)
    with pytest.raises(RunError) as error:
        plan(config, check_values=False)
    assert str(error.value) == line


def test_the_refusal_stops_snakemake_before_any_job(workdir, corpus_file):
    config = continued_config(corpus_file)
    config["runs"]["adapted"]["model_config"] = {"n_embd": 64, "head_size": 32}
    write_config(workdir, config)
    result = snakemake(workdir, "--cores", "1", "results/samples.txt", check=False)
    assert result.returncode == 1
    assert ("runs.adapted.model_config.head_size: 32, but run 'stories', which it continues, has 16: a continued"
            " training keeps its model's model config") in result.stderr
    assert not (workdir / "Data").exists() and not (workdir / "logs").exists()


def test_a_continued_models_card_names_the_training_it_started_from():
    training = {"continued_from": "results/pretrain/0123456789"}
    assert model_card.origin(training) == ("pretrained from the final weights of the training in"
                                           " `results/pretrain/0123456789` (continued pretraining)")
    assert model_card.continued_lines(training)[0].startswith(
        "Continued pretraining: the model first learned from the data of the training in `results/pretrain/0123456789`")
    assert model_card.origin({}) == "pretrained from scratch" and model_card.continued_lines({}) == []


@pytest.mark.slow
def test_a_continued_training_starts_from_its_upstreams_weights_and_resumes_after_a_stop(tmp_path, corpus_file):
    """Through the pipeline: `stories` pretrains on generated stories, `adapted` continues it on a local corpus.
    Its learning rate, 1e-300, is 0 in float32 (AdamW's step and its decay leave every weight as it was), so
    its final weights are the upstream's bit for bit only if it started from them, and after its stop resumed
    from its own checkpoint (a restart from random weights, or from the upstream's, would differ or refuse)."""
    workdir = copy_workflow(tmp_path / "wf")
    config = continued_config(corpus_file, optimizer={"init_args": {"lr": 1e-300}},
                              train={"max_tokens": STEPS * 4 * 64, "save_interval": SAVE_INTERVAL, "log_interval": 1},
                              eval={"interval": 100000, "final_validation": False})
    write_config(workdir, config)
    the_plan = plan(config, check_values=False)
    upstream = workdir / stages.folder("pretrain", the_plan.run_hashes("stories")["pretrain"])
    out = workdir / stages.folder("pretrain", the_plan.run_hashes("adapted")["pretrain"])
    target = str((out / "final/lit_model.pth").relative_to(workdir))

    env = owned_env()
    pipeline = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "2", target], cwd=workdir, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def second_checkpoint():
            assert pipeline.poll() is None, pipeline.stdout.read()  # the pipeline ended before it
            return (out / "step-00000010" / "lit_model.pth").exists() and training_pid(out, env)

        litgpt = wait_for(second_checkpoint, timeout=600, what="the continued training's second checkpoint")
        os.kill(litgpt, signal.SIGTERM)
        output, _ = pipeline.communicate(timeout=180)
    finally:
        pipeline.kill()
    assert pipeline.returncode != 0, output
    assert (upstream / "final/lit_model.pth").is_file() and not (out / "final").exists()
    rendered = (out / "pretrain.yaml").read_text(encoding="utf-8")
    # litgpt's convert_pretrained_checkpoint extracted the upstream's final weights beside the checkpoints.
    assert f"initial_checkpoint_dir: {out.relative_to(workdir)}/initial\n" in rendered
    initial = torch.load(out / "initial/lit_model.pth", map_location="cpu")
    assert "resume: false\n" in rendered  # litgpt takes one of the two: rerun by hand, it starts from the model

    evaluated = workdir / stages.folder("evaluate", the_plan.run_hashes("adapted")["evaluate"])
    snakemake(workdir, "--cores", "2", str((evaluated / "metrics.json").relative_to(workdir)))
    resumed = litgpt_log.resumed_from(out / "train.log")
    assert len(resumed) == 1 and "/step-000000" in resumed[0] and resumed[0].startswith(str(out))
    assert litgpt_log.parse(out / "train.log")[0]["step"].max() == STEPS
    theirs = torch.load(upstream / "final/lit_model.pth", map_location="cpu")["model"]
    ours = torch.load(out / "final/lit_model.pth", map_location="cpu")["model"]
    assert theirs.keys() == ours.keys() == initial.keys()
    assert all(torch.equal(theirs[key], ours[key]) and torch.equal(theirs[key], initial[key]) for key in theirs)
    # Its evaluation is on its own corpus: the local file's val split, in shards of the stories' tokenizer.
    inputs = load_json(evaluated / "config.json")["inputs"]
    assert inputs["corpus"] == the_plan.run_hashes("adapted")["corpus"]
    assert load_json(workdir / stages.folder("shards", inputs["shards"]) / "config.json")["inputs"] == {
        "corpus": the_plan.run_hashes("adapted")["corpus"], "tokenizer": the_plan.run_hashes("stories")["tokenizer"]}
