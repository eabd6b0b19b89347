"""The Slurm profile (profiles/slurm), the local workflow profile (profiles/default), and how the
real pretrain rule asks Slurm for GPUs and launches litgpt.

What the pretrain job asks for and how it launches comes from the real workflow: a dry run of
the real snakemake (`-p`) prints the job's resources and its shell command, whose `--srun-args`
go to the real `storylm.model.training_runner.launch_command`.

The tests marked `slurm` run a small stand-in workflow on the cluster that
`bash .ci/slurm.sh start` brings up (they skip without one):

    bash .ci/slurm.sh start && .venv/bin/python -m pytest -m slurm tests/test_slurm.py

Its `pretrain` rule has the resources that the real dry run printed and runs the real
`python -m storylm.pretrain run` with its `--srun-args`, which starts the real storylm.model.litgpt_train;
only the `litgpt` package is a stand-in that trains nothing: every Slurm task starts Lightning
Fabric, which must detect Slurm and form one process group.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import copy_workflow, tiny_config, write_config
from slurm_cluster import (  # noqa: F401  (slurm_cluster is a fixture)
    PYTHON,
    REPO,
    SLURM_PROFILE,
    WORKFLOW_PROFILE,
    job_state,
    load_profile,
    profile_override_args,
    run_snakemake,
    scancel,
    scontrol_show_job,
    slurm_cluster,
    slurm_logs,
    wait_for_job_state,
    wait_until,
)
from storylm.model.training_runner import LITGPT, launch_command
from storylm.plan import stages

# Resources Snakemake derives itself, or that it prints in other units: not the rule's own.
DERIVED_RESOURCES = {"tmpdir", "disk_mb", "disk", "disk_mib", "mem", "mem_mib", "_cores", "_nodes"}


def real_workflow(path: Path, devices: int, num_nodes: int) -> Path:
    """A copy of the repository's workflow on the tiny config, for devices x num_nodes processes."""
    workdir = copy_workflow(path)
    config = tiny_config()
    config.update(devices=devices, num_nodes=num_nodes)
    config["train"].update(micro_batch_size=4, global_batch_size=4 * devices * num_nodes)
    write_config(workdir, config)
    return workdir


def dry_run_job(output: str, rule: str) -> tuple[dict[str, str], int, str]:
    """(resources, threads, shell command) of the rule's job in the output of `snakemake --dry-run -p`."""
    blocks = [b for b in output.split("\nrule ")[1:] if b.startswith(f"{rule}:\n")]
    assert len(blocks) == 1, output
    lines = [line.strip() for line in blocks[0].splitlines()]
    field = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in lines if ": " in line}
    resources = dict(item.split("=", 1) for item in field["resources"].split(", "))
    return resources, int(field.get("threads", 1)), field["Shell command"]  # 1 thread is not printed


