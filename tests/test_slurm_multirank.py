"""Trainings of two ranks through `snakemake --profile slurm` on a two-node cluster on this host
(SLURM_CI_NODES=2 bash .ci/slurm.sh start): 1 task x 2 nodes and 2 tasks x 1 node end with the weights
of two local processes, bit for bit, and a SIGTERM to one rank stops both, requeues the job and resumes.

Only the pretrain job goes through Slurm (the stages before it run locally first), and no test depends
on how long a job takes to start: no job has a short time limit, and the signal is sent once the
training has logged steps.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import uuid
from pathlib import Path

import pytest

from conftest import OWNER, copy_workflow, logged_steps, snakemake, stage_hashes, tiny_config, write_config
from slurm_cluster import (  # noqa: F401  (slurm_cluster is a fixture)
    run_snakemake,
    scontrol_show_job,
    slurm_cluster,
    start_if_requeued,
    wait_until,
)
from storylm.results import litgpt_log

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

STEPS = 300
ONE_THREAD = ("--set-threads", "pretrain=1")  # equal weights need the same float sums
SITE_CONF = "/etc/slurm/slurm.conf"  # given as SLURM_CONF, as a module-loaded Slurm sets it


def config_of(devices: int, nodes: int) -> dict:
    config = tiny_config()
    config.update(devices=devices, num_nodes=nodes)
    config["train"].update(global_batch_size=4, micro_batch_size=2, max_tokens=STEPS * 4 * 64, save_interval=None,
                           log_interval=1)
    config["eval"].update(interval=100000)
    return config


@pytest.fixture(scope="module")
def two_nodes(slurm_cluster):
    if len(slurm_cluster.nodes) < 2 or slurm_cluster.gpus < 2:
        pytest.skip("needs a cluster of two nodes with two (fake) GPUs each: SLURM_CI_NODES=2 bash .ci/slurm.sh start")
    return slurm_cluster


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    """The same training as two local processes (no Slurm); its workdir, whose Data/ the Slurm tests reuse."""
    workdir = copy_workflow(tmp_path_factory.mktemp("two-local") / "wf")
    write_config(workdir, config_of(2, 1))
    snakemake(workdir, "--cores", "2", *ONE_THREAD, "--until", "pretrain")
    return workdir


@pytest.fixture(scope="module")
def local_weights(local_run) -> dict:
    return final_weights(local_run / "results" / "pretrain" / stage_hashes(config_of(2, 1))["pretrain"])


def final_weights(out: Path) -> dict:
    import torch

    return torch.load(out / "final" / "lit_model.pth", map_location="cpu", weights_only=False)["model"]


def prepared(tmp_path: Path, config: dict, local_run: Path) -> tuple[Path, Path]:
    """A workdir whose stages before pretrain are there (the local run's corpus, tokenizer and shards: the
    same settings, the same folders) or built locally; its pretrain folder."""
    workdir = copy_workflow(tmp_path / "wf")
    shutil.copytree(local_run / "Data", workdir / "Data")
    write_config(workdir, config)
    snakemake(workdir, "--cores", "2", "--until", "pretrain_config")
    return workdir, workdir / "results" / "pretrain" / stage_hashes(config)["pretrain"]


def on_slurm(workdir: Path, cluster, env: dict, background: bool = False):
    over = cluster.overrides(slurm_init_seconds_before_status_checks=1, set_threads={"pretrain": 1})
    return run_snakemake(workdir, "--until", "pretrain", profile=workdir / "profiles" / "slurm", overrides=over,
                         background=background, timeout=900, env={"SLURM_CONF": SITE_CONF, **env})


def assert_equal_weights(ours: dict, theirs: dict) -> None:
    assert ours.keys() == theirs.keys()
    assert [name for name in ours if not ours[name].equal(theirs[name])] == []


@pytest.mark.parametrize("devices, nodes", [(1, 2), (2, 1)], ids=["1-task-x-2-nodes", "2-tasks-x-1-node"])
def test_two_slurm_ranks_end_with_the_weights_of_two_local_processes(two_nodes, local_run, local_weights, tmp_path,
                                                                     devices, nodes):
    workdir, out = prepared(tmp_path, config_of(devices, nodes), local_run)
    run = on_slurm(workdir, two_nodes, {})
    run.check()
    [job] = [job for job in run.submitted() if job.rule == "pretrain"]
    info = scontrol_show_job(job.slurm_jobid)
    assert info["JobState"] == "COMPLETED" and int(info["NumNodes"]) == nodes, info
    progress = (out / "progress.log").read_text(encoding="utf-8")
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in progress  # world size 2
    runner = (workdir / "logs" / "pretrain" / f"{out.name}.log").read_text(encoding="utf-8")
    # Back in the environment of srun, squeue and scontrol, with the rendezvous on the batch host.
    assert f"from the Slurm job: MASTER_ADDR={socket.gethostname()} MASTER_PORT=" in runner
    assert runner.count(f" SLURM_CONF={SITE_CONF}\n") == 1
    assert logged_steps(out) == list(range(1, STEPS + 1))  # each line once
    assert_equal_weights(final_weights(out), local_weights)


def rank_process(job: str, rank: int, mark: str) -> int | None:
    """The pid of a rank of a Slurm job started by this test (its environment says which; the rank's data
    loader workers carry the same environment, but their parent is the rank)."""

    def environ(pid: str) -> list[bytes]:
        try:
            return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return []

    wanted = {f"{OWNER}={mark}".encode(), f"SLURM_JOB_ID={job}".encode(), f"SLURM_PROCID={rank}".encode()}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if wanted <= set(environ(pid)):
            parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
            if not wanted <= set(environ(parent)):
                return int(pid)
    return None


def test_a_sigterm_to_one_rank_of_a_two_node_job_stops_both_requeues_and_resumes(two_nodes, local_run, local_weights,
                                                                                tmp_path):
    workdir, out = prepared(tmp_path, config_of(1, 2), local_run)
    mark = uuid.uuid4().hex
    run = on_slurm(workdir, two_nodes, {OWNER: mark}, background=True)
    try:
        job = run.wait_for_submission("pretrain").slurm_jobid
        wait_until(lambda: logged_steps(out)[-1:] >= [20], 600, what="step 20")
        rank1 = wait_until(lambda: rank_process(job, 1, mark), 30, what="rank 1")
        os.kill(rank1, signal.SIGTERM)  # rank 1 alone, on the second node

        def ended():
            start_if_requeued(job)
            return run.proc.poll() is not None

        wait_until(ended, 900, interval=1, what="the pipeline's end")
        run.check()
    finally:
        run.stop()
    info = scontrol_show_job(job)
    assert info["JobState"] == "COMPLETED" and int(info["Restarts"]) == 1, info
    progress = (out / "progress.log").read_text(encoding="utf-8")
    [stopped] = [line for line in progress.splitlines() if line.startswith("Stopped at step ")]
    step = int(stopped.split()[3])
    assert stopped.startswith(f"Stopped at step {step} (another rank): saved")  # rank 0 stopped for rank 1
    assert (f"storylm: training stopped (another rank) after {step} steps in this part: saved step {step},"
            f" {STEPS - step} of {STEPS} steps remain; requeued Slurm job {job}, which resumes from it") in progress
    assert [p.split("/")[-2] for p in litgpt_log.resumed_from(out / "train.log")] == [f"step-{step:08d}"]
    assert_equal_weights(final_weights(out), local_weights)

