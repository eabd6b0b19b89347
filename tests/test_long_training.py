"""A training stopped by a signal saves the step it stood at and finishes as if never stopped
(storylm.model.litgpt_train, storylm.model.training_runner): the real snakemake, litgpt and litdata, locally."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import (
    copy_workflow,
    load_json,
    logged_steps,
    owned_env,
    snakemake,
    stage_hashes,
    tiny_config,
    training_pid,
    wait_for,
    write_config,
)
from storylm.model.litgpt_train import STOP_EXIT, Stopper, job_deadline
from storylm.model.training_runner import IDLE_REQUEUES, LIVE_LOG, after_stop, idle_parts, step_checkpoints
from storylm.results import litgpt_log

# Two micro-batches a step (gradient accumulation), so a stop must wait for the step's end; a save
# every 60 steps, so each stop falls inside an interval, where litgpt's own checkpoints lose work.
STEPS = 160
SAVE_INTERVAL = 60
ONE_THREAD = ("--set-threads", "pretrain=1")  # bit-equal weights need the same float sums


def long_config() -> dict:
    config = tiny_config()
    config["train"].update(global_batch_size=4, micro_batch_size=2, max_tokens=STEPS * 4 * 64,
                           save_interval=SAVE_INTERVAL, log_interval=1)
    config["eval"].update(interval=1000, final_validation=False)
    return config


def final_weights(out: Path) -> dict:
    import torch

    return torch.load(out / "final" / "lit_model.pth", map_location="cpu", weights_only=False)["model"]


@pytest.mark.slow
def test_a_training_stopped_twice_saves_where_it_stood_and_ends_with_the_weights_of_one_never_stopped(tmp_path):
    config = long_config()
    reference, stopped = copy_workflow(tmp_path / "reference"), copy_workflow(tmp_path / "stopped")
    for workdir in (reference, stopped):
        write_config(workdir, config)
    out = stopped / "results" / "pretrain" / stage_hashes(config)["pretrain"]
    env = owned_env()
    never_stopped = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "1", *ONE_THREAD,
                                      "--until", "pretrain"], cwd=reference, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
    try:
        saved_at = []
        for signum, after in ((signal.SIGTERM, 25), (signal.SIGINT, 85)):
            # As a shell's background job (`snakemake ... &`) starts it: with SIGINT ignored, which every
            # process it starts inherits; a SIGINT to litgpt must still stop it.
            pipeline = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "1", *ONE_THREAD,
                                         "--until", "pretrain"], cwd=stopped, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True,
                                        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
            try:
                litgpt = wait_for(lambda step=after: logged_steps(out)[-1:] >= [step]
                                  and training_pid(out, env), timeout=300, what=f"step {after}")
                # SIGTERM as Slurm sends it, to every process of the step (the data loader's worker
                # too); SIGINT as the runner passes on a Ctrl-C, to litgpt alone.
                os.killpg(litgpt, signum) if signum == signal.SIGTERM else os.kill(litgpt, signum)
                output, _ = pipeline.communicate(timeout=120)
            finally:
                pipeline.kill()
            assert pipeline.returncode != 0, output
            record = load_json(out / "stopped.json")
            stood_at = logged_steps(out)[-1]  # the last step litgpt printed: the one it stood at
            assert record["reason"] == signal.Signals(signum).name and record["step"] == stood_at
            assert record["step"] % SAVE_INTERVAL and record["step"] < STEPS  # inside a save interval
            assert step_checkpoints(out)[0].parent.name == f"step-{stood_at:08d}"
            assert not list(out.glob("saving-*")) and not (out / "final").exists()
            log = (out / LIVE_LOG).read_text()
            assert f"Stopped at step {stood_at} ({signal.Signals(signum).name}): saved" in log
            assert (f"storylm: training stopped ({signal.Signals(signum).name}) after"
                    f" {stood_at - (saved_at[-1] if saved_at else 0)} steps in this part: saved step {stood_at},"
                    f" {STEPS - stood_at} of {STEPS} steps remain; run the same command again to resume") in log
            saved_at.append(stood_at)

        snakemake(stopped, "--cores", "1", *ONE_THREAD, "--until", "pretrain")
        assert never_stopped.wait(timeout=600) == 0, never_stopped.stdout.read()
    finally:
        never_stopped.kill()
    log = out / "train.log"
    assert [p.split("/")[-2] for p in litgpt_log.resumed_from(log)] == [f"step-{s:08d}" for s in saved_at]
    assert logged_steps(out) == list(range(1, STEPS + 1))  # every step once, none lost, none repeated
    ours = final_weights(out)
    theirs = final_weights(reference / out.relative_to(stopped))
    assert ours.keys() == theirs.keys()
    different = [name for name in ours if not ours[name].equal(theirs[name])]
    assert not different, different


def test_the_deadline_comes_from_the_environment_or_squeue(monkeypatch, tmp_path):
    assert job_deadline({}) == (None, None)
    assert job_deadline({"STORYLM_TRAIN_UNTIL": "1700000000"}) == (1700000000.0, "STORYLM_TRAIN_UNTIL")
    assert job_deadline({"SLURM_JOB_ID": "7", "SLURM_JOB_END_TIME": "1700000123"}) == (1700000123.0,
                                                                                        "SLURM_JOB_END_TIME")
    # Without SLURM_JOB_END_TIME, squeue's %e (the local time); "Unknown" means no limit.
    squeue = tmp_path / "squeue"
    squeue.write_text('#!/bin/sh\n[ "$*" = "-h -j 7 -o %e" ] && echo "$END"\n')
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("END", "2026-12-06T10:30:00")
    assert job_deadline({"SLURM_JOB_ID": "7"}) == (time.mktime((2026, 12, 6, 10, 30, 0, 0, 0, -1)), "squeue")
    monkeypatch.setenv("END", "Unknown")
    assert job_deadline({"SLURM_JOB_ID": "7"}) == (None, None)


def test_the_margin_covers_the_longest_step_and_save():
    stopper = Stopper(deadline=None, margin=None)
    stopper.longest_step, stopper.state_bytes = 2.0, 400e6
    assert stopper.margin() == 2.0 + 5.0 + 4.0 + 15.0  # before a save is measured: from the state's size
    stopper.longest_save = 3.5
    assert stopper.margin() == 2.0 + 3.5 + 15.0
    assert Stopper(deadline=None, margin=30.0).margin() == 30.0  # STORYLM_STOP_MARGIN



def test_a_slurm_part_that_trained_no_step_is_requeued_a_bounded_number_of_times_in_a_row(monkeypatch, tmp_path):
    """Start-up that ate a whole job (a loaded node, a cold compile) is requeued; IDLE_REQUEUES + 1 such parts in a
    row say to raise the runtime, exit 1; a part that trained resets the count. Real after_stop, fake squeue/scontrol."""
    bin_dir, out = tmp_path / "bin", tmp_path / "out"
    bin_dir.mkdir()
    out.mkdir()
    (bin_dir / "squeue").write_text('#!/bin/sh\n[ "$*" = "-h -j 7 -o %T" ] && echo RUNNING\n')
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "requeued"}\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "7")

    def part(steps: int) -> tuple[int, str]:
        idle_before = idle_parts(out)  # as the runner reads it before a part starts
        (out / "stopped.json").write_text(json.dumps(
            {"reason": "deadline", "step": 40, "steps_this_part": steps, "max_steps": 100, "checkpoint": steps > 0,
             "deadline": 1.0, "deadline_source": "squeue", "margin_s": 12.0}))
        log = io.StringIO()
        code = after_stop(out, log, idle_before)
        return code, log.getvalue()

    requeues = []
    for _ in range(IDLE_REQUEUES):
        code, said = part(0)
        requeues.append(code)
        assert said.endswith(" the next one starts with warm caches)\n"), said
    assert requeues == [STOP_EXIT] * IDLE_REQUEUES
    assert part(3) == (STOP_EXIT, "storylm: training stopped (deadline) after 3 steps in this part: saved step 40, 60"
                                  " of 100 steps remain; requeued Slurm job 7, which resumes from it\n")
    assert idle_parts(out) == 0  # a part that trained resets the count
    for _ in range(IDLE_REQUEUES):
        assert part(0)[0] == STOP_EXIT
    code, said = part(0)
    assert code == 1 and said == (
        f"storylm: training stopped (deadline) after 0 steps in this part: saved nothing new, 60 of 100 steps remain;"
        f" {IDLE_REQUEUES + 1} parts in a row trained no step: the Slurm job's time limit leaves no time for a step"
        " (a margin of 12.0 s before it): raise the rule's runtime\n")
    assert (tmp_path / "requeued").read_text().splitlines() == ["requeue 7"] * (2 * IDLE_REQUEUES + 1)


# ---------------------------------------------------------------------------
# Any litgpt training the runner runs: finetune_full, on a tiny model and a tiny JSON dataset

FINETUNE_ITERS = 12 * 40  # 12 train examples an epoch, 40 epochs, one a micro-batch
ITER_LINE = re.compile(r"\| iter (\d+) step (\d+) \|")


def finetune_config(tmp_path: Path, out: Path) -> Path:
    """A rendered `litgpt finetune_full` config: the tiny pretrain checkpoint, 16 instructions (4 held out)."""
    from storylm.stories.storygen import generate_stories
    from tiny_checkpoint import make_checkpoint

    checkpoint = tmp_path / "base"
    if not checkpoint.is_dir():
        make_checkpoint(checkpoint)
        examples = [{"instruction": "讲一个故事", "input": "", "output": story["text"][:40]}
                    for story in generate_stories(16, 5)]
        (tmp_path / "stories.json").write_text(json.dumps(examples, ensure_ascii=False), encoding="utf-8")
    config = {"checkpoint_dir": str(checkpoint), "out_dir": str(out), "precision": "32-true", "devices": 1,
              "num_nodes": 1, "resume": "auto", "seed": 7, "logger_name": "csv",
              "data": {"class_path": "litgpt.data.JSON", "init_args": {
                  "json_path": str(tmp_path / "stories.json"), "val_split_fraction": 0.25, "num_workers": 0}},
              "train": {"save_interval": 1000, "log_interval": 1, "global_batch_size": 2, "micro_batch_size": 1,
                        "epochs": FINETUNE_ITERS // 12, "max_seq_length": 32, "lr_warmup_steps": 2},
              "eval": {"interval": 100000, "max_iters": 1, "initial_validation": False, "final_validation": False},
              "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.001}}}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "finetune.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def run_training(config: Path, command: str) -> subprocess.Popen:
    """storylm.model.training_runner.run, as a training stage calls it, in a process of its own."""
    code = ("import sys; from pathlib import Path; from storylm.model.training_runner import run;"
            f" sys.exit(run(Path({str(config)!r}), {command!r}, {{'config': Path({str(config)!r})}}))")
    return subprocess.Popen([sys.executable, "-c", code], env=owned_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def iterations(log: Path) -> list[int]:
    return [int(m[1]) for m in ITER_LINE.finditer(log.read_text(encoding="utf-8"))] if log.is_file() else []


@pytest.mark.slow
def test_a_finetune_stopped_by_sigterm_saves_and_resumes_to_the_weights_of_one_never_stopped(tmp_path):
    stopped_out, reference_out = tmp_path / "stopped", tmp_path / "reference"
    stopped_config = finetune_config(tmp_path, stopped_out)
    reference = run_training(finetune_config(tmp_path, reference_out), "finetune_full")
    try:
        runner = run_training(stopped_config, "finetune_full")
        try:
            wait_for(lambda: max(iterations(stopped_out / LIVE_LOG), default=0) >= 100, timeout=300,
                     what="iteration 100")
            runner.send_signal(signal.SIGTERM)  # the runner passes it on to litgpt
            output, _ = runner.communicate(timeout=120)
        finally:
            runner.kill()
        assert runner.returncode == STOP_EXIT, output
        record = load_json(stopped_out / "stopped.json")
        saved = stopped_out / f"step-{record['step']:06d}"  # finetune's own step-* name
        assert record["reason"] == "SIGTERM" and record["iter_num"] == 2 * record["step"]
        assert record["step"] < FINETUNE_ITERS // 2 and record["checkpoint"] == str(saved)
        assert (saved / "lit_model.pth").is_file() and (saved / "hyperparameters.yaml").is_file()
        assert not (stopped_out / "final").exists()
        assert max(iterations(stopped_out / LIVE_LOG)) == record["iter_num"]  # stopped at an optimizer step's end

        resumed = run_training(stopped_config, "finetune_full")
        output, _ = resumed.communicate(timeout=600)
        assert resumed.returncode == 0, output
        assert reference.wait(timeout=600) == 0, reference.stdout.read()
    finally:
        reference.kill()
    log = (stopped_out / "train.log").read_text(encoding="utf-8")
    assert f"Resuming training from {saved / 'lit_model.pth'}" in log
    # Every iteration trained once: the resumed part goes on after the saved one.
    assert iterations(stopped_out / "train.log") == list(range(1, FINETUNE_ITERS + 1))
    ours, theirs = (torch_load(out / "final" / "lit_model.pth") for out in (stopped_out, reference_out))
    assert ours.keys() == theirs.keys()
    assert [name for name in ours if not ours[name].equal(theirs[name])] == []


def torch_load(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def test_a_litgpt_training_that_cannot_resume_is_refused_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "storylm.model.litgpt_train", "finetune_lora", "--out_dir",
                           str(tmp_path)], env=owned_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr == ("error: litgpt finetune_lora: storylm can stop and resume only pretrain, finetune_full"
                           " (litgpt's adapter and LoRA step checkpoints hold no optimizer state, and their setup"
                           " no resume)\n")
