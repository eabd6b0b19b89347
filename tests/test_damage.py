"""No silent garbage, no dead ends (issue 29): damaged folders are found and rebuilt by the same command,
non-finite models and figures are refused, a diverged training says so in one line, a bad value stops
before any job, and a stop reaches the training however it is sent. The real snakemake, litgpt and
litdata on the tiny config."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from conftest import (
    REPO,
    changed,
    copy_workflow,
    dry_run_jobs,
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
from storylm.io.entry import StageError, write_json
from storylm.model.checkpoint import load_state
from storylm.model.litgpt_train import DIVERGED_EXIT
from storylm.model.training_runner import step_checkpoints
from storylm.plan.integrity import require_intact
from storylm.plan.runs import RunError, resolve
from storylm.plan.schema import load_schema

SAMPLES = ("--cores", "2", "results/samples.txt")


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny pipeline run to results/samples.txt once, and a pristine copy of it beside."""
    base = tmp_path_factory.mktemp("damage")
    workdir = copy_workflow(base / "wf")
    write_config(workdir, tiny_config())
    snakemake(workdir, *SAMPLES)
    shutil.copytree(workdir, base / "pristine", symlinks=True)
    return workdir, base / "pristine"


@pytest.fixture
def copy(finished) -> Path:
    """The finished pipeline for one test, put back as it was after it. Always at the same path: litdata's
    resume state holds the shards' absolute path, so a training moved elsewhere cannot resume."""
    workdir, pristine = finished
    yield workdir
    shutil.rmtree(workdir)
    shutil.copytree(pristine, workdir, symlinks=True)


def folder(workdir: Path, stage: str, config: dict | None = None) -> Path:
    parents = {"tokenizer": "Data/tokenizer", "shards": "Data/shards", "pretrain": "results/pretrain"}
    return workdir / parents[stage] / stage_hashes(config or tiny_config())[stage]


def check(workdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "storylm.check"], cwd=workdir, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(workdir / "workflow")})


# ---------------------------------------------------------------------------
# Damaged folders: named in one line, rebuilt by the same command


@pytest.mark.slow
def test_a_deleted_tokenizer_file_is_named_and_the_same_command_rebuilds_it(copy):
    tokenizer = folder(copy, "tokenizer")
    (tokenizer / "tokenizer.json").unlink()
    assert check(copy).returncode == 1
    # Planning names the file and plans the rebuild (a dry run included), instead of dying in litgpt.
    dry = snakemake(copy, "--dry-run", *SAMPLES)
    said = [line for line in dry.stderr.splitlines() if line.startswith("storylm: ")]
    assert said == [f"storylm: Data/tokenizer/{tokenizer.name}/tokenizer.json: missing (the stage wrote 14,646 bytes):"
                    f" this run rebuilds Data/tokenizer/{tokenizer.name} (tokenizer) and what reads it"]
    assert dry_run_jobs(copy, *SAMPLES) == {"tokenizer": 1, "sample_prompts": 1, "shards": 1, "pretrain_config": 1,
                                            "pretrain": 1, "evaluate": 1, "sample": 1, "run_results": 1,
                                            "all_samples": 1}
    snakemake(copy, *SAMPLES)
    assert (tokenizer / "tokenizer.json").stat().st_size == 14646
    assert dry_run_jobs(copy, *SAMPLES) == {}  # Nothing to be done, and now that is true
    assert check(copy).returncode == 0


