"""One protocol for every stage command (storylm.plan.stage): the record checked once, the folder locked while the
stage runs, environment.json and the record written last, and nothing of the record when the stage fails."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from storylm import corpus, evaluate, export, sample, shards, tokenizer
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


# Each stage command with its required arguments (the paths need not exist: the record is read first).
COMMANDS = {
    "corpus": (corpus.main, []),
    "tokenizer": (tokenizer.main, []),
    "shards": (shards.main, ["--corpus", "c", "--tokenizer", "t"]),
    "evaluate": (evaluate.main, ["--checkpoint", "c", "--shards", "s", "--train-log", "l", "--seq-length", "8"]),
    "sample": (sample.main, ["stories", "--hashes", "{}", "--checkpoint", "c", "--train", "t"]),
    "export": (export.main, ["--checkpoint", "c"]),
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_stage_command_checks_its_record_before_it_reads_anything(name, tmp_path, capsys):
    main, argv = COMMANDS[name]
    wrong = {**RECORD, "stage": "pretrain"}
    out = tmp_path / "out"
    head, tail = (argv[:1], argv[1:]) if name == "sample" else ([], argv)
    assert run_stage(main, [*head, "--record", json.dumps(wrong), "--out", str(out), *tail]) == 1
    assert capsys.readouterr().err == f"error: --record: the record of stage 'pretrain', given to the {name} command\n"
    assert not out.exists()  # nothing made, nothing locked


def test_the_stage_commands_write_their_record_through_the_protocol_only():
    """No stage command writes config.json or environment.json by hand (one spelling, one place)."""
    for module in (corpus, tokenizer, shards, evaluate, sample, export):
        text = Path(module.__file__).read_text(encoding="utf-8")
        for spelling in ('"config.json"', '"environment.json"', "write_record", "json.loads(args.record)"):
            assert spelling not in text, f"{module.__name__} spells {spelling}"
