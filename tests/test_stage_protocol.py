"""One protocol for every stage command (storylm.plan.stage): the record checked once, the folder locked while the
stage runs, environment.json and the record written last, and nothing of the record when the stage fails."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from storylm import corpus, download, evaluate, export, pretrain, sample, shards, tokenizer
from storylm.io.entry import StageError, run_stage
from storylm.io.stagelock import LOCK_FILE, holders, is_locked, stage_lock
from storylm.plan import stage

RECORD = {"stage": "demo", "hash": "0123456789", "inputs": {"corpus": "abcdefabcd"}, "config": {"size": 3}}


def demo_parser():
    return stage.stage_parser("python -m storylm.demo", "A stage for the test.")


def test_a_stage_writes_its_outputs_the_machine_and_its_record_last(tmp_path):
    out = tmp_path / "demo"
    seen = {}

    def run(args, config):
        seen.update(config=config, locked=is_locked(args.out))
        (args.out / "result.txt").write_text("x" * config["size"])
        return "done"

    stage.stage_main(demo_parser(), run, ["--record", json.dumps(RECORD), "--out", str(out)], "demo")
    assert seen == {"config": {"size": 3}, "locked": True}
    # The record, with the files the folder provides (size, sha256 of "xxx") and the folders it read (a
    # corpus folder with no record here: None).
    assert json.loads((out / "config.json").read_text()) == {
        **RECORD, "files": {"result.txt": [3, hashlib.sha256(b"xxx").hexdigest()]}, "read": {"corpus": None}}
    environment = json.loads((out / "environment.json").read_text())
    assert set(environment) == {"torch_threads", "omp_num_threads", "cpu", "gpus", "python", "versions"}
    # The record is the last output written: every other output is older or as old.
    outputs = [p for p in out.iterdir() if p.name != LOCK_FILE]
    assert all(p.stat().st_mtime_ns <= (out / "config.json").stat().st_mtime_ns for p in outputs)
    assert not is_locked(out)
    assert holders(out) == ""  # a finished stage names no process (two runs' folders are byte-equal)


def test_a_failed_stage_leaves_no_record_and_releases_its_folder(tmp_path):
    out = tmp_path / "demo"

    def run(args, config):
        (args.out / "half.txt").write_text("half")
        raise StageError("data.jsonl, line 3: not JSON")

    argv = ["--record", json.dumps(RECORD), "--out", str(out)]
    assert run_stage(lambda a: stage.stage_main(demo_parser(), run, a, "demo"), argv) == 1
    assert not (out / "config.json").exists() and not (out / "environment.json").exists()
    assert not is_locked(out)


def test_a_stage_refuses_a_folder_another_process_is_writing(tmp_path, capsys):
    out = tmp_path / "demo"
    ran = []
    with stage_lock(out, "the other writer"):
        argv = ["--record", json.dumps(RECORD), "--out", str(out)]
        assert run_stage(lambda a: stage.stage_main(demo_parser(), lambda *_: ran.append(1), a, "demo"), argv) == 1
    assert ran == [] and not (out / "config.json").exists()
    error = capsys.readouterr().err
    assert error.startswith(f"error: {out}: in use by process ") and "(the other writer)" in error


@pytest.mark.parametrize("text, message", [
    ("{not json", "--record: not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
    ("[1, 2]", "--record: not a JSON object"),
    ('{"stage": "demo", "config": {}}', "--record: no hash, inputs (a stage record has stage, hash, inputs, config)"),
    ('{"stage": "demo", "hash": "h", "inputs": {}, "config": 3}', "--record: config is not a JSON object"),
    ('{"stage": "corpus", "hash": "h", "inputs": {}, "config": {}}',
     "--record: the record of stage 'corpus', given to the demo command"),
])
def test_a_bad_record_is_one_line_naming_it(text, message):
    with pytest.raises(StageError) as error:
        stage.read_record(text, "demo")
    assert str(error.value) == message


# Each stage command (and step) with its stage and its own arguments; its files come by role (--inputs), so the
# paths need not exist: the record is read first.
COMMANDS = {
    "corpus": (corpus.main, "corpus", []),
    "tokenizer": (tokenizer.main, "tokenizer", []),
    "shards": (shards.main, "shards", []),
    "pretrain render": (pretrain.main, "pretrain", ["render"]),
    "evaluate": (evaluate.main, "evaluate", ["--seq-length", "8"]),
    "sample prompts": (sample.main, "sample", ["prompts", "--block-size", "8"]),
    "sample stories": (sample.main, "sample", ["stories", "--hashes", "{}"]),
    "export": (export.main, "export", []),
}
INPUTS = json.dumps({"final model": "c/lit_model.pth", "train split": "t.jsonl", "tokenizer": "t/tokenizer.json"})


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_stage_command_checks_its_record_before_it_reads_anything(name, tmp_path, capsys):
    main, stage_name, argv = COMMANDS[name]
    wrong = {**RECORD, "stage": "corpus" if stage_name != "corpus" else "shards"}
    out = tmp_path / "out"
    head, tail = (argv[:1], argv[1:]) if name.startswith(("sample", "pretrain")) else ([], argv)
    assert run_stage(main, [*head, "--record", json.dumps(wrong), "--inputs", INPUTS, "--out", str(out), *tail]) == 1
    assert capsys.readouterr().err == (f"error: --record: the record of stage {wrong['stage']!r}, given to the"
                                       f" {stage_name} command\n")
    assert not out.exists()  # nothing made, nothing locked


@pytest.mark.parametrize("text, message", [("[1]", "--inputs: not a JSON object of role: file"),
                                           ("{", "--inputs: not valid JSON (Expecting property name enclosed in"
                                                 " double quotes: line 1 column 2 (char 1))")])
def test_bad_inputs_are_one_line_naming_them(text, message, tmp_path, capsys):
    record = {**RECORD, "stage": "corpus"}
    assert run_stage(corpus.main, ["--record", json.dumps(record), "--inputs", text, "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err == f"error: {message}\n"


def test_a_file_a_stage_reads_is_named_by_its_role_when_missing(tmp_path, capsys):
    record = {**RECORD, "stage": "shards", "config": {"chunk_bytes": "1MB"}}
    assert run_stage(shards.main, ["--record", json.dumps(record), "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == "error: --inputs: no 'train split' file (the shards stage reads it)\n"


def test_no_command_parses_its_record_or_spells_its_protocol_arguments():
    """Every command, the downloads and the first steps (pretrain render, sample prompts) included, gets its
    record and its files through storylm.plan.stage: none reads --record or declares it."""
    for module in (corpus, download, tokenizer, shards, pretrain, evaluate, sample, export):
        text = Path(module.__file__).read_text(encoding="utf-8")
        for spelling in ('"--record"', "read_record(", "args.record", '"--out"', "--out-dir"):
            assert spelling not in text, f"{module.__name__} spells {spelling}"


def test_the_stage_commands_write_their_record_through_the_protocol_only():
    """No stage command writes config.json or environment.json by hand (one spelling, one place)."""
    for module in (corpus, tokenizer, shards, evaluate, sample, export):
        text = Path(module.__file__).read_text(encoding="utf-8")
        for spelling in ('"config.json"', '"environment.json"', "write_record", "json.loads(args.record)"):
            assert spelling not in text, f"{module.__name__} spells {spelling}"


def test_a_stage_of_several_steps_is_unfinished_from_its_first_step_to_its_last(tmp_path):
    """pretrain render keeps the record aside (and takes away an earlier one): a folder with its record is a
    finished training, not a rendered config; the training's end writes it, with the folder's files."""
    folder = tmp_path / "pretrain"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"stage": "pretrain", "hash": "old"}))
    record = {"stage": "pretrain", "hash": "0123456789", "inputs": {}, "config": {"seed": 1}}
    stage.start_pending(folder, "pretrain", record)
    assert not (folder / "config.json").exists() and stage.finished_record(folder, "pretrain") is None
    assert stage.pending_settings(folder, "pretrain") == {"seed": 1}
    (folder / "train.log").write_text("done\n")
    stage.finish_pending(folder, "pretrain")
    written = stage.finished_record(folder, "pretrain")
    assert {key: written[key] for key in record} == record
    assert written["files"] == {"train.log": [5, hashlib.sha256(b"done\n").hexdigest()]}
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "train.log"]