def real_pretrain_job(workdir: Path, *args: str) -> tuple[dict[str, str], int, str]:
    """What the real pretrain job asks Slurm for and runs: `snakemake --profile slurm --dry-run -p`."""
    res = subprocess.run(
        [PYTHON, "-m", "snakemake", "--profile", str(SLURM_PROFILE), "--dry-run", "-p", *args],
        cwd=workdir, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return dry_run_job(res.stdout + res.stderr, "pretrain")


def srun_args_of(shell_command: str) -> str | None:
    """The --srun-args value of the pretrain command (None without one)."""
    words = shlex.split(shell_command)
    assert words[:4] == ["python", "-m", "storylm.pretrain", "run"], shell_command
    return words[words.index("--srun-args") + 1] if "--srun-args" in words else None


SNAKEFILE = """\
import json, shlex, sys

PY = sys.executable
DEVICES = int(config["devices"])
NODES = int(config["num_nodes"])
# The real pretrain job's resources and srun options (from a dry run of the real workflow).
RESOURCES = json.loads(open("real_pretrain.json").read())


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
        **RESOURCES["resources"]
    params:
        srun=f"--srun-args {shlex.quote(RESOURCES['srun_args'])}" if RESOURCES["srun_args"] else "",
    shell:
        # The real runner (storylm.pretrain run) launches storylm.model.litgpt_train, which runs litgpt's
        # CLI: here the stand-in package in standin/litgpt.
        "PYTHONPATH=$PWD/standin:@REPO@/workflow STANDIN_DEVICES={DEVICES} STANDIN_NODES={NODES} "
        "{PY} -m storylm.pretrain run --config pretrain.yaml {params.srun} && "
        "{PY} collect_ranks.py {output}"


rule report:
    input: "results/pretrain.json"
    output: "results/report.txt"
    shell: "cat {input} > {output}; echo report in Slurm job $SLURM_JOB_ID >> {output}"
""".replace("@REPO@", str(REPO))

# Stand-in for the litgpt package: its CLI is one rank of a fake training run; its pretrain module
# has the names storylm.model.litgpt_train wraps.
FAKE_LITGPT_MAIN = """\
import runpy, sys
from pathlib import Path


def main():
    sys.argv[0] = "fabric_check.py"
    runpy.run_path(str(Path.cwd() / "fabric_check.py"), run_name="__main__")
"""
FAKE_LITGPT_PRETRAIN = """\
import lightning as L  # storylm.model.litgpt_train replaces L.Fabric, as litgpt.pretrain.setup calls it


class CycleIterator:
    pass


def validate(fabric, model, val_dataloader, max_iters, verbose=True):
    pass


def fit(fabric, state):
    pass


def save_checkpoint(fabric, state, tokenizer_dir, checkpoint_file):
    pass
"""

FABRIC_CHECK = '''\
"""One rank of a fake training run: Lightning Fabric must see Slurm and all ranks."""
import json, os, sys
from pathlib import Path

devices, num_nodes = int(os.environ["STANDIN_DEVICES"]), int(os.environ["STANDIN_NODES"])
outdir = Path("results/ranks")
import torch
from lightning_fabric import Fabric

multi = devices * num_nodes > 1
fabric = Fabric(accelerator="cpu", devices=devices, num_nodes=num_nodes,
                strategy="ddp" if multi else "auto")
fabric.launch()
total = fabric.all_reduce(torch.tensor(1.0), reduce_op="sum") if multi else torch.tensor(1.0)
env = getattr(fabric.strategy, "cluster_environment", None)
record = {
    "argv": sys.argv[1:],
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


def make_workflow(path: Path, devices: int, overrides: dict) -> Path:
    """The stand-in workflow, with the real pretrain job's resources and srun options for `devices`
    (a dry run of the real workflow with the same profile overrides), and the workflow profile linked in."""
    resources, threads, command = real_pretrain_job(real_workflow(path / "real", devices, 1),
                                                    *profile_override_args(SLURM_PROFILE, **overrides))
    assert threads == 1
    profile = load_profile()
    from_profile = set(profile["default-resources"]) | set(profile["set-resources"].get("pretrain", {}))
    own = {key: int(value) if value.isdigit() else value for key, value in resources.items()
           if key not in DERIVED_RESOURCES | from_profile}
    wf = path / "wf"
    wf.mkdir(parents=True, exist_ok=True)
    (wf / "real_pretrain.json").write_text(json.dumps({"resources": own, "srun_args": srun_args_of(command)}))
    (wf / "Snakefile").write_text(SNAKEFILE)
    (wf / "fabric_check.py").write_text(FABRIC_CHECK)
    (wf / "collect_ranks.py").write_text(COLLECT_RANKS)
    # A rendered config's out_dir and shards: the wrapper fingerprints the shards' indexes before training.
    (wf / "pretrain.yaml").write_text(yaml.safe_dump({"out_dir": "results/run",
                                                      "data": {"init_args": {"data_path": "shards"}}}))
    for split in ("train", "val"):
        (wf / "shards" / split).mkdir(parents=True)
        (wf / "shards" / split / "index.json").write_text(json.dumps({"chunks": [], "split": split}))
    package = wf / "standin" / "litgpt"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(FAKE_LITGPT_MAIN)
    (package / "pretrain.py").write_text(FAKE_LITGPT_PRETRAIN)
    (wf / "profiles").mkdir(exist_ok=True)
    (wf / "profiles" / "default").symlink_to(WORKFLOW_PROFILE)
    return wf


# --------------------------------------------------------------------------- profiles, no cluster


def test_profile_name_resolves_at_repo_root(tmp_path):
    """`snakemake --profile slurm` at the root finds profiles/slurm (via the `slurm`
    link) and adds profiles/default as workflow profile, which must not cap the
    pretrain job's GPUs or drop the Slurm defaults."""
    wf = real_workflow(tmp_path / "wf", devices=2, num_nodes=1)
    res = subprocess.run(
        [PYTHON, "-m", "snakemake", "--profile", "slurm", "--snakefile", str(wf / "Snakefile"),
         "--directory", str(wf), "--dry-run", "-p"],
        cwd=REPO, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "Using profiles slurm and workflow specific profile profiles/default" in out, out
    resources, threads, _ = dry_run_job(out, "pretrain")
    assert resources["gres"] == "gpu:2"  # not capped by the local profile
    assert resources["tasks_per_node"] == "2" and resources["mpi"] == "srun"
    assert resources["runtime"] == str(load_profile()["set-resources"]["pretrain"]["runtime"])
    assert resources["mem_mb_per_cpu"] == str(load_profile()["set-resources"]["pretrain"]["mem_mb_per_cpu"])
    assert resources["slurm_partition"] == ""
    # gpu_jobs (one GPU job at a time) binds local runs only; test_slurm_pipeline shows two runs'
    # pretrain jobs overlapping on the cluster.
    # set-threads asks for 8 CPUs per GPU process; --cores (profiles/default: all of this machine's) caps it.
    assert resources["cpus_per_task"] == str(threads) and 1 <= threads <= 8


@pytest.mark.parametrize("devices, num_nodes", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_pretrain_asks_for_one_task_per_gpu_and_srun_starts_them(tmp_path, monkeypatch, devices, num_nodes):
    """The real pretrain job (dry run of the real workflow): Lightning wants one Slurm task per GPU
    (ntasks-per-node == devices on num_nodes nodes), and the real launch_command starts them with srun."""
    wf = real_workflow(tmp_path / "wf", devices, num_nodes)
    resources, threads, command = real_pretrain_job(wf, "--set-threads", "pretrain=3", "--cores", "3")
    multi = devices * num_nodes > 1
    assert threads == 3 and resources["cpus_per_task"] == "3"
    assert resources["gres"] == f"gpu:{devices}"  # sbatch --gres=gpu:D: GPUs per node
    assert resources["nodes"] == str(num_nodes)  # sbatch --nodes=M
    assert resources.get("tasks_per_node") == (str(devices) if devices > 1 else None)  # --ntasks-per-node=D
    # One GPU a node on several nodes: one task a node, and no --ntasks-per-gpu from the plugin.
    assert resources.get("tasks") == (str(num_nodes) if multi and devices == 1 else None)
    assert resources.get("tasks_per_gpu") == ("0" if multi and devices == 1 else None)
    # The plugin must not wrap the job's command in `srun -n1`: the command calls srun itself.
    assert resources.get("mpi") == ("srun" if multi else None)

    srun_args = srun_args_of(command)
    config_path = Path(shlex.split(command)[shlex.split(command).index("--config") + 1])
    out_dir = wf / config_path.parent
    litgpt = [*LITGPT, "pretrain", "--config", str(config_path), "--out_dir", str(out_dir.resolve())]
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    if not multi:  # one process: the job step itself is it
        assert srun_args is None
        assert launch_command("pretrain", config_path, out_dir, srun_args) == litgpt
        return
    assert launch_command("pretrain", config_path, out_dir, srun_args) == [
        "srun", "--kill-on-bad-exit=1", f"--nodes={num_nodes}", f"--ntasks-per-node={devices}",
        "--cpus-per-task=3", f"--gres=gpu:{devices}", *litgpt]
    monkeypatch.delenv("SLURM_JOB_ID")  # outside Slurm, Lightning starts the processes itself
    assert launch_command("pretrain", config_path, out_dir, srun_args) == litgpt


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
    overrides = _overrides(slurm_cluster)
    wf = make_workflow(tmp_path, devices, overrides)
    run = run_snakemake(wf, "--config", f"devices={devices}", "num_nodes=1", overrides=overrides)
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
    out_dir = str((wf / "results" / "run").resolve())
    for r in ranks:
        # started by the real storylm.pretrain run, as litgpt would be
        assert r["argv"] == ["pretrain", "--config", "pretrain.yaml", "--out_dir", out_dir], r
        assert r["world_size"] == devices and r["all_reduce"] == devices, r
        assert r["cluster_environment"] == "SLURMEnvironment", r
        assert r["slurm_job_id"] == pretrain.slurm_jobid, r
        assert r["cuda_visible_devices"] == ",".join(map(str, range(devices))), r
        if devices > 1:
            assert r["slurm_ntasks"] == str(devices) and r["slurm_ntasks_per_node"] == str(devices), r


def workflow_rules() -> tuple[set[str], set[str]]:
    """(every rule of the workflow, the local ones), as the rule files declare them."""
    import re

    text = "\n".join(path.read_text(encoding="utf-8")
                     for path in [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))])
    rules = set(re.findall(r"^\s*rule (\w+):", text, re.M))
    # A stage with no rule file of its own gets its rule, named after it, from workflow/rules/stage.smk.
    rules |= {spec.name for spec in stages.STAGES if spec.rule_file.endswith(stages.GENERIC_RULES)}
    local = {name for block in re.findall(r"^\s*localrules:\n((?:\s+\w+,\n)+)", text, re.M)
             for name in re.findall(r"(\w+),", block)}
    return rules, local | {"all"}


def test_the_profile_sizes_every_cluster_job_and_names_no_rule_that_does_not_exist():
    rules, local = workflow_rules()
    assert {"pretrain", "export", "run_results", "single_run"} <= rules and "run_results" in local
    profile = load_profile()
    for key in ("set-resources", "set-threads"):
        assert set(profile[key]) <= rules - local, (key, set(profile[key]) - (rules - local))
    assert set(profile["set-resources"]) == rules - local
