"""Training that survives interruption: kill litgpt mid-run, rerun, and it continues from its latest checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import (
    copy_workflow,
    load_json,
    owned_env,
    snakemake,
    stage_hashes,
    tiny_config,
    training_pid,
    wait_for,
    write_config,
)
from storylm.model.training_runner import set_aside_corrupt_checkpoints, step_checkpoints
from storylm.results import litgpt_log

pytestmark = pytest.mark.slow

# The tiny model takes ~0.1 s a step: 200 steps leave the test ~15 s after the step-10 checkpoint
# to send its signal, even on a loaded machine (with 60 the run sometimes finished first).
STEPS = 200
SAVE_INTERVAL = 5


def resumable_config(seed: int) -> dict:
    config = tiny_config()
    config["seed"] = seed  # a pretrain hash of its own per case; corpus, tokenizer and shards are shared
    config["train"].update(max_tokens=STEPS * 4 * 64, save_interval=SAVE_INTERVAL, log_interval=1)
    config["eval"].update(interval=1000, final_validation=False)
    return config


@pytest.fixture(scope="module")
def shared_workdir(tmp_path_factory) -> Path:
    workdir = copy_workflow(tmp_path_factory.mktemp("resume") / "wf")
    write_config(workdir, resumable_config(0))
    snakemake(workdir, "--cores", "2", "--until", "pretrain_config")
    return workdir


def start_pipeline(workdir: Path) -> subprocess.Popen:
    """The pipeline as a background job of a shell starts it (`snakemake ... &`): with SIGINT ignored,
    which every process it starts inherits; a SIGINT to litgpt must still stop it."""
    env = owned_env()
    pipeline = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "2"], cwd=workdir, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    pipeline.owned_env = env
    return pipeline


def run_dir(workdir: Path, config: dict) -> Path:
    return workdir / "results" / "pretrain" / stage_hashes(config)["pretrain"]


# SIGTERM now saves the step litgpt stood at (SIGINT too: tests/test_long_training.py); SIGKILL loses
# what followed the last step-* checkpoint, and a kill while saving leaves a damaged one.
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_an_interrupted_run_resumes_from_its_latest_checkpoint(shared_workdir, signum):
    workdir = shared_workdir
    config = resumable_config(seed=int(signum))
    if signum == signal.SIGTERM:
        config["logger_name"] = "tensorboard"  # each logger must survive a resume (wandb: test_microstories)
    write_config(workdir, config)
    out = run_dir(workdir, config)

    pipeline = start_pipeline(workdir)
    try:
        litgpt = wait_for(lambda: (out / "step-00000010" / "lit_model.pth").exists()
                          and training_pid(out, pipeline.owned_env), timeout=300, what="the second checkpoint")
        os.kill(litgpt, signum)
        output, _ = pipeline.communicate(timeout=120)
    finally:
        pipeline.kill()
    assert pipeline.returncode != 0, output
    assert not (out / "final" / "lit_model.pth").exists()
    saved = step_checkpoints(out)
    assert saved, "Snakemake's cleanup of the failed job deleted the step checkpoints"
    latest = int(saved[0].parent.name.split("-")[1])
    assert latest < STEPS

    if signum == signal.SIGKILL:
        # A kill while saving leaves a half-written file: the rerun must fall back to the previous checkpoint.
        saved[0].write_bytes(saved[0].read_bytes()[:1000])
        latest -= SAVE_INTERVAL

    snakemake(workdir, "--cores", "2")
    log = out / "train.log"
    resumed = litgpt_log.resumed_from(log)
    assert resumed and resumed[-1].endswith(f"step-{latest:08d}/lit_model.pth")
    train, _ = litgpt_log.parse(log)
    text = log.read_text()
    after_resume = text[text.rindex("Resuming training from"):]
    first_step_after = int(after_resume.split(" step ", 1)[1].split()[0])
    assert first_step_after == latest + 1, "the step count was reset"
    assert train["step"].max() == STEPS
    assert (out / "final" / "lit_model.pth").exists()
    assert load_json(workdir / "results" / "metrics.json")["resumed_from"][-1] == resumed[-1]
    if signum == signal.SIGTERM:
        assert len(list(out.glob("logs/tensorboard/version_*/events.out.tfevents.*"))) == 2
    else:
        assert len(list(out.glob("logs/csv/version_*/metrics.csv"))) == 2
    if signum == signal.SIGKILL:
        assert "cannot be loaded" in (workdir / "logs" / "pretrain" / f"{out.name}.log").read_text()
        assert list(out.glob("corrupt-step-*"))


def test_another_config_never_resumes_from_these_checkpoints(shared_workdir):
    """Train one config, then another in the same workdir: the second starts at step 1.

    The two differ in the seed only, so a wrong resume (e.g. a shared out_dir) would load
    the first run's checkpoints without any error; only the second run's log can tell.
    """
    workdir = shared_workdir
    steps = 2 * SAVE_INTERVAL
    first, second = resumable_config(seed=98), resumable_config(seed=99)
    for config in (first, second):
        config["train"]["max_tokens"] = steps * 4 * 64

    write_config(workdir, first)
    snakemake(workdir, "--cores", "2", "--until", "pretrain")
    first_dir = run_dir(workdir, first)
    saved = {p: p.stat().st_mtime_ns for p in step_checkpoints(first_dir)}
    assert [p.parent.name for p in saved] == ["step-00000010", "step-00000005"]

    write_config(workdir, second)
    snakemake(workdir, "--cores", "2", "--until", "pretrain")
    second_dir = run_dir(workdir, second)
    assert second_dir != first_dir
    log = (second_dir / "train.log").read_text()
    assert not litgpt_log.resumed_from(second_dir / "train.log"), log
    assert "no step-* checkpoint: starting from scratch" in \
        (workdir / "logs" / "pretrain" / f"{second_dir.name}.log").read_text()
    # Every step once, from the first: iter 1 step 1 (one micro-batch a step), not iter 11.
    logged = [(int(m["iter"]), int(m["step"])) for line in log.splitlines()
              if (m := litgpt_log.TRAIN_LINE.match(line))]
    assert logged == [(i, i) for i in range(1, steps + 1)], log
    assert (second_dir / "final" / "lit_model.pth").is_file()
    # The first run's checkpoints are neither used up nor rewritten.
    assert {p: p.stat().st_mtime_ns for p in step_checkpoints(first_dir)} == saved


def test_corrupt_latest_checkpoints_are_set_aside(tmp_path):
    import torch

    for step, good in ((5, True), (10, True), (15, False), (20, False)):
        folder = tmp_path / f"step-{step:08d}"
        folder.mkdir()
        if good:
            torch.save({"model": {}, "iter_num": step, "step_count": step}, folder / "lit_model.pth")
        else:
            (folder / "lit_model.pth").write_bytes(b"PK\x03\x04 half a zip")
    moved = set_aside_corrupt_checkpoints(tmp_path)
    assert len(moved) == 2 and all(p.name.startswith("corrupt-step-") for p in moved)
    assert [p.parent.name for p in step_checkpoints(tmp_path)] == ["step-00000010", "step-00000005"]
    # litgpt's own resume: auto picks the same one.
    from litgpt.utils import find_resume_path

    assert find_resume_path("auto", tmp_path).parent.name == "step-00000010"
