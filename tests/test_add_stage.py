"""Adding a stage is one table row, one schema section, one rule file and one module (docs/development.md,
"Adding a stage"): a throwaway stage added so to a copy of the workflow is planned, run and cached like
the others, with no other file touched."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import copy_workflow, dry_run_jobs, snakemake, tiny_config, write_config
from storylm.io.contents import digest
from storylm.io.filehash import file_sha256

pytestmark = pytest.mark.slow

ROW = '''    StageSpec("charcount", "Data/charcount", ("corpus",), lambda config: config["charcount"], {"charcount": None},
              provides={"char counts": "counts.json"}),
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

RULES = '''# The charcount stage: how many train stories are long enough.


rule charcount:
    input:
        train=role("charcount", "train split"),
    output:
        counts=stage_file("charcount", "counts.json"),
    log:
        log_path("charcount"),
    wildcard_constraints:
        hash=hash_pattern("charcount"),
    params:
        record=record("charcount"),
        out=output_dir("counts"),
    shell:
        "python -m storylm.charcount --record {params.record:q} --train {input.train} --out {params.out} > {log} 2>&1"
'''

MODULE = '''"""How many train stories hold at least charcount.min_characters characters."""

import argparse
from pathlib import Path

from storylm.io.entry import exit_with, write_json
from storylm.io.jsonl import iter_texts
from storylm.plan.stage import stage_main, stage_parser


def count(args: argparse.Namespace, config: dict) -> str:
    lengths = [len(text) for text in iter_texts(args.train)]
    counts = {"stories": len(lengths), "long_enough": sum(n >= config["min_characters"] for n in lengths)}
    write_json(args.out / "counts.json", counts)
    return json.dumps(counts)


def main(argv=None) -> None:
    parser = stage_parser("python -m storylm.charcount", __doc__)
    parser.add_argument("--train", type=Path, required=True)
    stage_main(parser, count, argv, "charcount")


if __name__ == "__main__":
    exit_with(main)
'''.replace("import argparse\n", "import argparse\nimport json\n")


def add_stage(workdir):
    """The four additions, each where the walk-through says; returns the files they touched."""
    table = workdir / "workflow/storylm/plan/stages.py"
    text = table.read_text(encoding="utf-8")
    end = text.index("\n)\n\nBY_NAME")
    table.write_text(text[:end] + "\n" + ROW.rstrip("\n") + text[end:], encoding="utf-8")
    schema = workdir / "config/schema.yaml"
    schema.write_text(schema.read_text(encoding="utf-8").rstrip("\n") + "\n" + SCHEMA, encoding="utf-8")
    (workdir / "workflow/rules/charcount.smk").write_text(RULES, encoding="utf-8")
    (workdir / "workflow/storylm/charcount.py").write_text(MODULE, encoding="utf-8")
    return {table, schema, workdir / "workflow/rules/charcount.smk", workdir / "workflow/storylm/charcount.py"}


def plan_hash(workdir, stage: str) -> str:
    code = ("import json; from storylm.plan.runs import load_config, plan; "
            "print(json.dumps(plan(load_config()).run_hashes('default')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(workdir / "workflow")})
    return json.loads(done.stdout)[stage]


def snapshot(workdir) -> dict:
    return {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file() and ".snakemake" not in p.parts
            and "Data" not in p.parts and "logs" not in p.parts and "__pycache__" not in p.parts}


def test_a_stage_added_as_the_guide_says_is_planned_run_and_cached(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    config = tiny_config()
    write_config(workdir, config)
    before = snapshot(workdir)
    touched = add_stage(workdir)
    after = snapshot(workdir)
    assert {p for p in after if after[p] != before.get(p)} == touched  # nothing else changed

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
