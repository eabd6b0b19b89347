"""A litgpt training that any stage can run: locked, resumable, and stopped without losing work.

A training stage renders a litgpt config, then calls `run(config_path, litgpt_command, fingerprint)`:

- the stage folder (litgpt's out_dir) is locked for the whole run (storylm.io.stagelock), so a second
  run in it refuses to start, and the lock passes to litgpt, so it holds while litgpt trains even
  if this process is killed;
- it resumes only the same work: checkpoints.json holds the sha256 of what the checkpoints beside
  it were trained on (the rendered config and what it reads); when those changed (the corpus
  was edited and the shards rebuilt), the old checkpoints and logs are moved to stale-<time>/ (not
  deleted) and training starts afresh;
- a latest checkpoint that cannot be loaded (a kill while saving) is set aside, so litgpt's
  `resume: auto` falls back to the previous one;
- litgpt runs under storylm.model.litgpt_train, which saves a step-* checkpoint and exits STOP_EXIT at a
  signal or a margin before the Slurm job's end; under Slurm this runner then requeues its own job
  (`scontrol requeue`) when the job still runs, so a training longer than a job finishes by itself.
  A part whose start-up (imports, compile, data) took its whole job is requeued too, up to
  IDLE_REQUEUES parts in a row: a loaded node or a cold compile cache is no proof that the job is too
  short, while that many in a row is, and then the error says to raise the runtime. Any other failure
  is passed on as it is: no loop;
- litgpt's output goes to progress.log as it comes, appended across resumed runs (the file to
  watch); when training ends, the whole of it becomes train.log, the stage's declared log (an
  output, so Snakemake deletes it when a job fails: the live log is kept apart);
- the terminal gets one live line (storylm.io.progress): optimizer step of total, the last train
  loss, tokens/s measured here from litgpt's step lines and this clock, and the time left.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from storylm.io.contents import digest
from storylm.io.entry import StageError, atomic_path, write_json
from storylm.io.environment import ENVIRONMENT
from storylm.io.filehash import HashCache
from storylm.io.progress import Progress
from storylm.io.stagelock import note, stage_lock
from storylm.model.litgpt_train import SAVING_PREFIX, STOP_EXIT, STOPPED, STRATEGY_ENV, read_plan

CHECKPOINT_NAME = "lit_model.pth"
LIVE_LOG = "progress.log"
TRAIN_LOG = "train.log"
FINGERPRINT = "checkpoints.json"  # what the checkpoints beside it were trained on
# Besides step-*: what litgpt and this runner write while training ("logs" holds the csv and
# tensorboard loggers' files).
# Parts in a row that may train no step under Slurm before the runtime is called too short: the
# first part compiles with a cold cache and may start on a loaded node; the next ones start warm.
IDLE_REQUEUES = 2
WORK = ("final", "logs", LIVE_LOG, TRAIN_LOG, ENVIRONMENT, STOPPED)
# litgpt with the stop at a signal or a deadline; takes litgpt's own command line after it.
LITGPT = (sys.executable, "-m", "storylm.model.litgpt_train")
# litgpt's line at each log_interval: "Epoch 1 | iter 40 step 10 | loss train: 6.123, val: n/a | ..."
STEP_LINE = re.compile(r"^Epoch \d+ \| iter (?P<iter>\d+) step (?P<step>\d+) \| loss train: (?P<loss>[\d.]+)")


class TrainingWatch:
    """The live line of a training, from the lines litgpt prints: step/total, loss, tokens/s, time left.

    The total comes from the wrapper's plan line (storylm.model.litgpt_train.plan_line); tokens/s is
    the tokens between the first step line this part printed and the latest, over this clock's time
    between them (so start-up and compilation are not counted, and validation pauses are).
    """

    def __init__(self, progress: Progress, clock=time.monotonic):
        self.progress = progress
        self.clock = clock
        self.plan: dict | None = None
        self.first: tuple[float, int] | None = None  # (time, iter) of the first step line
        self.text = ""

    def see(self, line: str) -> None:
        if (plan := read_plan(line)) is not None:
            self.plan = plan
            self.progress.total = plan["max_iters"] // plan["accumulation"]
            self.progress.update(plan["first_iter"] // plan["accumulation"], "starting")
            self.progress.restart_rate()  # the time left counts from the first step, after compilation
            self.first = None
            return
        m = STEP_LINE.match(line)
        if m is None or self.plan is None:
            return
        now, iteration = self.clock(), int(m["iter"])
        if self.first is None:
            self.first = (now, iteration)
        self.text = f"loss {float(m['loss']):.3f}"
        if iteration > self.first[1] and now > self.first[0]:
            rate = (iteration - self.first[1]) * self.plan["tokens_per_iter"] / (now - self.first[0])
            self.text += f" | {rate:,.0f} tokens/s"
        self.progress.update(int(m["step"]), self.text)

    def close(self, returncode: int) -> None:
        ending = "" if returncode == 0 else (" | stopped" if returncode == STOP_EXIT else f" | failed (exit {returncode})")
        self.progress.close(text=self.text + ending)


# ---------------------------------------------------------------------------
# Checkpoints to resume from


def step_checkpoints(out_dir: Path) -> list[Path]:
    """step-* checkpoints, latest first (the order litgpt's resume: auto picks them in)."""
    found = [p for p in out_dir.glob(f"step-*/{CHECKPOINT_NAME}") if p.parent.name.split("-")[1].isdigit()]
    return sorted(found, key=lambda p: int(p.parent.name.split("-")[1]), reverse=True)


def checkpoint_loads(path: Path) -> bool:
    """A checkpoint to resume from: it reads, holds a training state, and its weights are finite."""
    from storylm.model.checkpoint import non_finite_tensor, read_checkpoint

    try:
        state = read_checkpoint(path)
    except StageError:
        return False
    return (isinstance(state, dict) and "model" in state and "iter_num" in state
            and non_finite_tensor(state["model"]) is None)


def set_aside_corrupt_checkpoints(out_dir: Path) -> list[Path]:
    """Rename unloadable latest checkpoints to corrupt-step-*, so resume falls back to the previous one."""
    moved = []
    for checkpoint in step_checkpoints(out_dir):
        if checkpoint_loads(checkpoint):
            break
        target = checkpoint.parent.with_name(f"corrupt-{checkpoint.parent.name}-{int(time.time())}")
        checkpoint.parent.rename(target)
        print(f"WARNING: {checkpoint} cannot be loaded or holds NaN weights (interrupted while saving? damaged?);"
              f" moved it to {target} and"
              " resuming from the previous checkpoint instead", file=sys.stderr, flush=True)
        moved.append(target)
    return moved


def remove_unfinished_saves(out_dir: Path) -> list[Path]:
    """Delete saving-step-*: a save at a stop that was killed before it was whole (never resumed from)."""
    unfinished = sorted(out_dir.glob(f"{SAVING_PREFIX}step-*"))
    for folder in unfinished:
        shutil.rmtree(folder)
        print(f"WARNING: removed {folder}, a checkpoint whose save was cut off", file=sys.stderr, flush=True)
    return unfinished


# ---------------------------------------------------------------------------
# Resuming only the same work


def training_work(out_dir: Path) -> list[Path]:
    """What a training leaves in its folder: checkpoints, logs, final/ (not its config, record or lock)."""
    return sorted(p for p in out_dir.iterdir() if p.name.startswith("step-") or p.name in WORK)


def set_aside_stale_work(out_dir: Path, files: dict[str, Path]) -> Path | None:
    """Move the work of a different training (another config or other inputs) to stale-<time>/, so
    that litgpt starts afresh instead of resuming it; then record this training's fingerprint.

    Work from before fingerprints were recorded is kept when nothing it was trained on changed after
    it (every fingerprinted file is older than the work); the folder it is moved to is returned.
    """
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise StageError(f"{missing[0]}: missing (run the stage that makes it)")
    with HashCache() as cache:  # the shards' chunks were just hashed by their integrity check: cache hits
        fingerprint = {name: work_digest(path, cache) for name, path in files.items()}
    recorded_path = out_dir / FINGERPRINT
    recorded = json.loads(recorded_path.read_text(encoding="utf-8")) if recorded_path.is_file() else None
    work = training_work(out_dir)
    aside = None
    if work and recorded != fingerprint and not (recorded is None and older_than(list(files.values()), work)):
        aside = out_dir / time.strftime("stale-%Y%m%d-%H%M%S")
        aside.mkdir()
        for path in work:
            # litgpt's resume: auto looks for step-*/*.pth anywhere below out_dir: a step folder set
            # aside must not be named step-* any more.
            path.rename(aside / (f"stale-{path.name}" if path.name.startswith("step-") else path.name))
        changed = sorted(k for k in fingerprint if (recorded or {}).get(k) != fingerprint[k]) if recorded else []
        why = f"{', '.join(changed)} changed since it was trained" if changed else "it has no fingerprint"
        print(f"WARNING: {out_dir} held the work of another training ({why}): moved"
              f" {', '.join(p.name for p in work)} to {aside}; training from scratch", file=sys.stderr, flush=True)
    if recorded != fingerprint:
        write_json(recorded_path, fingerprint)
    return aside


LITDATA_INDEX = "index.json"


def work_digest(path: Path, cache: HashCache) -> str:
    """What a fingerprinted file says of the training: its sha256; for litdata's index, the index without the
    time it was written (`updated_at`) and each chunk's sha256, so that shards rebuilt from the same data (a
    rerun of the shards job after an upgrade, --forcerun) resume the training, and any other data does not."""
    if path.name != LITDATA_INDEX:
        return cache.sha256(path)
    index = json.loads(path.read_text(encoding="utf-8"))
    index.pop("updated_at", None)
    chunks = {chunk["filename"]: cache.sha256(path.parent / chunk["filename"])
              if (path.parent / chunk["filename"]).is_file() else None for chunk in index.get("chunks", [])}
    return "litdata:" + digest({"index": index, "chunks": chunks})


def older_than(sources: list[Path], work: list[Path]) -> bool:
    return max(p.stat().st_mtime for p in sources) < min(p.stat().st_mtime for p in work)


def record_environment(out_dir: Path, precision: str | None) -> None:
    """Each part of a (resumed) training appends the machine it ran on, and the precision it trains in
    (litgpt's `precision`; null: this machine's choice), to environment.json."""
    from storylm.io.environment import describe
    from storylm.model.precision import training_precision

    path = out_dir / ENVIRONMENT
    parts = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    write_json(path, [*parts, {**describe(), "precision": training_precision(precision)}])


# ---------------------------------------------------------------------------
# Slurm as sites run it

# What the job's srun, squeue and scontrol need from the job's environment and that
# snakemake-executor-plugin-slurm-jobstep removes from a rule's (it keeps only the job's identity
# among the SLURM_* variables): where the site's slurm.conf is (a module-loaded Slurm).
SITE_SETTINGS = ("SLURM_CONF",)


def parent_pid(pid: int) -> int:
    """The parent of process pid (0 when it has none, or it cannot be read)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])  # the fields after the command name: state, ppid, ...


def ancestor_environments(pid: int) -> list[dict]:
    """The environment each ancestor of process pid started with, nearest first."""
    found = []
    pid = parent_pid(pid)
    while pid > 1:
        try:
            raw = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            break
        found.append(dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item))
        pid = parent_pid(pid)
    return found


def site_settings(environ: dict, ancestors: list[dict]) -> dict:
    """The SITE_SETTINGS this Slurm job's environment lost on its way to the rule, from the nearest
    ancestor process of the same job that still has them (the job's own snakemake, its batch script)."""
    job = environ.get("SLURM_JOB_ID")
    if not job:
        return {}
    restored = {}
    for ancestor in ancestors:
        if ancestor.get("SLURM_JOB_ID") != job:
            continue
        for key in SITE_SETTINGS:
            if key not in environ and key not in restored and key in ancestor:
                restored[key] = ancestor[key]
    return restored


def free_port() -> int:
    """A TCP port no process listens on here now (the kernel's pick)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def rendezvous(environ: dict) -> dict:
    """MASTER_ADDR and MASTER_PORT for the ranks of a Slurm job: this host, which is the first node of
    the allocation (where Slurm runs the batch script, and srun puts rank 0), and a port free on it.
    Lightning's own default port is 15000 + the job id's last 4 digits, the same for jobs 10001 and 20001
    on one node. Values the user set are kept."""
    import socket

    return {"MASTER_ADDR": environ.get("MASTER_ADDR") or socket.gethostname(),
            "MASTER_PORT": environ.get("MASTER_PORT") or str(free_port())}


# ---------------------------------------------------------------------------
# Running litgpt


def litgpt_env(strategy: str = "auto") -> dict:
    env = dict(os.environ)
    env[STRATEGY_ENV] = strategy  # how several processes train (storylm.model.litgpt_train)
    # wandb without an API key would prompt for one; log offline instead (sync later with `wandb sync`).
    # It writes to ./wandb/: Lightning's WandbLogger passes save_dir="." to wandb.init.
    if not env.get("WANDB_API_KEY") and "WANDB_MODE" not in env:
        env["WANDB_MODE"] = "offline"
    return env


def resume_arguments(litgpt_config: dict, resume_from: list[Path]) -> list[str]:
    """A continued training's config starts from its initial model (`initial_checkpoint_dir`, `resume:
    false`: litgpt takes one of the two); a part after a stop resumes from its own step-* instead."""
    if litgpt_config.get("initial_checkpoint_dir") and resume_from:
        return ["--initial_checkpoint_dir", "null", "--resume", "auto"]
    return []


def launch_command(litgpt_command: str, config_path: Path, out_dir: Path, srun_args: str | None = None,
                   extra: list[str] = ()) -> list[str]:
    """litgpt <command> under storylm.model.litgpt_train; inside a Slurm job with several tasks, under srun with
    one process per device.

    This runner runs once per job (so checkpoints are checked once, without races) and srun starts
    the devices x num_nodes litgpt processes that Lightning expects. The srun options are explicit
    because Snakemake's job step clears the job's SLURM_* task settings.
    """
    # out_dir made absolute on the command line: litgpt's checkpoint saving parses its config with
    # jsonargparse, which briefly changes the working directory, and the tensorboard logger's writer
    # thread would then miss a relative log path. The YAML itself stays relative and portable.
    command = [*LITGPT, litgpt_command, "--config", str(config_path), "--out_dir", str(out_dir.resolve()), *extra]
    if srun_args and "SLURM_JOB_ID" in os.environ:
        command = ["srun", "--kill-on-bad-exit=1", *shlex.split(srun_args), *command]
    return command


def run(config_path: Path, litgpt_command: str, fingerprint: dict[str, Path], srun_args: str | None = None,
        strategy: str = "auto") -> int:
    """Run `litgpt <litgpt_command>` on a rendered config, resuming if it can; returns the stage's exit code.

    `fingerprint` names the files the training is (the config and what it reads: a change in any
    means other work). Signals are passed on to litgpt, which saves and stops at them. `strategy`
    (auto, ddp, fsdp) says how several processes train.
    """
    litgpt_config = yaml.safe_load(config_path.read_text())
    out_dir = Path(litgpt_config["out_dir"])
    with stage_lock(out_dir, "storylm training") as lock:
        set_aside_stale_work(out_dir, fingerprint)
        remove_unfinished_saves(out_dir)
        set_aside_corrupt_checkpoints(out_dir)
        idle_before = idle_parts(out_dir)
        (out_dir / STOPPED).unlink(missing_ok=True)
        record_environment(out_dir, litgpt_config.get("precision"))
        resume_from = step_checkpoints(out_dir)
        print(f"resuming from {resume_from[0]}" if resume_from else "no step-* checkpoint: starting from scratch",
              flush=True)
        command = launch_command(litgpt_command, config_path, out_dir, srun_args,
                                 resume_arguments(litgpt_config, resume_from))
        if "SLURM_JOB_ID" in os.environ:  # squeue, scontrol and srun talk to this job's controller
            restored = site_settings(os.environ, ancestor_environments(os.getpid()))
            if command[0] == "srun":
                restored.update(rendezvous(os.environ))
            os.environ.update(restored)
            if restored:
                print("from the Slurm job: " + " ".join(f"{k}={v}" for k, v in sorted(restored.items())), flush=True)
        print("running: " + shlex.join(command), flush=True)
        # litgpt gets the default SIGINT handling even where this job was started with SIGINT ignored
        # (a shell's background job, a pytest-xdist worker): an ignored SIGINT is inherited, and litgpt
        # would then ignore the SIGINT passed on below. It inherits the lock too.
        process = subprocess.Popen(command, env=litgpt_env(strategy), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, bufsize=1, start_new_session=True, pass_fds=(lock,),
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        note(lock, f"process {os.getpid()} (storylm training) and its litgpt, process {process.pid}")
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            signal.signal(signum, lambda s, _frame: process.send_signal(s))
        # The live log is kept beside the checkpoints and appended to, so a resumed run's log continues.
        live = out_dir / LIVE_LOG
        watch = TrainingWatch(Progress(litgpt_command, None, "steps"))
        with open(live, "a", encoding="utf-8") as log:
            try:
                for line in process.stdout:
                    sys.stdout.write(line)
                    log.write(line)
                    log.flush()
                    watch.see(line)
            except OSError as error:  # a full disk: litgpt stops (it saves if it can) before the error is said
                stop_on_error(process, error, live)
            returncode = process.wait()
            watch.close(returncode)
            # A stop writes stopped.json (removed above) before any rank exits; under srun
            # --kill-on-bad-exit a rank may then be killed while it exits, so srun's own code varies.
            if returncode == STOP_EXIT or (returncode != 0 and (out_dir / STOPPED).is_file()):
                returncode = after_stop(out_dir, log, idle_before)
        if returncode == 0:
            with atomic_path(out_dir / TRAIN_LOG) as tmp:
                shutil.copyfile(live, tmp)
    return returncode


def stop_on_error(process: subprocess.Popen, error: OSError, live: Path) -> None:
    """The live log cannot be written (a full disk): stop litgpt as at a signal, pass on the rest of its
    output to this job's log, then raise the error with the live log's name on it."""
    process.send_signal(signal.SIGTERM)
    for line in process.stdout:
        sys.stdout.write(line)
    process.wait()
    raise OSError(error.errno, error.strerror, str(live)) from None


# ---------------------------------------------------------------------------
# After a stop: say what was saved, and under Slurm come back by itself


def read_stopped(out_dir: Path) -> dict | None:
    """What the last stop wrote to stopped.json; None when there is none or it cannot be read."""
    try:
        return json.loads((out_dir / STOPPED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def idle_parts(out_dir: Path) -> int:
    """How many parts in a row, up to the last one, stopped without training a step (from its stopped.json)."""
    try:
        return int(read_stopped(out_dir).get("idle_parts", 0))
    except (AttributeError, TypeError, ValueError):  # none, or not what a stop writes
        return 0


def after_stop(out_dir: Path, log, idle_before: int = 0) -> int:
    """Report a stopped training in both logs; requeue this Slurm job to resume it where that is right.

    `idle_before` is how many parts in a row before this one trained no step (idle_parts)."""
    stopped = read_stopped(out_dir)
    if stopped is None:
        return say(log, STOP_EXIT, f"the training stopped (exit {STOP_EXIT}) without saying where; rerun to resume")
    idle = idle_before + 1 if stopped["steps_this_part"] == 0 else 0
    if idle:  # the next part reads it
        write_json(out_dir / STOPPED, {**stopped, "idle_parts": idle})
    job = os.environ.get("SLURM_JOB_ID")
    if stopped.get("before_training"):
        summary = (f"training stopped ({stopped['reason']}) after {stopped['startup_s']} s of start-up, before its"
                   " first step: nothing new to save")
    else:
        remain = stopped["max_steps"] - stopped["step"]
        saved = f"saved step {stopped['step']}" if stopped["checkpoint"] else "saved nothing new"
        summary = (f"training stopped ({stopped['reason']}) after {stopped['steps_this_part']} steps in this part:"
                   f" {saved}, {remain} of {stopped['max_steps']} steps remain")
    no_step_by_deadline = idle and stopped["reason"] == "deadline"
    if no_step_by_deadline and (not job or stopped.get("deadline_source") == "STORYLM_TRAIN_UNTIL"):
        return say(log, 1, summary + "; " + no_time_for_a_step(stopped, job))  # the same deadline again: a loop
    if not job:
        return say(log, STOP_EXIT, summary + "; run the same command again to resume")
    state = slurm_job_state(job)
    if state != "RUNNING":  # cancelled, timed out, or already being requeued by Slurm itself
        return say(log, STOP_EXIT, summary + f"; Slurm job {job} is {state or 'gone'}: not requeued by the training")
    if idle > IDLE_REQUEUES:
        tries = f"{idle} parts in a row trained no step"
        if no_step_by_deadline:
            return say(log, 1, f"{summary}; {tries}: {no_time_for_a_step(stopped, job)}")
        return say(log, STOP_EXIT, f"{summary}; {tries}: not requeued (it would loop). If the signal was Slurm job"
                   f" {job}'s time limit, raise the rule's runtime: start-up alone (imports, compile, data) took that long")
    requeue = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if requeue.returncode != 0:
        return say(log, STOP_EXIT, summary + f"; `scontrol requeue {job}` failed ({requeue.stderr.strip()}):"
                   " rerun the pipeline to resume")
    idle_note = (f" (start-up took this job: {idle} of at most {IDLE_REQUEUES} such parts in a row; the next one"
                 " starts with warm caches)") if idle else ""
    return say(log, STOP_EXIT, summary + f"; requeued Slurm job {job}, which resumes from it{idle_note}")


def no_time_for_a_step(stopped: dict, job: str | None) -> str:
    """What to change when the deadline left no time for one step: it is past, or closer than the margin."""
    source, margin = stopped.get("deadline_source"), stopped.get("margin_s")
    margin_text = f" (a margin of {margin} s before it)" if margin is not None else ""
    if source == "STORYLM_TRAIN_UNTIL" or not job:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stopped["deadline"])) if stopped.get("deadline") else "?"
        return (f"the deadline {source or 'STORYLM_TRAIN_UNTIL'}={stopped.get('deadline')} ({when}) leaves no time for"
                f" a step{margin_text}: unset it or set a later time (rerunning as it is would stop here again)")
    return (f"the Slurm job's time limit leaves no time for a step{margin_text}: raise the rule's runtime")


def slurm_job_state(job: str) -> str:
    try:
        return subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def say(log, returncode: int, message: str) -> int:
    line = f"storylm: {message}\n"
    sys.stdout.write(line)
    sys.stdout.flush()
    log.write(line)
    log.flush()
    return returncode
