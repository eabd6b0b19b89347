"""Helpers for tests that run Snakemake on a Slurm cluster.

CI starts a two-node cluster with ``SLURM_CI_NODES=2 bash .ci/slurm.sh start`` before pytest; on a
machine without one, the ``slurm_cluster`` fixture skips with the reason.

Typical use (see tests/test_slurm.py)::

    def test_something(slurm_cluster, tmp_path):
        run = run_snakemake(tmp_path, overrides=slurm_cluster.overrides())
        run.check()
        for job in run.submitted():            # every job that went through sbatch
            info = scontrol_show_job(job.slurm_jobid)

Everything here talks to Slurm through its command line tools (sinfo, squeue,
scontrol, scancel), never through sacct: the CI cluster has no accounting.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SLURM_PROFILE = REPO / "profiles" / "slurm"
WORKFLOW_PROFILE = REPO / "profiles" / "default"
PYTHON = sys.executable

# Printed by snakemake-executor-plugin-slurm 2.x for every submitted job.
_SUBMITTED = re.compile(
    r"Job (?P<jobid>\d+) has been submitted with SLURM jobid (?P<slurm>\d+) \(log: (?P<log>[^)]+)\)"
)
# Slurm states of a job that is over.
FINISHED_STATES = frozenset(
    {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
     "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
)


def _run(cmd: list[str], timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


# --------------------------------------------------------------------------- cluster


@dataclass(frozen=True)
class SlurmCluster:
    """What the tests need to know about the cluster that answers ``sinfo``."""

    partition: str  # the default partition
    nodes: tuple[str, ...]
    cpus: int  # CPUs of the largest node
    gpus: int  # GPUs (gres gpu) of the largest node

    def overrides(self, **more) -> dict:
        """Profile overrides that pin the partition (and whatever else is given)."""
        over = {"default_resources": {"slurm_partition": self.partition}}
        for key, value in more.items():
            if isinstance(value, Mapping) and isinstance(over.get(key), Mapping):
                over[key] = {**over[key], **value}
            else:
                over[key] = value
        return over


def _gres_gpus(gres: str) -> int:
    # e.g. "gpu:2", "gpu:a100:4(S:0-1)", "(null)"
    total = 0
    for item in gres.split(","):
        m = re.match(r"gpu(?::[^:(]+)?:(\d+)", item.strip())
        if m:
            total += int(m.group(1))
    return total


def cluster_status() -> tuple[SlurmCluster | None, str]:
    """(cluster, "") when a Slurm controller answers, else (None, why not)."""
    if shutil.which("sinfo") is None:
        return None, "no Slurm client tools (sinfo) on PATH; run `bash .ci/slurm.sh start`"
    try:
        res = _run(["sinfo", "-h", "-N", "-o", "%N|%P|%c|%G|%t"])
    except subprocess.TimeoutExpired:
        return None, "sinfo timed out; is slurmctld running? (`bash .ci/slurm.sh status`)"
    if res.returncode != 0:
        why = (res.stderr.strip().splitlines() or [f"exit code {res.returncode}"])[-1]
        return None, f"sinfo failed ({why}); run `bash .ci/slurm.sh start`"
    nodes, partitions, default = [], [], None
    cpus = gpus = 0
    usable = False
    for line in res.stdout.splitlines():
        name, part, ncpu, gres, state = line.split("|")
        nodes.append(name)
        partitions.append(part.rstrip("*"))
        if part.endswith("*"):
            default = part.rstrip("*")
        cpus = max(cpus, int(ncpu))
        gpus = max(gpus, _gres_gpus(gres))
        usable |= state.rstrip("*~#$@") in {"idle", "mix", "alloc", "comp"}
    if not nodes:
        return None, "sinfo lists no nodes"
    if not usable:
        return None, f"no Slurm node is up:\n{res.stdout}"
    return SlurmCluster(
        partition=default or partitions[0],
        nodes=tuple(dict.fromkeys(nodes)),
        cpus=cpus,
        gpus=gpus,
    ), ""


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    cluster, reason = cluster_status()
    if cluster is None:
        pytest.skip(f"no Slurm cluster: {reason}")
    return cluster


# --------------------------------------------------------------------------- profile


def load_profile(profile: Path = SLURM_PROFILE) -> dict:
    return yaml.safe_load((Path(profile) / "config.yaml").read_text())


def profile_override_args(profile: Path = SLURM_PROFILE, **overrides) -> list[str]:
    """Command-line arguments that change single entries of a profile.

    On the command line, a key such as --default-resources replaces the profile's
    whole entry (Snakemake merges profiles and the command line key by key). To change
    one resource, the other ones must therefore be repeated; this does that.

    overrides: default_resources={name: value}, set_resources={rule: {name: value}},
    set_threads={rule: n}, resources={name: n}; any other keyword becomes
    ``--key value`` (``slurm_init_seconds_before_status_checks=3``).
    """
    prof = load_profile(profile)
    args: list[str] = []
    for key, value in overrides.items():
        flag = "--" + key.replace("_", "-")
        current = prof.get(flag[2:]) or {}
        if key in ("default_resources", "resources"):
            merged = {**current, **value}
            args += [flag, *(f"{k}={v}" for k, v in merged.items())]
        elif key == "set_resources":
            merged = {rule: dict(res) for rule, res in current.items()}
            for rule, res in value.items():
                merged.setdefault(rule, {}).update(res)
            args += [flag, *(f"{rule}:{k}={v}" for rule, res in merged.items() for k, v in res.items())]
        elif key == "set_threads":
            merged = {**current, **value}
            args += [flag, *(f"{rule}={n}" for rule, n in merged.items())]
        elif value is True:
            args.append(flag)
        else:
            args += [flag, str(value)]
    return args


# --------------------------------------------------------------------------- snakemake


@dataclass(frozen=True)
class SubmittedJob:
    rule: str
    jobid: int  # Snakemake's job id
    slurm_jobid: str
    log: Path  # the Slurm log file (logs/slurm/rule_<rule>/<wildcards>/<id>.log)


def submitted_jobs(text: str) -> list[SubmittedJob]:
    """Jobs the Slurm executor submitted, from Snakemake's output, in order."""
    jobs = []
    for m in _SUBMITTED.finditer(text):
        log = Path(m.group("log"))
        rule = next((p[len("rule_"):] for p in log.parts if p.startswith("rule_")), "?")
        jobs.append(SubmittedJob(rule, int(m.group("jobid")), m.group("slurm"), log))
    return jobs


