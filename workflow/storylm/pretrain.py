"""The pretrain stage: render a litgpt pretrain YAML, then run `litgpt pretrain --config` on it.

`render` writes a complete config a user can rerun by hand from the repository root:
`litgpt pretrain --config results/pretrain/<hash>/pretrain.yaml`.

`run` trains on it through storylm.model.training_runner, with `resume: auto`: the folder locked, only
the same work resumed (the config and the shards' indexes fingerprinted), a damaged latest
checkpoint set aside, a resumable checkpoint saved at a signal or before a Slurm job's end, and
the job requeued to go on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import yaml

from storylm.io.entry import StageError, atomic_dir, exit_with, write_text
from storylm.model import training_runner
from storylm.model.precision import litgpt_setting
from storylm.plan.added_keys import TOP, with_added_defaults
from storylm.plan.config import ConfigError, check_vocab, directory_vocab_size
from storylm.plan.integrity import require_intact
from storylm.plan.stage import (
    add_stage_arguments,
    finish_pending,
    pending_settings,
    run_step,
    stage_file,
    start_pending,
)
from storylm.plan.stages import CONTINUE_KEY, INITIAL_MODEL


def train_max_tokens(train: dict, train_tokens: int) -> int:
    """The token budget: max_tokens when given, else epochs over the train shards."""
    if train.get("max_tokens"):
        return int(train["max_tokens"])
    return int(train["epochs"] * train_tokens)


def render(stage_config: dict, shards_dir: Path, tokenizer_dir: Path, out_dir: Path) -> dict:
    """The litgpt pretrain config for this stage's settings; every path relative to the repository root."""
    shard_stats = json.loads(stage_file("shards", shards_dir, "shards").read_text())
    train = {key: value for key, value in stage_config["train"].items() if key != "epochs" and value is not None}
    train["max_tokens"] = train_max_tokens(stage_config["train"], shard_stats["train_tokens"])
    check_val_size(shard_stats["val_tokens"], train, stage_config)
    model_config = model_with_vocab(stage_config["model_config"], tokenizer_dir)
    litgpt_config = {
        "model_name": model_config["name"],
        "model_config": model_config,
        "out_dir": str(out_dir),
        "precision": litgpt_setting(stage_config["precision"]),
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


INITIAL_DIR = "initial"  # a continued training's starting weights, beside its checkpoints


def continue_from(litgpt_config: dict, initial_model: Path, out_dir: Path) -> None:
    """Continued pretraining: litgpt loads the upstream training's final weights before its first step.

    litgpt's `initial_checkpoint_dir` takes model weights alone, where a pretraining's final/ holds its
    whole state (optimizer, data position): litgpt's own convert_pretrained_checkpoint extracts them into
    <out_dir>/initial/. litgpt refuses `initial_checkpoint_dir` beside a `resume`, so the config says
    `resume: false` (rerun by hand, it starts from the upstream model); the training runner resumes a
    stopped part from its own step-* instead (storylm.model.training_runner.resume_arguments). The model
    must have the upstream's shape: the plan checks the configs (storylm.plan.runs.check_continuation),
    this the upstream model's own file."""
    from litgpt.scripts.convert_pretrained_checkpoint import convert_pretrained_checkpoint  # seconds: continued only

    from storylm.model.checkpoint import MODEL_CONFIG

    final = initial_model.parent
    require_intact("pretrain", final.parent)
    theirs = yaml.safe_load((final / MODEL_CONFIG).read_text(encoding="utf-8"))
    ours = litgpt_config["model_config"]
    for key in sorted(set(ours) & set(theirs)):
        if ours[key] != theirs[key]:
            raise StageError(f"{CONTINUE_KEY}: model_config.{key} is {ours[key]!r} here, but {theirs[key]!r} in"
                             f" {final / MODEL_CONFIG}, the model this training continues")
    with atomic_dir(out_dir / INITIAL_DIR) as converted, contextlib.redirect_stdout(sys.stderr):
        converted.rmdir()  # litgpt's converter makes its folder itself and refuses one that exists
        convert_pretrained_checkpoint(final, converted)
    litgpt_config["initial_checkpoint_dir"] = str(out_dir / INITIAL_DIR)
    litgpt_config["resume"] = False


def fingerprint_files(config_path: Path, litgpt_config: dict) -> dict[str, Path]:
    """What a checkpoint was trained on: the rendered config and the shards' indexes.

    The stage hash alone does not say it: an edited corpus file or `--forcerun` rebuilds the shards
    in the same folders, and resuming an old step-* then trains on with the old data's weights.
    litdata's index lists every chunk with its size and token count (and when it was written).
    """
    shards = Path(litgpt_config["data"]["init_args"]["data_path"])
    files = {config_path.name: config_path, **{f"shards/{split}/index.json": shards / split / "index.json"
                                               for split in ("train", "val")}}
    if litgpt_config.get("initial_checkpoint_dir"):  # a continued training: the weights it started from too
        files[INITIAL_MODEL] = Path(litgpt_config["initial_checkpoint_dir"]) / training_runner.CHECKPOINT_NAME
    return files


def strategy(config_path: Path) -> str:
    """The stage's `strategy`, from the record beside its config (the key is there only when not auto;
    litgpt's config has no place for it)."""
    return with_added_defaults(pending_settings(config_path.parent, "pretrain"), TOP)["strategy"]


def run(config_path: Path, srun_args: str | None = None) -> int:
    """litgpt pretrain on a rendered config, through the training runner (lock, resume, stop, requeue);
    the shards are checked against their list first, and a finished training lists its files."""
    litgpt_config = yaml.safe_load(config_path.read_text())
    require_intact("shards", Path(litgpt_config["data"]["init_args"]["data_path"]))
    returncode = training_runner.run(config_path, "pretrain", fingerprint_files(config_path, litgpt_config), srun_args,
                                     strategy(config_path))
    if returncode == 0:
        finish_pending(Path(litgpt_config["out_dir"]), "pretrain")  # last: a folder with its record is finished
    return returncode


def render_stage(args: argparse.Namespace, settings: dict) -> str:
    """The pretrain_config step: the litgpt config of the stage's settings, for its shards and tokenizer."""
    litgpt_config = render(settings, args.files.input("shards").parent, args.files.input("tokenizer").parent, args.out)
    initial = args.files.optional(INITIAL_MODEL)
    if initial is not None:
        continue_from(litgpt_config, initial, args.out)
    output = args.files.output("litgpt config")
    header = ("# litgpt pretrain config rendered by the storylm pipeline; rerun by hand from the repository root"
              f" with:\n#   litgpt pretrain --config {output}\n")
    write_text(output, header + yaml.safe_dump(litgpt_config, sort_keys=False, allow_unicode=True))
    return f"wrote {output}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_stage_arguments(commands.add_parser("render", help="write the litgpt pretrain YAML"), "litgpt out_dir")
    run_parser = commands.add_parser("run", help="run litgpt pretrain on a rendered YAML, resuming if possible")
    run_parser.add_argument("--config", type=Path, required=True)
    run_parser.add_argument("--srun-args", help="srun options for a multi-process Slurm job (ignored outside Slurm)")
    args = parser.parse_args(argv)

    if args.command == "render":
        # The record waits beside the litgpt config for the training's end: a folder with its record is a
        # finished training.
        start_pending(args.out, "pretrain", run_step(args, render_stage, "pretrain"))
    else:
        sys.exit(run(args.config, args.srun_args))


if __name__ == "__main__":
    exit_with(main)
