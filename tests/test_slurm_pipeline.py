"""The real pipeline with `--profile slurm` on the local Slurm cluster (bash .ci/slurm.sh start).

Every job goes through Slurm, the pretrain job asks for its GPU, the outputs equal those of a
local run of the same config, and a pretrain job cancelled with scancel resumes from its latest
step checkpoint when the same command runs again.
"""

from __future__ import annotations

import copy
from datetime import datetime

import pytest

from conftest import copy_workflow, load_json, stage_hashes, write_config
from slurm_cluster import (  # noqa: F401  (slurm_cluster is a fixture)
    run_snakemake, scancel, scontrol_show_job, slurm_cluster, slurm_logs, wait_for_job_state, wait_until,
)
from storylm import litgpt_log
from storylm.training_runner import step_checkpoints
from storylm.runs import plan

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# The stage jobs; the steps that gather results (run_results, compare_runs, ...) are local rules.
RULES = {"corpus", "tokenizer", "shards", "pretrain_config", "pretrain", "evaluate", "sample", "export"}
TIMINGS = ("train_seconds", "train_tokens_per_second")  # wall-clock figures differ from run to run


def overrides(cluster):
    # Only the partition and the sizes for the 2-CPU CI node change; the rest is the real profile.
    return cluster.overrides(
        slurm_init_seconds_before_status_checks=1,
        set_threads={"shards": 2, "pretrain": 1, "corpus": 1, "tokenizer": 1, "evaluate": 1, "sample": 1},
    )


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, tiny_local_run, tmp_path_factory):
    if slurm_cluster.gpus < 1:
        pytest.skip("the cluster has no (fake) GPU")
    local, config = tiny_local_run
    workdir = copy_workflow(tmp_path_factory.mktemp("slurm-pipeline") / "slurm")
    write_config(workdir, config)
    run = run_snakemake(workdir, profile=workdir / "profiles" / "slurm", overrides=overrides(slurm_cluster),
                        timeout=900)
    run.check()
    return workdir, local, run, config


def test_every_job_of_the_pipeline_went_through_slurm(slurm_run, slurm_cluster):
    workdir, _, run, _ = slurm_run
    jobs = run.submitted()
    assert {job.rule for job in jobs} == RULES, run.describe()
    assert len(jobs) == len(RULES)
    logs = slurm_logs(workdir)
    for job in jobs:
        assert logs[job.rule] == [job.log]
        info = scontrol_show_job(job.slurm_jobid)
        assert info["JobState"] == "COMPLETED", info
        assert info["Partition"] == slurm_cluster.partition
    pretrain = next(job for job in jobs if job.rule == "pretrain")
    assert scontrol_show_job(pretrain.slurm_jobid).get("TresPerNode") == "gres:gpu:1"


def test_slurm_outputs_equal_the_local_run(slurm_run):
    workdir, local, _, _ = slurm_run
    samples = "results/samples.txt"
    assert (workdir / samples).read_text(encoding="utf-8") == (local / samples).read_text(encoding="utf-8")
    # The same numbers; the last digits of float sums may differ with the job's thread count.
    slurm_metrics, local_metrics = load_json(workdir / "results/metrics.json"), load_json(local / "results/metrics.json")
    assert slurm_metrics.keys() == local_metrics.keys()
    for key, value in local_metrics.items():
        if key in TIMINGS or key == "environment":  # each job records its own threads (the machine's record)
            continue
        assert slurm_metrics[key] == (pytest.approx(value, rel=1e-5) if isinstance(value, float) else value), key
    for folder in ("Data/corpus", "Data/tokenizer"):
        for path in (local / folder).rglob("*"):
            if path.is_file():
                assert (workdir / path.relative_to(local)).read_bytes() == path.read_bytes(), path


def test_a_scancelled_pretrain_job_resumes_from_its_latest_checkpoint(slurm_run, slurm_cluster):
    workdir, _, _, config = slurm_run
    config = copy.deepcopy(config)
    config["seed"] = 5  # a new pretrain stage; corpus, tokenizer and shards are reused
    steps = 200  # ~0.1 s each: time to scancel after the step-10 checkpoint, even on a loaded machine
    config["train"].update(max_tokens=steps * 4 * 64, save_interval=5, log_interval=1)
    config["eval"].update(interval=1000)
    write_config(workdir, config)
    out = workdir / "results" / "pretrain" / stage_hashes(config)["pretrain"]
    profile = workdir / "profiles" / "slurm"

    # Only as far as training: what comes after it is the same as in slurm_run.
    first = run_snakemake(workdir, "--until", "pretrain", profile=profile, overrides=overrides(slurm_cluster),
                          background=True)
    try:
        job = first.wait_for_submission("pretrain", timeout=240)
        wait_for_job_state(job.slurm_jobid, ["RUNNING"], timeout=120)
        wait_until(lambda: (out / "step-00000010" / "lit_model.pth").exists(), 300, what="a step checkpoint")
        scancel(job.slurm_jobid)
        assert first.wait(timeout=300) != 0, first.describe()
    finally:
        first.stop()
    assert not (out / "final" / "lit_model.pth").exists()
    latest = int(step_checkpoints(out)[0].parent.name.split("-")[1])
    assert 10 <= latest < steps

    second = run_snakemake(workdir, "--until", "pretrain", profile=profile, overrides=overrides(slurm_cluster),
                           timeout=900)
    second.check()
    assert [j.rule for j in second.submitted()] == ["pretrain"], second.describe()  # the rest was done
    log = out / "train.log"
    assert litgpt_log.resumed_from(log)[-1].endswith(f"step-{latest:08d}/lit_model.pth")
    text = log.read_text()
    first_step_after = int(text[text.rindex("Resuming training from"):].split(" step ", 1)[1].split()[0])
    assert first_step_after == latest + 1
    train, _ = litgpt_log.parse(log)
    assert train["step"].max() == steps
    assert (out / "final" / "lit_model.pth").is_file()


def test_the_pretrain_jobs_of_two_runs_run_at_the_same_time(slurm_run, slurm_cluster):
    """Different runs' trainings are independent jobs: submitted together, they overlap on the cluster."""
    if slurm_cluster.gpus < 2:
        pytest.skip("needs two (fake) GPUs")
    workdir, _, _, config = slurm_run
    config = copy.deepcopy(config)
    config["train"]["max_tokens"] = 40 * 4 * 64  # long enough that the two must overlap to finish together
    config["runs"] = {"seed1": {"seed": 11}, "seed2": {"seed": 12}}
    write_config(workdir, config)
    run = run_snakemake(workdir, "--until", "pretrain", profile=workdir / "profiles" / "slurm",
                        overrides=overrides(slurm_cluster), timeout=900)
    run.check()
    pretrains = [job for job in run.submitted() if job.rule == "pretrain"]
    assert len(pretrains) == 2, run.describe()
    spans = []
    for job in pretrains:
        info = scontrol_show_job(job.slurm_jobid)
        assert info["JobState"] == "COMPLETED", info
        spans.append((datetime.fromisoformat(info["StartTime"]), datetime.fromisoformat(info["EndTime"])))
    (start1, end1), (start2, end2) = spans
    assert start1 < end2 and start2 < end1, spans  # the two intervals overlap
    the_plan = plan(config)
    for name in the_plan.runs:
        pretrain = the_plan.run_hashes(name)["pretrain"]
        assert (workdir / "results" / "pretrain" / pretrain / "final" / "lit_model.pth").is_file(), name