@dataclass
class SnakemakeRun:
    cmd: list[str]
    workdir: Path
    log: Path  # snakemake's stdout+stderr
    proc: subprocess.Popen
    returncode: int | None = None
    _seen: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def submitted(self) -> list[SubmittedJob]:
        return submitted_jobs(self.output)

    def wait(self, timeout: float = 600) -> int:
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"snakemake ran longer than {timeout}s\n{self.describe()}") from None
        return self.returncode

    def check(self, timeout: float = 600) -> SnakemakeRun:
        """Wait and assert success."""
        rc = self.wait(timeout)
        assert rc == 0, f"snakemake failed (rc={rc})\n{self.describe()}"
        return self

    def wait_for_submission(self, rule: str, timeout: float = 120) -> SubmittedJob:
        """The first Slurm job of `rule` that this run submitted."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for job in self.submitted():
                if job.rule == rule:
                    return job
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        raise AssertionError(f"no Slurm job for rule {rule!r} was submitted\n{self.describe()}")

    def stop(self) -> None:
        """Interrupt snakemake (it cancels its Slurm jobs), then cancel what is left."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # snakemake cancels its jobs (SIGTERM would wait for them)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for job in self.submitted():
            if job_state(job.slurm_jobid) not in FINISHED_STATES | {None}:
                scancel(job.slurm_jobid)

    def describe(self, tail: int = 80) -> str:
        lines = self.output.splitlines()[-tail:]
        text = [f"$ (cd {self.workdir} && {shlex.join(self.cmd)})"]
        # The rules' own logs first (the cause of a failed job is there), then snakemake's and the jobs'.
        for log in [*sorted((self.workdir / "logs").rglob("*.log")), *sorted(self.workdir.glob("results/*/*/progress.log"))]:
            text.append(f"--- {log.relative_to(self.workdir)}")
            text += log.read_text(errors="replace").splitlines()[-12:]
        text += ["--- snakemake", *lines]
        for job in self.submitted():
            text.append(f"--- Slurm job {job.slurm_jobid} ({job.rule}): {job.log}")
            if job.log.exists():
                text += job.log.read_text(errors="replace").splitlines()[-30:]
        return "\n".join(text)


