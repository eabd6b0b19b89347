"""The pretrain stage: render a litgpt pretrain YAML, then run `litgpt pretrain --config` on it.

`render` writes a complete config a user can rerun by hand from the repository root:
`litgpt pretrain --config results/pretrain/<hash>/pretrain.yaml`.

`run` launches litgpt as a command (litgpt parses its own sys.argv) with `resume: auto`,
so a rerun after an interruption continues from the latest `step-*` checkpoint. Before
launching it sets aside a latest checkpoint that cannot be loaded (a half-written file
from a kill during saving), so litgpt falls back to the previous one.

It resumes only the same work: checkpoints.json holds the sha256 of what the checkpoints
beside it were trained on (pretrain.yaml and the shards' indexes); when those changed (the
corpus was edited and the shards rebuilt), the old checkpoints and logs are moved to
stale-<time>/ (not deleted) and training starts afresh. The folder is locked for the whole
run (storylm.stagelock), so a second run in it refuses to start.

litgpt's output goes to progress.log as it comes, appended across resumed runs (the file
to watch); when training ends, the whole of it becomes train.log, the stage's declared log
(an output, so Snakemake deletes it when a job fails: the live log is kept apart).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from storylm.config import ConfigError, check_vocab, directory_vocab_size
from storylm.entry import StageError, atomic_path, exit_with, write_json, write_record, write_text
from storylm.filehash import file_sha256
from storylm.stagelock import note, stage_lock

CHECKPOINT_NAME = "lit_model.pth"
PRETRAIN_CONFIG = "pretrain.yaml"
LIVE_LOG = "progress.log"
TRAIN_LOG = "train.log"
# What the checkpoints beside it were trained on (fingerprint_files).
FINGERPRINT = "checkpoints.json"
ENVIRONMENT = "environment.json"  # the machine of each part of the training (storylm.environment)
# Besides step-*: what litgpt and this command write while training ("logs" holds the csv and
# tensorboard loggers' files).
WORK = ("final", "logs", LIVE_LOG, TRAIN_LOG, ENVIRONMENT)


def train_max_tokens(train: dict, train_tokens: int) -> int:
    """The token budget: max_tokens when given, else epochs over the train shards."""
    if train.get("max_tokens"):
        return int(train["max_tokens"])
    return int(train["epochs"] * train_tokens)


def render(stage_config: dict, shards_dir: Path, tokenizer_dir: Path, out_dir: Path) -> dict:
    """The litgpt pretrain config for this stage's settings; every path relative to the repository root."""
    shard_stats = json.loads((shards_dir / "stats.json").read_text())
    train = {key: value for key, value in stage_config["train"].items() if key != "epochs" and value is not None}
    train["max_tokens"] = train_max_tokens(stage_config["train"], shard_stats["train_tokens"])
    check_val_size(shard_stats["val_tokens"], train, stage_config)
    model_config = model_with_vocab(stage_config["model_config"], tokenizer_dir)
    litgpt_config = {
        "model_name": model_config["name"],
        "model_config": model_config,
        "out_dir": str(out_dir),
        "precision": stage_config["precision"],
        "resume": "auto",
        "data": {
            "class_path": "litgpt.data.LitData",
            "init_args": {
                "data_path": str(shards_dir),
                "split_names": ["train", "val"],
                "seed": stage_config["seed"],
                "num_workers": stage_config["data_workers"],
            },
        },
        "train": train,
        "eval": stage_config["eval"],
        "optimizer": optimizer_args(stage_config["optimizer"]),
        "devices": stage_config["devices"],
        "num_nodes": stage_config["num_nodes"],
        "tokenizer_dir": str(tokenizer_dir),
        "logger_name": stage_config["logger_name"],
        "seed": stage_config["seed"],
    }
    if stage_config["logger_name"] == "wandb":
        litgpt_config["log"] = {"project": stage_config["wandb_project"]}
    return litgpt_config


def optimizer_args(optimizer: dict) -> dict:
    """The optimizer as litgpt takes it; init_args set to null are left out (the class does not take them)."""
    init_args = {key: value for key, value in optimizer["init_args"].items() if value is not None}
    return {"class_path": optimizer["class_path"], "init_args": init_args}


def model_with_vocab(model_config: dict, tokenizer_dir: Path) -> dict:
    """model_config with vocab_size filled from the tokenizer when left out, checked against it."""
    model = dict(model_config)
    try:
        needed = directory_vocab_size(tokenizer_dir, "tokenizer")
        model.setdefault("vocab_size", needed)
        check_vocab(model, needed)
    except ConfigError as error:
        raise StageError(str(error)) from None
    return model


