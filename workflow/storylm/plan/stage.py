"""One protocol for every stage command: its record and files given once, its folder locked, its record written last.

A stage command is its own logic plus one call:

    def main(argv=None):
        stage_main(stage_parser("python -m storylm.tokenizer", __doc__), build_stage, argv, "tokenizer")

`stage_main` parses the command line, reads --record (the stage's settings and the hashes it was
built from, as JSON: storylm.plan.stages.records) and checks it, reads --inputs (the files it reads,
by role, as the plan resolves them: storylm.plan.stages uses), holds the folder's lock
(storylm.io.stagelock) while the stage runs, then writes environment.json (the machine it ran on,
storylm.io.environment) and, last, the record as config.json: a folder with its record is a finished
stage, and a stage killed before the end leaves none. `run(args, config)` gets the parsed arguments,
with `args.files` (StageFiles: a file it reads or writes, by role), and the record's settings, and
returns the summary the command prints. A stage's first steps (pretrain's litgpt config, sample's
prompt check) and the commands that write their folder whole (the downloads, the export) take the same
arguments through `run_step`, which writes no record.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from storylm.io.contents import digest, list_files
from storylm.io.entry import RECORD, StageError, first_line, read_json, write_json
from storylm.io.environment import ENVIRONMENT, describe
from storylm.io.filehash import HashCache
from storylm.io.stagelock import LOCK_FILE, is_locked, stage_lock
from storylm.model.litgpt_train import SAVING_PREFIX
from storylm.model.training_runner import FINGERPRINT, TRAIN_LOG, WORK
from storylm.plan import stages

RECORD_KEYS = ("stage", "hash", "inputs", "config")  # what storylm.plan.stages.records writes


def stage_parser(prog: str, doc: str | None, out_help: str = "the stage's folder") -> argparse.ArgumentParser:
    """A stage command's parser with the two arguments every stage takes: --record and --out."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stage_arguments(parser, out_help)
    return parser


def add_stage_arguments(parser: argparse.ArgumentParser, out_help: str = "the stage's folder") -> None:
    parser.add_argument("--record", required=True, help="JSON stage record (settings and input hashes)")
    parser.add_argument("--inputs", default="{}", help="JSON: the files it reads, by role (storylm.plan.stages uses)")
    parser.add_argument("--out", type=Path, required=True, help=out_help)


@dataclass(frozen=True)
class StageFiles:
    """A stage command's files by role: those it reads (--inputs, resolved by the plan) and those it writes
    (in --out, named by the stage table), so no command spells a stage file's name."""

    stage: str
    folder: Path
    inputs: dict[str, Path]

    def input(self, role: str) -> Path:
        if role not in self.inputs:
            raise StageError(f"--inputs: no {role!r} file (the {self.stage} stage reads it)")
        return self.inputs[role]

    def optional(self, role: str) -> Path | None:
        """A role only some runs give (the raw files of a downloaded corpus), or None."""
        return self.inputs.get(role)

    def output(self, role: str) -> Path:
        return stage_file(self.stage, self.folder, role)


def stage_file(stage: str, folder: Path, role: str) -> Path:
    """The file of `role` in a `stage` folder, as the stage table names it (for a function given a folder)."""
    return Path(stages.outputs(stage, str(folder), (role,))[role])


def read_inputs(text: str) -> dict[str, Path]:
    """The --inputs argument: {role: file}; a config error names --inputs."""
    try:
        inputs = json.loads(text)
    except json.JSONDecodeError as error:
        raise StageError(f"--inputs: not valid JSON ({first_line(error)})") from None
    if not isinstance(inputs, dict) or not all(isinstance(path, str) for path in inputs.values()):
        raise StageError("--inputs: not a JSON object of role: file")
    return {role: Path(path) for role, path in inputs.items()}


def read_record(text: str, stage: str | None = None) -> dict:
    """The --record argument as a dict, checked: a config error names --record and what is wrong."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise StageError(f"--record: not valid JSON ({first_line(error)})") from None
    if not isinstance(record, dict):
        raise StageError("--record: not a JSON object")
    missing = [key for key in RECORD_KEYS if key not in record]
    if missing:
        raise StageError(f"--record: no {', '.join(missing)} (a stage record has {', '.join(RECORD_KEYS)})")
    if not isinstance(record["config"], dict):
        raise StageError("--record: config is not a JSON object")
    if stage is not None and record["stage"] != stage:
        raise StageError(f"--record: the record of stage {record['stage']!r}, given to the {stage} command")
    return record


def log_record(record: dict) -> None:
    """The record as the first line of the job's log (its stdout): Snakemake no longer prints each job's
    command, so the settings a job ran with are read here, in plain characters, or in config.json."""
    print("record: " + json.dumps(record, ensure_ascii=False, sort_keys=True), flush=True)


def finish_stage(folder: Path, record: dict, record_name: str = RECORD, environment: str | None = ENVIRONMENT) -> None:
    """The machine the stage ran on, then its record: the record last, after every other output.

    The record lists the folder's files (size and sha256) and, for each stage folder it read, a digest of
    that folder's list: the plan checks both before each run (storylm.plan.integrity)."""
    if environment is not None:
        write_json(Path(folder) / environment, describe())
    with HashCache() as cache:
        files = list_files(folder, lambda relative: unlisted(relative, record_name), cache)
    write_json(Path(folder) / record_name, {**record, "files": files, "read": read_digests(record, folder)})


# Not among the files a stage provides: its lock and record, the machine it ran on, temporary files (atomic
# writes), and a training's work in progress (checkpoints, live logs).
UNLISTED_NAMES = {LOCK_FILE, ENVIRONMENT, *(set(WORK) - {"final", TRAIN_LOG}), FINGERPRINT}
UNLISTED_PREFIXES = (".", "step-", "stale-", "corrupt-", SAVING_PREFIX)


