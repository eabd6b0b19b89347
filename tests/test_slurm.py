"""The Slurm profile (profiles/slurm) and the local workflow profile (profiles/default).

The tests marked `slurm` run a small stand-in workflow on the cluster that
`bash .ci/slurm.sh start` brings up (they skip without one):

    bash .ci/slurm.sh start && .venv/bin/python -m pytest -m slurm tests/test_slurm.py

Its `pretrain` rule asks for GPUs, tasks and nodes exactly as the real pretrain rule
should (see PRETRAIN_RESOURCES and docs/slurm.md), and trains nothing: every Slurm task
starts Lightning Fabric, which must detect Slurm and form one process group.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

try:  # tests/ is on sys.path (rootdir-relative import mode) ...
    from slurm_cluster import (  # noqa: F401  (slurm_cluster is a fixture)
        PYTHON, REPO, SLURM_PROFILE, WORKFLOW_PROFILE, job_state, load_profile, run_snakemake,
        scancel, scontrol_show_job, slurm_cluster, slurm_logs, wait_for_job_state, wait_until,
    )
except ImportError:  # ... or tests is a package
    from .slurm_cluster import (  # noqa: F401
        PYTHON, REPO, SLURM_PROFILE, WORKFLOW_PROFILE, job_state, load_profile, run_snakemake,
        scancel, scontrol_show_job, slurm_cluster, slurm_logs, wait_for_job_state, wait_until,
    )

# The resource block of the real `pretrain` rule, with D = config["devices"] (GPUs per
# node) and M = config["num_nodes"]. Lightning wants one Slurm task per GPU
# (ntasks-per-node == devices, nnodes == num_nodes), started by srun.
PRETRAIN_RESOURCES = """\
        gres=f"gpu:{DEVICES}",                         # GPUs per node: sbatch --gres=gpu:D
        nodes=NODES,                                   # sbatch --nodes=M
        tasks_per_node=DEVICES if DEVICES > 1 else None,          # sbatch --ntasks-per-node=D (with mpi)
        tasks=NODES if MULTI and DEVICES == 1 else None,          # D == 1, M > 1: one task per node
        tasks_per_gpu=0 if MULTI and DEVICES == 1 else None,      # ... and no --ntasks-per-gpu
        mpi="srun" if MULTI else None,                 # plugin: no `srun -n1` wrapper; we call srun
        gpu_jobs=1,                                    # local: one GPU job at a time
"""

SNAKEFILE = """\
import sys

PY = sys.executable
DEVICES = int(config.get("devices", 1))
NODES = int(config.get("num_nodes", 1))
MULTI = DEVICES * NODES > 1


def launcher(wildcards, threads, resources):
    # One process per GPU. Under Slurm (SLURM_JOB_ID set) srun starts them; elsewhere
    # Lightning does. Only for MULTI: a single process already runs in a job step.
    if not MULTI:
        return ""
    return (
        "${SLURM_JOB_ID:+srun --kill-on-bad-exit=1 --nodes=%d --ntasks-per-node=%d "
        "--cpus-per-task=%d --gres=%s}" % (NODES, DEVICES, threads, resources.gres)
    )


rule all:
    input: "results/report.txt"


rule prep:
    output: "results/prep.txt"
    shell: "echo prep in Slurm job $SLURM_JOB_ID > {output}"


rule pretrain:
    input: "results/prep.txt"
    output: "results/pretrain.json"
    threads: 1
    resources:
@PRETRAIN_RESOURCES@
    params:
        launch=launcher,
        hold=config.get("hold", ""),
    shell:
        # with --config hold=FILE: write partial output, then wait while FILE exists
        "if [ -n '{params.hold}' ]; then echo partial > {output}; "
        "while [ -e '{params.hold}' ]; do sleep 1; done; fi; "
        "{params.launch} {PY} fabric_check.py {DEVICES} {NODES} results/ranks && "
        "{PY} collect_ranks.py {output}"


rule report:
    input: "results/pretrain.json"
    output: "results/report.txt"
    shell: "cat {input} > {output}; echo report in Slurm job $SLURM_JOB_ID >> {output}"
""".replace("@PRETRAIN_RESOURCES@\n", PRETRAIN_RESOURCES)

FABRIC_CHECK = '''\
"""One rank of a fake training run: Lightning Fabric must see Slurm and all ranks."""
import json, os, sys
from pathlib import Path

devices, num_nodes, outdir = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
import torch
from lightning_fabric import Fabric

multi = devices * num_nodes > 1
fabric = Fabric(accelerator="cpu", devices=devices, num_nodes=num_nodes,
                strategy="ddp" if multi else "auto")
fabric.launch()
total = fabric.all_reduce(torch.tensor(1.0), reduce_op="sum") if multi else torch.tensor(1.0)
env = getattr(fabric.strategy, "cluster_environment", None)
record = {
    "rank": fabric.global_rank, "local_rank": fabric.local_rank, "node_rank": fabric.node_rank,
    "world_size": fabric.world_size, "all_reduce": float(total),
    "cluster_environment": type(env).__name__ if env is not None else None,
    "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    "slurm_ntasks": os.environ.get("SLURM_NTASKS"),
    "slurm_ntasks_per_node": os.environ.get("SLURM_NTASKS_PER_NODE"),
    "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
}
outdir.mkdir(parents=True, exist_ok=True)
(outdir / f"rank{fabric.global_rank}.json").write_text(json.dumps(record))
'''

COLLECT_RANKS = """\
import glob, json, sys
ranks = [json.load(open(f)) for f in sorted(glob.glob("results/ranks/rank*.json"))]
json.dump(ranks, open(sys.argv[1], "w"), indent=1)
"""

RULES = ("prep", "pretrain", "report")


def make_workflow(path: Path) -> Path:
    """The stand-in workflow, with the repository's workflow profile linked in."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "Snakefile").write_text(SNAKEFILE)
    (path / "fabric_check.py").write_text(FABRIC_CHECK)
    (path / "collect_ranks.py").write_text(COLLECT_RANKS)
    (path / "profiles").mkdir(exist_ok=True)
    (path / "profiles" / "default").symlink_to(WORKFLOW_PROFILE)
    return path