def check_val_size(val_tokens: int, train: dict, stage_config: dict) -> None:
    """litgpt's validation needs at least one full batch of windows in the val shards."""
    needed = train["micro_batch_size"] * (train["max_seq_length"] + 1)
    if val_tokens < needed:
        raise StageError(
            f"corpus.split.val_size: the val split has {val_tokens} tokens, fewer than one validation batch"
            f" (train.micro_batch_size {train['micro_batch_size']} x (train.max_seq_length"
            f" {train['max_seq_length']} + 1) = {needed}); hold out more stories"
        )


# ---------------------------------------------------------------------------
# Running litgpt with resume


def step_checkpoints(out_dir: Path) -> list[Path]:
    """step-* checkpoints, latest first (the order litgpt's resume: auto picks them in)."""
    found = [p for p in out_dir.glob(f"step-*/{CHECKPOINT_NAME}") if p.parent.name.split("-")[1].isdigit()]
    return sorted(found, key=lambda p: int(p.parent.name.split("-")[1]), reverse=True)


def checkpoint_loads(path: Path) -> bool:
    import torch

    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception:  # noqa: BLE001 - any failure to read means the file cannot be resumed from
        return False
    return isinstance(state, dict) and "model" in state and "iter_num" in state


def set_aside_corrupt_checkpoints(out_dir: Path) -> list[Path]:
    """Rename unloadable latest checkpoints to corrupt-step-*, so resume falls back to the previous one."""
    moved = []
    for checkpoint in step_checkpoints(out_dir):
        if checkpoint_loads(checkpoint):
            break
        target = checkpoint.parent.with_name(f"corrupt-{checkpoint.parent.name}-{int(time.time())}")
        checkpoint.parent.rename(target)
        print(f"WARNING: {checkpoint} cannot be loaded (interrupted while saving?); moved it to {target} and"
              " resuming from the previous checkpoint instead", file=sys.stderr, flush=True)
        moved.append(target)
    return moved


# ---------------------------------------------------------------------------
# Resuming only the same work


def fingerprint_files(config_path: Path, litgpt_config: dict) -> dict[str, Path]:
    """What a checkpoint was trained on: the rendered config and the shards' indexes.

    The stage hash alone does not say it: an edited corpus file or `--forcerun` rebuilds the shards
    in the same folders, and resuming an old step-* then trains on with the old data's weights.
    litdata's index lists every chunk with its size and token count (and when it was written).
    """
    shards = Path(litgpt_config["data"]["init_args"]["data_path"])
    files = {PRETRAIN_CONFIG: config_path, **{f"shards/{split}/index.json": shards / split / "index.json"
                                              for split in ("train", "val")}}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise StageError(f"{missing[0]}: missing (run the shards stage)")
    return files


def training_work(out_dir: Path) -> list[Path]:
    """What a training leaves in its folder: checkpoints, logs, final/ (not its config, record or lock)."""
    return sorted(p for p in out_dir.iterdir() if p.name.startswith("step-") or p.name in WORK)


def set_aside_stale_work(out_dir: Path, files: dict[str, Path]) -> Path | None:
    """Move the work of a different training (another config or other shards) to stale-<time>/, so
    that litgpt starts afresh instead of resuming it; then record this training's fingerprint.

    Work from before fingerprints were recorded is kept when nothing it was trained on changed after
    it (every fingerprinted file is older than the work); the folder it is moved to is returned.
    """
    fingerprint = {name: file_sha256(path) for name, path in files.items()}
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


def older_than(sources: list[Path], work: list[Path]) -> bool:
    return max(p.stat().st_mtime for p in sources) < min(p.stat().st_mtime for p in work)


def record_environment(out_dir: Path) -> None:
    """Each part of a (resumed) training appends the machine it ran on to environment.json."""
    from storylm.environment import describe

    path = out_dir / ENVIRONMENT
    parts = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    write_json(path, [*parts, describe()])


def litgpt_env() -> dict:
    env = dict(os.environ)
    # wandb without an API key would prompt for one; log offline instead (sync later with `wandb sync`).
    # It writes to ./wandb/: Lightning's WandbLogger passes save_dir="." to wandb.init.
    if not env.get("WANDB_API_KEY") and "WANDB_MODE" not in env:
        env["WANDB_MODE"] = "offline"
    return env