def snakemake_env() -> dict:
    env = dict(os.environ)
    # if pytest itself runs inside a Slurm job, do not leak that job into sbatch
    for key in list(env):
        if key.startswith(("SLURM_", "SBATCH_", "SRUN_")):
            del env[key]
    env["PATH"] = os.pathsep.join([str(Path(PYTHON).parent), env.get("PATH", "")])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_snakemake(
    workdir: Path,
    *args: str,
    profile: Path | str | None = SLURM_PROFILE,
    overrides: Mapping | None = None,
    background: bool = False,
    timeout: float = 600,
    log_name: str | None = None,
    env: Mapping[str, str] | None = None,
) -> SnakemakeRun:
    """Run ``snakemake --profile <profile> [overrides] [args]`` in `workdir`.

    The workflow profile profiles/default/ applies as usual if workdir has one (link
    the repository's into it to test the real combination). With background=True
    returns at once (call .wait()/.check() later); else waits and returns the finished
    run (not checked: call .check()). `env` adds variables (sbatch passes them on to the jobs).
    """
    workdir = Path(workdir)
    cmd = [PYTHON, "-m", "snakemake"]
    if profile is not None:
        cmd += ["--profile", str(profile)]
        cmd += profile_override_args(Path(profile), **(overrides or {}))
    cmd += list(args)
    n = len(list(workdir.glob("snakemake-run*.log")))
    log = workdir / (log_name or f"snakemake-run{n + 1}.log")
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env={**snakemake_env(), **(env or {})},
            # SIGINT makes snakemake cancel its Slurm jobs; a shell that started
            # pytest in the background may have set it to "ignore"
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    run = SnakemakeRun(cmd=cmd, workdir=workdir, log=log, proc=proc)
    if not background:
        run.wait(timeout)
    return run


# --------------------------------------------------------------------------- slurm


def scontrol_show_job(jobid: str) -> dict[str, str]:
    """`scontrol show job -o <id>` as a dict ({} once Slurm forgot the job)."""
    res = _run(["scontrol", "show", "job", "-o", str(jobid)])
    if res.returncode != 0:
        return {}
    return dict(re.findall(r"(\S+?)=(\S*)", res.stdout))


def job_state(jobid: str) -> str | None:
    """Slurm state (RUNNING, COMPLETED, CANCELLED, ...) or None if unknown."""
    res = _run(["squeue", "-h", "--states=all", "-j", str(jobid), "-o", "%T"])
    state = res.stdout.strip().split("\n")[0].strip() if res.returncode == 0 else ""
    if not state:
        state = scontrol_show_job(jobid).get("JobState", "")
    return state or None


def wait_for_job_state(jobid: str, states: Iterable[str] = ("RUNNING",), timeout: float = 120) -> str:
    wanted = set(states)
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = job_state(jobid)
        if state in wanted:
            return state
        if state in FINISHED_STATES and not wanted & FINISHED_STATES:
            break
        time.sleep(0.5)
    raise AssertionError(f"Slurm job {jobid} is {state}, expected one of {sorted(wanted)}")


def start_if_requeued(jobid: str) -> bool:
    """Start a requeued job now: Slurm holds a requeued batch job about two minutes (Reason=BeginTime)
    before it may run again; a test need not wait for that. True when the job was moved up."""
    info = scontrol_show_job(jobid)
    if info.get("JobState") != "PENDING" or info.get("Reason") != "BeginTime":
        return False
    return _run(["scontrol", "update", f"JobId={jobid}", "StartTime=now"]).returncode == 0


def set_time_limit(jobid: str, minutes: int) -> None:
    """A job's time limit, as an admin raises it (a part reads its limit when it starts)."""
    res = _run(["scontrol", "update", f"JobId={jobid}", f"TimeLimit={minutes}"])
    assert res.returncode == 0, f"scontrol update {jobid} TimeLimit={minutes}: {res.stderr}"


def scancel(jobid: str) -> None:
    res = _run(["scancel", str(jobid)])
    assert res.returncode == 0, f"scancel {jobid}: {res.stderr}"


def slurm_logs(workdir: Path, logdir: str = "logs/slurm") -> dict[str, list[Path]]:
    """{rule: [log files]} under the profile's slurm-logdir."""
    found: dict[str, list[Path]] = {}
    for path in sorted((Path(workdir) / logdir).glob("rule_*/**/*.log")):
        rule = path.relative_to(Path(workdir) / logdir).parts[0][len("rule_"):]
        found.setdefault(rule, []).append(path)
    return found


def wait_until(predicate: Callable[[], object], timeout: float = 60, interval: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