# --------------------------------------------------------------------------- profiles, no cluster


def test_profile_name_resolves_at_repo_root(tmp_path):
    """`snakemake --profile slurm` at the root finds profiles/slurm (via the `slurm`
    link) and adds profiles/default as workflow profile, which must not cap the
    pretrain job's GPUs or drop the Slurm defaults."""
    wf = make_workflow(tmp_path / "wf")
    res = subprocess.run(
        [PYTHON, "-m", "snakemake", "--profile", "slurm", "--snakefile", str(wf / "Snakefile"),
         "--directory", str(wf), "--config", "devices=2", "--dry-run"],
        cwd=REPO, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "Using profiles slurm and workflow specific profile profiles/default" in out, out
    block = out.split("rule pretrain:")[1].split("\n\n")[0]
    resources = dict(item.split("=", 1) for item in block.split("resources: ")[1].splitlines()[0].split(", "))
    assert resources["gres"] == "gpu:2"  # not capped by the local profile
    assert resources["tasks_per_node"] == "2" and resources["mpi"] == "srun"
    assert resources["runtime"] == str(load_profile()["set-resources"]["pretrain"]["runtime"])
    assert resources["slurm_partition"] == ""
    assert resources["gpu_jobs"] == "1"


def test_workflow_profile_leaves_slurm_settings_alone():
    """profiles/default wins key by key over --profile: it must not hold keys that the
    Slurm profile needs, nor a global `gpu` limit (that would cap --gres/--gpus)."""
    default = yaml.safe_load((WORKFLOW_PROFILE / "config.yaml").read_text())
    slurm = load_profile()
    forbidden = {"executor", "jobs", "default-resources", "set-resources", "set-threads", "latency-wait"}
    assert not forbidden & set(default)
    assert not {k for k in default if k.startswith("slurm-")}
    assert "gpu" not in (default.get("resources") or {})
    for key in set(default) & set(slurm):  # shared keys must agree
        assert default[key] == slurm[key], key
    assert slurm["executor"] == "slurm"
    assert slurm["slurm-status-command"] == "squeue"
    assert (REPO / "slurm").resolve() == SLURM_PROFILE.resolve()


# --------------------------------------------------------------------------- on the cluster


def _overrides(cluster, **more):
    # only the partition is pinned; the rest is test speed / the 2-CPU CI node
    return cluster.overrides(
        slurm_init_seconds_before_status_checks=3,
        set_threads={"pretrain": 1},
        **more,
    )


@pytest.mark.slurm
def test_every_job_goes_through_slurm(slurm_cluster, tmp_path):
    devices = 2 if slurm_cluster.gpus >= 2 and slurm_cluster.cpus >= 2 else 1
    if slurm_cluster.gpus < 1:
        pytest.skip("the cluster has no (fake) GPU")
    wf = make_workflow(tmp_path)
    run = run_snakemake(wf, "--config", f"devices={devices}", overrides=_overrides(slurm_cluster))
    run.check()

    jobs = run.submitted()
    assert sorted(j.rule for j in jobs) == sorted(RULES), run.describe()
    assert "localrule all:" in run.output  # only the target rule ran here
    logs = slurm_logs(wf)
    for job in jobs:
        # the predictable log folder: logs/slurm/rule_<rule>/<slurm job id>.log, kept
        assert job.log == wf / "logs" / "slurm" / f"rule_{job.rule}" / f"{job.slurm_jobid}.log"
        assert logs[job.rule] == [job.log]
        assert f"rule {job.rule}:" in job.log.read_text()
        info = scontrol_show_job(job.slurm_jobid)
        assert info["JobState"] == "COMPLETED", info
        assert info["JobName"].startswith("storylm_"), info
        assert info["Comment"] == f"rule_{job.rule}", info
        assert info["WorkDir"] == str(wf), info
        assert info["Partition"] == slurm_cluster.partition, info
    assert f"prep in Slurm job {jobs[0].slurm_jobid}" in (wf / "results" / "prep.txt").read_text()

    pretrain = next(j for j in jobs if j.rule == "pretrain")
    info = scontrol_show_job(pretrain.slurm_jobid)
    assert info.get("TresPerNode") == f"gres:gpu:{devices}", info  # sbatch --gres=gpu:D
    assert info["NumNodes"] == "1"
    assert info["NumTasks"] == str(devices), info
    if devices > 1:
        assert info["NtasksPerN:B:S:C"].startswith(f"{devices}:"), info  # --ntasks-per-node=D

    ranks = json.loads((wf / "results" / "pretrain.json").read_text())
    assert sorted(r["rank"] for r in ranks) == list(range(devices)), ranks
    for r in ranks:
        assert r["world_size"] == devices and r["all_reduce"] == devices, r
        assert r["cluster_environment"] == "SLURMEnvironment", r
        assert r["slurm_job_id"] == pretrain.slurm_jobid, r
        assert r["cuda_visible_devices"] == ",".join(map(str, range(devices))), r
        if devices > 1:
            assert r["slurm_ntasks"] == str(devices) and r["slurm_ntasks_per_node"] == str(devices), r