def launch_command(config_path: Path, out_dir: Path, srun_args: str | None = None) -> list[str]:
    """litgpt pretrain; inside a Slurm job with several tasks, under srun with one process per device.

    This wrapper runs once per job (so checkpoints are checked once, without races) and srun starts
    the devices x num_nodes litgpt processes that Lightning expects. The srun options are explicit
    because Snakemake's job step clears the job's SLURM_* task settings.
    """
    # out_dir made absolute on the command line: litgpt's checkpoint saving parses its config with
    # jsonargparse, which briefly changes the working directory, and the tensorboard logger's writer
    # thread would then miss a relative log path. The YAML itself stays relative and portable.
    command = ["litgpt", "pretrain", "--config", str(config_path), "--out_dir", str(out_dir.resolve())]
    if srun_args and "SLURM_JOB_ID" in os.environ:
        command = ["srun", "--kill-on-bad-exit=1", *shlex.split(srun_args), *command]
    return command


def run(config_path: Path, srun_args: str | None = None, log_path: Path | None = None) -> int:
    """Run litgpt pretrain on a rendered config; returns its exit code. Signals are passed on to litgpt.

    The stage folder is locked for the whole run (storylm.stagelock): a second run refuses to start.
    """
    litgpt_config = yaml.safe_load(config_path.read_text())
    out_dir = Path(litgpt_config["out_dir"])
    with stage_lock(out_dir, "storylm.pretrain run") as lock:
        set_aside_stale_work(out_dir, fingerprint_files(config_path, litgpt_config))
        set_aside_corrupt_checkpoints(out_dir)
        record_environment(out_dir)
        resume_from = step_checkpoints(out_dir)
        print(f"resuming from {resume_from[0]}" if resume_from else "no step-* checkpoint: starting from scratch",
              flush=True)
        command = launch_command(config_path, out_dir, srun_args)
        print("running: " + shlex.join(command), flush=True)
        # litgpt gets the default SIGINT handling even where this job was started with SIGINT ignored
        # (a shell's background job, a pytest-xdist worker): an ignored SIGINT is inherited, and litgpt
        # would then ignore the SIGINT passed on below and train to the end. It inherits the lock too,
        # so the folder stays locked while it trains, even if this process is killed.
        process = subprocess.Popen(command, env=litgpt_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, bufsize=1, start_new_session=True, pass_fds=(lock,),
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        note(lock, f"process {os.getpid()} (storylm.pretrain run) and its litgpt, process {process.pid}")
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda s, _frame: process.send_signal(s))
        # The live log is kept beside the checkpoints and appended to, so a resumed run's log continues.
        live = log_path or out_dir / LIVE_LOG
        with open(live, "a", encoding="utf-8") as log:
            for line in process.stdout:
                sys.stdout.write(line)
                log.write(line)
                log.flush()
        returncode = process.wait()
        if returncode == 0:
            with atomic_path(out_dir / TRAIN_LOG) as tmp:
                shutil.copyfile(live, tmp)
    return returncode


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    render_parser = commands.add_parser("render", help="write the litgpt pretrain YAML")
    render_parser.add_argument("--record", required=True, help="JSON stage record (settings and input hashes)")
    render_parser.add_argument("--shards", type=Path, required=True)
    render_parser.add_argument("--tokenizer", type=Path, required=True)
    render_parser.add_argument("--out-dir", type=Path, required=True, help="litgpt out_dir of this run")
    render_parser.add_argument("--output", type=Path, required=True, help="the YAML file to write")
    run_parser = commands.add_parser("run", help="run litgpt pretrain on a rendered YAML, resuming if possible")
    run_parser.add_argument("--config", type=Path, required=True)
    run_parser.add_argument("--srun-args", help="srun options for a multi-process Slurm job (ignored outside Slurm)")
    args = parser.parse_args(argv)

    if args.command == "render":
        record = json.loads(args.record)
        litgpt_config = render(record["config"], args.shards, args.tokenizer, args.out_dir)
        header = ("# litgpt pretrain config rendered by the storylm pipeline; rerun by hand from the repository root"
                  f" with:\n#   litgpt pretrain --config {args.output}\n")
        write_text(args.output, header + yaml.safe_dump(litgpt_config, sort_keys=False, allow_unicode=True))
        write_record(args.record, args.out_dir)  # last: a folder with its record has its litgpt config
    else:
        sys.exit(run(args.config, args.srun_args))


if __name__ == "__main__":
    exit_with(main)
