"""Adding a stage: a leaf stage (one no other stage reads) is four files with CI green, a stage in the middle of
the chain five (docs/development.md, "Adding a stage"). A throwaway leaf stage added so to a copy of the repository
is planned, run and cached like the others, and the project's own convention tests pass there: the docs and the
module map, the pinned folders, the roles, the lint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, dry_run_jobs, snakemake, tiny_config, write_config
from storylm.io.contents import digest
from storylm.io.filehash import file_sha256

pytestmark = pytest.mark.slow

ROW = '''    StageSpec("charcount", "Data/charcount", ("corpus",), lambda config: config["charcount"], {"charcount": None},
              provides={"char counts": "counts.json"}, uses=("train split",)),
'''

SCHEMA = '''
  charcount:
    description: How many train stories hold at least min_characters characters (a throwaway stage of a test).
    type: object
    additionalProperties: false
    default: {}
    properties:
      min_characters:
        description: The shortest story counted, in characters.
        type: integer
        minimum: 0
        default: 1
'''

MODULE = '''"""The charcount stage: how many train stories hold at least charcount.min_characters characters."""

import argparse
import json

from storylm.io.entry import exit_with, write_json
from storylm.io.jsonl import iter_texts
from storylm.plan.stage import stage_main, stage_parser


def count(args: argparse.Namespace, config: dict) -> str:
    lengths = [len(text) for text in iter_texts(args.files.input("train split"))]
    counts = {"stories": len(lengths), "long_enough": sum(n >= config["min_characters"] for n in lengths)}
    write_json(args.files.output("char counts"), counts)
    return json.dumps(counts)


def main(argv=None) -> None:
    stage_main(stage_parser("python -m storylm.charcount", __doc__), count, argv, "charcount")


if __name__ == "__main__":
    exit_with(main)
'''

# The project's convention tests, as CI runs them (the fast ones): the docs, the module map and the layers,
# dead code, the stage table's pins, keys, roles and rule files.
CONVENTION_TESTS = ("tests/test_docs.py", "tests/test_stages.py", "tests/test_stage_protocol.py")


def copy_repository(dest):
    """Every file git tracks, as a fresh clone has them (the tests and docs included)."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in tracked.decode().split("\0"):
        if name and (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes((REPO / name).read_bytes())
    return dest


def in_copy(workdir, *command, timeout=900) -> subprocess.CompletedProcess:
    """A command in the copy, importing the copy's package (as CI does in its clone)."""
    env = {**os.environ, "PYTHONPATH": str(workdir / "workflow"),
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)


def add_stage(workdir):
    """The additions the guide lists for a leaf stage, each where it says; returns the files they touched."""
    table = workdir / "workflow/storylm/plan/stages.py"
    text = table.read_text(encoding="utf-8")
    end = text.index("\n)\n\nBY_NAME")
    table.write_text(text[:end] + "\n" + ROW.rstrip("\n") + text[end:], encoding="utf-8")
    schema = workdir / "config/schema.yaml"
    schema.write_text(schema.read_text(encoding="utf-8").rstrip("\n") + "\n" + SCHEMA, encoding="utf-8")
    (workdir / "workflow/storylm/charcount.py").write_text(MODULE, encoding="utf-8")
    docs = in_copy(workdir, sys.executable, "-m", "storylm.config_docs")  # config/README.md's table, rewritten
    assert docs.returncode == 0, docs.stderr
    return {table, schema, workdir / "workflow/storylm/charcount.py", workdir / "config/README.md"}


def plan_hash(workdir, stage: str) -> str:
    code = ("import json; from storylm.plan.runs import load_config, plan; "
            "print(json.dumps(plan(load_config()).run_hashes('default')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(workdir / "workflow")})
    return json.loads(done.stdout)[stage]


def snapshot(workdir) -> dict:
    return {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file() and ".snakemake" not in p.parts
            and "Data" not in p.parts and "logs" not in p.parts and "__pycache__" not in p.parts}


def test_a_leaf_stage_is_four_files_with_the_projects_own_tests_green(tmp_path):
    """The four files, and nothing else: the convention tests, ruff, snakefmt and snakemake --lint pass."""
    workdir = copy_repository(tmp_path / "repo")
    before = snapshot(workdir)
    touched = add_stage(workdir)
    after = snapshot(workdir)
    assert {p for p in after if after[p] != before.get(p)} == touched  # nothing else changed
    tests = in_copy(workdir, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m",
                    "not slow and not slurm", *CONVENTION_TESTS)
    assert tests.returncode == 0, tests.stdout[-5000:]
    for lint in (["ruff", "check", "."], ["snakefmt", "--check", "."], ["snakemake", "--lint"],
                 [sys.executable, "-m", "storylm.config_docs", "--check"]):
        done = in_copy(workdir, *lint)
        assert done.returncode == 0, (lint, done.stdout[-3000:], done.stderr[-3000:])


def test_a_stage_added_as_the_guide_says_is_planned_run_and_cached(tmp_path):
    workdir = copy_repository(tmp_path / "repo")
    config = tiny_config()
    write_config(workdir, config)
    add_stage(workdir)

    corpus, charcount = plan_hash(workdir, "corpus"), plan_hash(workdir, "charcount")
    target = f"Data/charcount/{charcount}/counts.json"
    snakemake(workdir, "--cores", "2", target)
    counts = json.loads((workdir / target).read_text())
    stories = json.loads((workdir / f"Data/corpus/{corpus}/stats.json").read_text())["train"]["stories"]
    assert counts == {"stories": stories, "long_enough": stories}
    record = json.loads((workdir / f"Data/charcount/{charcount}/config.json").read_text())
    assert {key: value for key, value in record.items() if key not in ("files", "read")} == {
        "stage": "charcount", "hash": charcount, "inputs": {"corpus": corpus}, "config": {"min_characters": 1}}
    # The protocol lists the folder's files and the digest of the folder it read, for the run's integrity check.
    counts_file = workdir / target
    assert record["files"] == {"counts.json": [counts_file.stat().st_size, file_sha256(counts_file)]}
    corpus_record = json.loads((workdir / f"Data/corpus/{corpus}/config.json").read_text())
    assert record["read"] == {"corpus": digest(corpus_record["files"])}
    assert (workdir / f"Data/charcount/{charcount}/environment.json").is_file()

    # Cached on its settings: the same config plans nothing; a changed setting is a new folder.
    assert dry_run_jobs(workdir, target) == {}
    config["charcount"] = {"min_characters": 10_000}
    write_config(workdir, config)
    longer = plan_hash(workdir, "charcount")
    assert longer != charcount and plan_hash(workdir, "corpus") == corpus
    snakemake(workdir, "--cores", "2", f"Data/charcount/{longer}/counts.json")
    assert json.loads((workdir / f"Data/charcount/{longer}/counts.json").read_text()) == {
        "stories": stories, "long_enough": 0}