def overwrite_floats(path: Path, tensor_bytes_at: int, count: int, value: float) -> None:
    """Write `count` float32 values over a torch checkpoint's largest stored tensor, in place: the file keeps
    its size and still loads (a damaged disk, a stray dd)."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as file:
        file.seek(info.header_offset)
        header = file.read(30)
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        file.seek(info.header_offset + 30 + name_length + extra_length + tensor_bytes_at)
        file.write(struct.pack(f"<{count}f", *[value] * count))


@pytest.mark.slow
def test_nan_weights_written_in_place_are_refused_naming_the_tensor_and_the_model_is_rebuilt(copy):
    final = folder(copy, "pretrain") / "final" / "lit_model.pth"
    stat = final.stat()
    overwrite_floats(final, 0, 64, math.nan)
    os.utime(final, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as `touch -r` or `cp -p` leave it: same size, time
    assert final.stat().st_size == stat.st_size
    with pytest.raises(StageError, match=r"lit_model.pth: tensor \S+ holds 64 NaN or infinite values"):
        load_state(final.parent)
    found = check(copy)
    assert found.returncode == 1 and f"DAMAGED {final.relative_to(copy)}: changed since the stage wrote it" in found.stdout
    # The training resumes from its last step-* checkpoint, and evaluate and sample read the new final model.
    assert dry_run_jobs(copy, *SAMPLES) == {"pretrain_config": 1, "pretrain": 1, "evaluate": 1, "sample": 1,
                                            "run_results": 1, "all_samples": 1}
    snakemake(copy, *SAMPLES)
    load_state(final.parent)  # finite again
    metrics = load_json(copy / "results/runs/default/seed-42/metrics.json")
    assert math.isfinite(metrics["val_loss_nats_per_token"])
    assert dry_run_jobs(copy, *SAMPLES) == {}


@pytest.mark.slow
def test_shard_token_ids_overwritten_with_other_valid_ids_are_found(copy):
    shards = folder(copy, "shards")
    chunk = sorted((shards / "val").glob("chunk-*.bin"))[0]
    data = bytearray(chunk.read_bytes())
    data[-8:] = bytes(reversed(data[-8:]))  # same size, other ids of the same vocabulary
    chunk.write_bytes(bytes(data))
    with pytest.raises(StageError, match=rf"{chunk.name}: changed since the stage wrote it .*rebuilds the shards"):
        require_intact("shards", shards)
    assert check(copy).returncode == 1
    assert dry_run_jobs(copy, *SAMPLES)["shards"] == 1


# ---------------------------------------------------------------------------
# Non-finite figures and trainings


def test_a_non_finite_figure_is_never_recorded(tmp_path):
    with pytest.raises(StageError, match=r"metrics.json: extra_sets\[1\].bits is nan, not a finite number"):
        write_json(tmp_path / "metrics.json", {"val_loss": 1.5, "extra_sets": [{"bits": 2.0}, {"bits": math.nan}]})
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.slow
def test_a_diverging_training_stops_in_one_line_and_keeps_its_last_good_checkpoint(copy):
    config = changed(tiny_config(), "optimizer.init_args.lr", 1000.0)
    write_config(copy, config)
    for _ in range(2):  # the same again: no loop, no requeue, the same line
        result = snakemake(copy, *SAMPLES, check=False)
        assert result.returncode == 1
        out = folder(copy, "pretrain", config)
        log = (copy / "logs/pretrain" / f"{out.name}.log").read_text()
        said = [line for line in log.splitlines() if line.startswith("storylm: the training diverged")]
        assert said == ["storylm: the training diverged at step 6 (iteration 6): the gradient norm is nan, at a"
                        " learning rate of 794. Lower optimizer.init_args.lr or raise train.lr_warmup_steps (in bf16"
                        " or fp16 precision, 32-true may also help); the last good checkpoint is step-00000004"]
        assert "Traceback" not in log and f"exit status {DIVERGED_EXIT}" in result.stderr
        assert [p.parent.name for p in step_checkpoints(out)] == ["step-00000004"]
        load_state(step_checkpoints(out)[0].parent)  # finite
        assert not (out / "final").exists()


# ---------------------------------------------------------------------------
# Every bad value before the first job


def wrong_values(spec: dict):
    """Values the schema must refuse for a key: out of its range or enum, of another type, and NaN."""
    types = spec.get("type", [])
    types = [types] if isinstance(types, str) else types
    if "minimum" in spec:
        yield spec["minimum"] - 1
    if "exclusiveMinimum" in spec:
        yield spec["exclusiveMinimum"]
    if "maximum" in spec:
        yield spec["maximum"] + 1
    if "enum" in spec:
        yield "no-such-choice"
    if "number" in types:
        yield math.nan
        yield math.inf
    if types and "object" not in types:
        yield {"not": "this"}
    elif types:
        yield "not an object"


def schema_keys(spec: dict, prefix: str = ""):
    for key, child in spec.get("properties", {}).items():
        dotted = f"{prefix}{key}"
        yield dotted, child
        yield from schema_keys(child, dotted + ".")


def test_every_schema_key_with_a_wrong_value_is_refused_naming_the_key():
    untested = []
    for dotted, spec in schema_keys(load_schema()):
        if dotted == "runs":
            continue  # its values are configs: each key below is walked here
        values = list(wrong_values(spec))
        if not values:
            untested.append(dotted)
        for value in values:
            config, node = {}, None
            *parents, last = dotted.split(".")
            node = config
            for parent in parents:
                node = node.setdefault(parent, {})
            node[last] = value
            with pytest.raises(RunError) as refused:
                resolve(config, check_values=False)
            message = str(refused.value)
            assert message.startswith(f"{dotted}:") and "\n" not in message, (dotted, value, message)
    assert untested == []  # a key with no range, enum or type to break would need a check of its own


@pytest.mark.parametrize(("key", "value", "line"), [
    ("seeds", [-1], "seeds[0]: -1 is less than the minimum of 0"),
    ("seed", 2 ** 32, "seed: 4294967296 is greater than the maximum of 4294967295"),
    ("optimizer.init_args.lr", math.nan, "optimizer.init_args.lr: nan is not a finite number"),
    ("optimizer.init_args.lr", math.inf, "optimizer.init_args.lr: inf is not a finite number"),
    ("optimizer.init_args.lr", -0.1, "optimizer.init_args.lr: -0.1 is less than or equal to the minimum of 0"),
    ("optimizer.class_path", "os.system", "optimizer.class_path: os.system is not a torch.optim.Optimizer class"
     " (e.g. torch.optim.AdamW, torch.optim.Adam, torch.optim.SGD)"),
    ("optimizer.class_path", "torch.optim.Adamw", "optimizer.class_path: torch.optim.Adamw is not a"
     " torch.optim.Optimizer class (e.g. torch.optim.AdamW, torch.optim.Adam, torch.optim.SGD)"),
    ("optimizer.class_path", "torch.optim.SGD",  # the default betas: SGD takes weight_decay, not betas
     "optimizer.init_args.betas: torch.optim.SGD takes no argument 'betas' (set it to null to leave it out)"),
])
def test_values_that_failed_after_the_data_stages_stop_snakemake_before_any_job(workdir, key, value, line):
    config = changed(tiny_config(), key, value)
    write_config(workdir, config)
    result = snakemake(workdir, *SAMPLES, check=False)
    assert result.returncode == 1
    assert f"Invalid config: {line}" in result.stderr
    assert not (workdir / "Data").exists() and not (workdir / "logs").exists()  # no job ran


# ---------------------------------------------------------------------------
# Stops as users send them


def long_config() -> dict:
    config = tiny_config()
    config["train"].update(max_tokens=2000 * 4 * 64, save_interval=1000, log_interval=1)
    config["eval"].update(interval=100000, final_validation=False)
    return config


@pytest.mark.slow
def test_a_sigterm_to_snakemake_saves_the_running_training_and_the_pipeline_exits(copy):
    config = long_config()
    write_config(copy, config)
    out = folder(copy, "pretrain", config)
    env = owned_env()
    pipeline = subprocess.Popen([sys.executable, "-m", "snakemake", *SAMPLES], cwd=copy, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        litgpt = wait_for(lambda: logged_steps(out)[-1:] >= [3] and training_pid(out, env), timeout=300,
                          what="step 3")
        pipeline.send_signal(signal.SIGTERM)  # snakemake alone: a systemd stop, a closed tmux, a batch kill
        sent = time.monotonic()
        _, stderr = pipeline.communicate(timeout=120)
        took = time.monotonic() - sent
    finally:
        pipeline.kill()
    assert pipeline.returncode != 0
    assert "storylm: SIGTERM: stopping" in stderr and "run the same command again to resume" in stderr
    stopped = load_json(out / "stopped.json")
    assert stopped["reason"] == "SIGTERM" and stopped["step"] < 2000
    assert step_checkpoints(out)[0].parent.name == f"step-{stopped['step']:08d}"
    assert not (out / "final").exists() and training_pid(out, env) is None and litgpt
    assert took < 60, took  # a step and a save, not the 2000-step training


@pytest.mark.slow
def test_a_past_deadline_names_its_variable_and_stops_again_without_a_loop(copy):
    config = changed(tiny_config(), "seed", 43)  # a new training beside the finished one
    write_config(copy, config)
    out = folder(copy, "pretrain", config)
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
           "STORYLM_TRAIN_UNTIL": "1000000000"}  # 2001
    for _ in range(2):
        result = subprocess.run([sys.executable, "-m", "snakemake", *SAMPLES], cwd=copy, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 1
        log = (out / "progress.log").read_text()
        said = [line for line in log.splitlines() if line.startswith("storylm: training stopped")]
        assert said[-1].startswith("storylm: training stopped (deadline) after 0 steps in this part: saved nothing"
                                   " new") and "the deadline STORYLM_TRAIN_UNTIL=1000000000.0 (2001-09-0" in said[-1]
        assert "leaves no time for a step (a margin of" in said[-1]
        assert said[-1].endswith("unset it or set a later time (rerunning as it is would stop here again)")
    assert step_checkpoints(out) == []


def test_a_full_disk_is_one_line_naming_the_folder(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip()})")
    try:
        (mount / "earlier.json").write_text("{}")  # a finished output, kept
        code = subprocess.run(
            [sys.executable, "-c", "import sys; from storylm.io.entry import run_stage, write_text;"
             " sys.exit(run_stage(lambda argv: write_text(sys.argv[1], 'x' * 200_000), None))",
             str(mount / "out" / "big.txt")], capture_output=True, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO / "workflow")})
        assert code.returncode == 1
        assert code.stderr == (f"error: {mount / 'out'}: No space left on device (errno 28): free space there and run"
                               " the same command again; finished outputs are kept\n")
        assert sorted(p.name for p in mount.rglob("*")) == ["earlier.json", "out"]  # no half file left
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.slow
def test_a_stop_before_the_first_step_exits_at_once_and_says_so(copy):
    out = folder(copy, "pretrain")
    env = owned_env()
    runner = subprocess.Popen([sys.executable, "-m", "storylm.pretrain", "run", "--config", str(out / "pretrain.yaml")],
                              cwd=copy, env={**env, "PYTHONPATH": str(copy / "workflow")}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        litgpt = wait_for(lambda: training_pid(out, env), timeout=120, what="litgpt to start")
        os.kill(litgpt, signal.SIGTERM)  # while it imports litgpt and loads the checkpoint: before fit()
        output, _ = runner.communicate(timeout=60)
    finally:
        runner.kill()
    assert runner.returncode == 75, output
    stopped = load_json(out / "stopped.json")
    assert stopped["before_training"] is True and stopped["reason"] == "SIGTERM" and stopped["steps_this_part"] == 0
    assert (f"storylm: training stopped (SIGTERM) after {stopped['startup_s']} s of start-up, before its first step:"
            " nothing new to save; run the same command again to resume") in output.splitlines()
    assert (out / "final" / "lit_model.pth").is_file()  # the finished training's files are untouched
