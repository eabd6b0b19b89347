"""workflow/benchmarks/budget_curve.py: the table and the plot drawn from a runs table."""

from __future__ import annotations

import importlib.util

import pandas as pd
import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("budget_curve", REPO / "workflow" / "benchmarks" / "budget_curve.py")
budget_curve = importlib.util.module_from_spec(spec)
spec.loader.exec_module(budget_curve)


def test_the_interval_is_wilsons():
    runs = pd.DataFrame({"run": ["none", "half"], "train_seconds": [60.0, 120.0], "train_tokens": [1, 2],
                         "val_bits_per_character": [0.5, 0.4], "sample.num_samples": [300, 300],
                         "sample.consistent_fraction": [0.0, 0.5]})
    table = budget_curve.curve_table(runs).set_index("run")
    z2 = 1.959963984540054 ** 2
    assert table.loc["none", "consistent_low"] == pytest.approx(0.0, abs=1e-12)
    assert table.loc["none", "consistent_high"] == pytest.approx(z2 / (300 + z2))  # no successes: its closed form
    assert (table.loc["half", "consistent_low"] + table.loc["half", "consistent_high"]) / 2 == pytest.approx(0.5)


def test_curve_table_and_plot_from_the_runs_by_seed_table(tmp_path):
    runs = pd.DataFrame({
        "run": ["long", "short"], "train_seconds": [240.0, 60.0], "train_tokens": [3_200_000, 800_000],
        "val_bits_per_character": [0.32, 0.50], "sample.num_samples": [300, 300],
        "sample.consistent_fraction": [225 / 300, 13 / 300],
    })
    table = budget_curve.curve_table(runs)
    assert table["run"].tolist() == ["short", "long"]  # by training time
    assert table["train_minutes"].tolist() == [1.0, 4.0]
    assert table["consistent_low"].iloc[1] < 0.75 < table["consistent_high"].iloc[1]
    out = tmp_path / "curve.png"
    budget_curve.plot(table, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
