"""The real pipeline with `--profile slurm` on the local Slurm cluster (bash .ci/slurm.sh start).

Every job goes through Slurm, the pretrain job asks for its GPU, the outputs equal those of a
local run of the same config, a pretrain job cancelled with scancel saves the step it stood at and
stops the pipeline, and a training longer than its job's time limit saves before the limit,
requeues its job and ends with the weights of a training never stopped.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from conftest import copy_workflow, load_json, logged_steps, stage_hashes, write_config
from slurm_cluster import (  # noqa: F401  (slurm_cluster is a fixture)
    job_state,
    run_snakemake,
    scancel,
    scontrol_show_job,
    set_time_limit,
    slurm_cluster,
    slurm_logs,
    start_if_requeued,
    wait_for_job_state,
    wait_until,
)
from storylm.model.training_runner import step_checkpoints
from storylm.plan.runs import plan
from storylm.results import litgpt_log

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# The stage jobs; the steps that gather results (run_results, compare_runs, ...) are local rules.
RULES = {"corpus", "tokenizer", "shards", "pretrain_config", "pretrain", "evaluate", "sample", "export"}
TIMINGS = ("train_seconds", "train_tokens_per_second")  # wall-clock figures differ from run to run


def overrides(cluster, **more):
    # Only the partition and the sizes for the 2-CPU CI node change; the rest is the real profile.
    return cluster.overrides(
        **more,
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


def test_a_requeued_pretrain_job_resumes_and_a_scancelled_one_saves_and_stops_the_pipeline(slurm_run, slurm_cluster):
    workdir, _, _, config = slurm_run
    config = copy.deepcopy(config)
    config["seed"] = 5  # a new pretrain stage; corpus, tokenizer and shards are reused
    steps = 3000  # ~10 ms each: time for a requeue and a scancel between two save intervals
    config["train"].update(max_tokens=steps * 4 * 64, save_interval=1000, log_interval=1)
    config["eval"].update(interval=100000)
    write_config(workdir, config)
    out = workdir / "results" / "pretrain" / stage_hashes(config)["pretrain"]

    run = run_snakemake(workdir, "--until", "pretrain", profile=workdir / "profiles" / "slurm",
                        overrides=overrides(slurm_cluster), background=True)
    try:
        job = run.wait_for_submission("pretrain", timeout=240).slurm_jobid
        wait_for_job_state(job, ["RUNNING"], timeout=120)
        wait_until(lambda: logged_steps(out)[-1:] >= [100], 300, what="step 100")
        # Slurm requeues it (as after a preemption): SIGTERM, a save, and the same job runs again.
        assert subprocess.run(["scontrol", "requeue", job]).returncode == 0
        first = wait_until(lambda: (out / "stopped.json").is_file() and load_json(out / "stopped.json"), 60,
                           what="the save at the requeue")
        assert first["reason"] == "SIGTERM" and first["step"] == logged_steps(out)[-1], first

        def resumed_job():
            start_if_requeued(job)
            return litgpt_log.resumed_from(out / "progress.log")

        resumed = wait_until(resumed_job, 400, what="the resumed job")
        assert len(resumed) == 1 and resumed[0].endswith(f"/step-{first['step']:08d}/lit_model.pth"), resumed
        assert run.proc.poll() is None, run.describe()  # snakemake waited for the requeued job
        wait_until(lambda: logged_steps(out)[-1] >= first["step"] + 100, 300, what="100 steps after the resume")
        scancel(job)
        assert run.wait(timeout=300) != 0, run.describe()
    finally:
        run.stop()
    assert job_state(job) == "CANCELLED"  # not requeued: scancel means stop
    second = load_json(out / "stopped.json")
    assert second["reason"] == "SIGTERM" and second["step"] == logged_steps(out)[-1], second
    assert step_checkpoints(out)[0].parent.name == f"step-{second['step']:08d}"
    assert not (out / "final" / "lit_model.pth").exists()
    assert f"Slurm job {job} is " in (out / "progress.log").read_text()


def test_a_training_longer_than_its_job_requeues_itself_and_ends_as_if_never_stopped(slurm_run, slurm_cluster):
    """A pretrain of about three times what a 1-minute job can train: it saves before each job's end,
    requeues its own job, resumes; a local training of the same config ends with the same weights, bit for bit."""
    workdir, local, _, config = slurm_run
    config = copy.deepcopy(config)
    config["seed"] = 6
    # 2-7 ms a step on one thread (2-3 ms of compute, the rest litgpt's loop, the machine running
    # other tests): 40-130 s of training, where a 1-minute job trains 8-35 s (7,300 steps measured on
    # an idle machine): its start (10-40 s), then the margin before its end, set to 12 s (a save here
    # takes 0.3-0.9 s, a finished training's last validation, save and Snakemake's wrap-up 3-6 s). The
    # default margin, 20 s, is for real models; under load it would leave a 1-minute job too little to
    # train in. So one job cannot finish it even on the fastest machine. A job whose start-up takes it
    # whole (a loaded machine, a cold compile) trains nothing and is requeued too (up to
    # training_runner.IDLE_REQUEUES in a row), so a slow start costs a job, not the test; once a part
    # has saved and requeued, the job's limit is raised (below), so a loaded machine adds no parts.
    steps = 20000
    config["train"].update(max_tokens=steps * 4 * 64, save_interval=None, log_interval=500)
    config["eval"].update(interval=100000)
    write_config(workdir, config)
    out = workdir / "results" / "pretrain" / stage_hashes(config)["pretrain"]
    write_config(local, config)
    reference = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "1", "--set-threads", "pretrain=1",
                                  "--until", "pretrain"], cwd=local, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    run = run_snakemake(workdir, "--until", "pretrain", profile=workdir / "profiles" / "slurm",
                        overrides=overrides(slurm_cluster, set_resources={"pretrain": {"runtime": 1}}), background=True,
                        env={"STORYLM_STOP_MARGIN": "12"})
    raised = []

    def raise_limit_once_a_part_saved(jobid: str) -> None:
        # One part that saved a step before its limit and requeued its job is the proof; the next parts get
        # 30 minutes, so the number of parts (each starting up for a loaded machine's minute) and with it the
        # test's time do not grow with the load. Before the job is moved up: a part reads its limit at start.
        stops = (out / "progress.log").read_text() if (out / "progress.log").is_file() else ""
        if not raised and "saved step" in stops and scontrol_show_job(jobid).get("JobState") == "PENDING":
            set_time_limit(jobid, 30)
            raised.append(jobid)

    try:

        def ended():
            for job in run.submitted():
                if job.rule == "pretrain":
                    raise_limit_once_a_part_saved(job.slurm_jobid)
                start_if_requeued(job.slurm_jobid)
            return run.proc.poll() is not None

        wait_until(ended, 1200, interval=2, what="the pipeline's end")
        run.check()
        assert reference.wait(timeout=600) == 0, reference.stdout.read()
    except BaseException:
        reference.kill()
        reference.wait()
        shutil.rmtree(local / out.relative_to(workdir), ignore_errors=True)  # see below
        raise
    finally:
        run.stop()
        reference.kill()
        write_config(local, slurm_run[3])  # the shared local run's own config back
    pretrains = [job for job in run.submitted() if job.rule == "pretrain"]
    assert len(pretrains) == 1, run.describe()  # one Slurm job, run more than once: requeued
    info = scontrol_show_job(pretrains[0].slurm_jobid)
    assert info["JobState"] == "COMPLETED" and int(info["Restarts"]) >= 1, info  # two jobs or more
    assert raised == [pretrains[0].slurm_jobid] and info["TimeLimit"] == "00:30:00", info  # the last part: 30 min
    progress = (out / "progress.log").read_text()
    stops = [line for line in progress.splitlines() if line.startswith("storylm: training stopped")]
    requeued = [line for line in stops if f"requeued Slurm job {pretrains[0].slurm_jobid}, which resumes from it" in line]
    assert len(stops) == len(requeued) == int(info["Restarts"]), progress
    assert any(f" of {steps} steps remain" in line and "saved step" in line for line in stops), progress
    # A part whose start-up took its whole job (a loaded machine) is requeued too, and resumes from
    # the last step saved before it: every part after the first saved step resumes from a checkpoint.
    first_save = next(i for i, line in enumerate(stops) if "saved step" in line)
    assert len(litgpt_log.resumed_from(out / "train.log")) == len(stops) - first_save
    import torch

    reference_out = local / out.relative_to(workdir)
    try:
        ours, theirs = (torch.load(folder / "final" / "lit_model.pth", weights_only=False)["model"]
                        for folder in (out, reference_out))
        assert [name for name in ours if not ours[name].equal(theirs[name])] == []
    finally:  # the shared local run holds one pretrain folder: the tests that read it find theirs alone
        shutil.rmtree(reference_out, ignore_errors=True)


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