def unlisted(relative: str, record_name: str) -> bool:
    """Whether a file of a stage folder (its path inside it) is left out of the record's list."""
    top = relative.split("/", 1)[0]
    return top in UNLISTED_NAMES or top == record_name or top.startswith(UNLISTED_PREFIXES)


def read_digests(record: dict, folder: Path) -> dict[str, str | None]:
    """For each stage folder the record's stage read: the digest of that folder's file list (None for a
    folder whose record lists no files, written before files were listed, or that is not found)."""
    found = {}
    for name, hash_ in record.get("inputs", {}).items():
        files = listed_files(upstream_folder(folder, record.get("stage"), name, hash_), name)
        found[name] = None if files is None else digest(files)
    return found


def upstream_folder(folder: Path, stage: str | None, name: str, hash_: str) -> Path:
    """The `name` folder with `hash_` beside a stage folder: from the root its stage's folders hang from (a
    stage folder is <root>/<its table parent>/<hash>), so it is found whatever the working directory."""
    depth = len(Path(stages.BY_NAME[stage].parent).parts) + 1 if stage in stages.BY_NAME else 0
    parents = Path(folder).parents
    root = parents[depth - 1] if 0 < depth <= len(parents) else Path()
    return root / stages.folder(name, hash_)


def finished_record(folder: Path, stage: str) -> dict | None:
    """A stage folder's record, or None when it has none (not finished, or a download, which keeps none);
    ValueError when it is there but not a JSON object."""
    if not stages.BY_NAME[stage].record:
        return None
    path = Path(folder) / stages.BY_NAME[stage].record
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(record, dict):
        raise ValueError(f"{path}: not a JSON object")
    return record


def listed_files(folder: Path, stage: str) -> dict | None:
    """The files a finished folder's record lists; None when it has no record or lists none."""
    try:
        record = finished_record(folder, stage)
    except (OSError, ValueError):
        return None
    return record.get("files") if record else None


def start_pending(folder: Path, stage: str, record: dict) -> None:
    """After a first step (pretrain's litgpt config): the record kept aside for the last step, and any
    earlier record removed, so the folder reads as unfinished until its last step ends."""
    write_json(pending_record(folder, stage), record)
    (Path(folder) / stages.BY_NAME[stage].record).unlink(missing_ok=True)


def pending_settings(folder: Path, stage: str) -> dict:
    """The settings of a stage's record, pending or finished; {} where it has none (a litgpt config
    trained by hand, outside the pipeline)."""
    for path in (pending_record(folder, stage), Path(folder) / stages.BY_NAME[stage].record):
        if path.is_file():
            return read_json(path, "the stage record").get("config", {})
    return {}


def finish_pending(folder: Path, stage: str) -> None:
    """The last step of a stage built in several: its pending record written as its record, with the
    folder's files listed. (A folder whose record was written with its first step, before pending records,
    gets that record rewritten with its files; one trained by hand, outside the pipeline, has none.)"""
    pending, finished = pending_record(folder, stage), Path(folder) / stages.BY_NAME[stage].record
    source = pending if pending.is_file() else finished
    if not source.is_file():
        return
    record = {key: value for key, value in read_json(source, "the stage record").items()
              if key not in ("files", "read")}
    finish_stage(folder, record, finished.name, environment=None)
    pending.unlink(missing_ok=True)


Run = Callable[[argparse.Namespace, dict], "str | None"]


def remove_if_empty(folder: Path) -> None:
    """Remove a folder that holds nothing but its free lock file."""
    lock = folder / LOCK_FILE
    if {p.name for p in folder.iterdir()} <= {LOCK_FILE} and not is_locked(folder):
        lock.unlink(missing_ok=True)
        folder.rmdir()


def stage_main(parser: argparse.ArgumentParser, run: Run, argv: list[str] | None = None,
               stage: str | None = None) -> None:
    """Parse, check the record, and run the stage under its folder's lock; write the record last."""
    run_in_folder(parser.parse_args(argv), run, stage, parser.prog)


def checked_record(args: argparse.Namespace, stage: str | None) -> dict:
    """The record of parsed protocol arguments, checked and logged; args.files set to the stage's files."""
    record = read_record(args.record, stage)
    args.files = StageFiles(record["stage"], args.out, read_inputs(args.inputs))
    args.stage_record = record  # for a stage that writes its record itself (the export, inside its folder)
    log_record(record)
    return record


def run_step(args: argparse.Namespace, run: Run, stage: str | None) -> dict:
    """A step of a stage before its last (pretrain's litgpt config, sample's prompt check): the protocol's
    record and files, but no record written: the folder is not finished. Returns the record."""
    record = checked_record(args, stage)
    summary = run(args, record["config"])
    if summary:
        print(summary)
    return record


def pending_record(folder: Path, stage: str) -> Path:
    """Where a stage built in several steps keeps its record until its last step finishes it (hidden, so no
    file list holds it): pretrain's, from its litgpt config to the end of training."""
    return Path(folder) / f".{stages.BY_NAME[stage].record}.pending"


def run_in_folder(args: argparse.Namespace, run: Run, stage: str | None, command: str) -> None:
    """The protocol for parsed arguments (a command with subcommands parses them itself)."""
    record = checked_record(args, stage)
    made = not args.out.exists()
    try:
        with stage_lock(args.out, command):  # one writer of the folder at a time
            summary = run(args, record["config"])
            finish_stage(args.out, record)
    except BaseException:
        if made:  # a stage that failed before writing anything leaves no folder behind
            remove_if_empty(args.out)
        raise
    if summary:
        print(summary)
