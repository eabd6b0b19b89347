"""workflow/benchmarks/first_run.py: each rule's seconds, read from what Snakemake prints."""

from __future__ import annotations

import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "workflow" / "benchmarks"))

from first_run import rule_seconds, table  # noqa: E402

# Snakemake 9's printed log of two jobs that overlap (evaluate and sample ran at once) and one after them.
LOG = """\
[Mon Dec  7 19:47:36 2026]
localrule evaluate:
    input: results/pretrain/d60d72558d/final/lit_model.pth
    jobid: 8
    resources: tmpdir=/tmp

[Mon Dec  7 19:47:37 2026]
localrule sample:
    input: results/sample/97b1649aa7/prompt_tokens.json
    jobid: 9
    resources: tmpdir=/tmp
sample: 4/4 stories (100%) | 0 s
[Mon Dec  7 19:47:43 2026]
Finished jobid: 9 (Rule: sample)
7 of 14 steps (50%) done
[Mon Dec  7 19:47:44 2026]
Finished jobid: 8 (Rule: evaluate)

[Mon Dec  7 19:47:44 2026]
localrule run_results:
    jobid: 1
[Mon Dec  7 19:48:46 2026]
Finished jobid: 1 (Rule: run_results)
"""


def test_each_rule_gets_the_seconds_from_its_start_to_its_end():
    assert rule_seconds(LOG) == {"sample": 6.0, "evaluate": 8.0, "run_results": 62.0}


def test_the_table_gives_each_rule_and_the_whole_command_side_by_side():
    results = {"this tree": [{"wall": 100.4, "rules": {"pretrain": 60.0, "sample": 9.0}},
                             {"wall": 110.0, "rules": {"pretrain": 70.0, "sample": 11.0}}],
               "6ade104": [{"wall": 150.0, "rules": {"pretrain": 90.0, "sample": 16.0}},
                           {"wall": 160.0, "rules": {"pretrain": 100.0, "sample": 14.0}}]}
    assert table(results, ["this tree", "6ade104"]) == [
        "seconds (median)      this tree        6ade104",
        "pretrain                     65             95",
        "sample                       10             15",
        "whole command               105            155",
    ]
