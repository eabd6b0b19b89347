"""workflow/benchmarks/budget_curve.py: the table and the plot drawn from a runs table."""

from __future__ import annotations

import importlib.util

import pandas as pd
import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("budget_curve", REPO / "workflow" / "benchmarks" / "budget_curve.py")
budget_curve = importlib.util.module_from_spec(spec)
spec.loader.exec_module(budget_curve)


def test_wilson_interval_has_its_closed_forms():
    z2 = 1.96 ** 2
    low, high = budget_curve.wilson_interval(0, 300)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(z2 / (300 + z2))  # no successes
    low, high = budget_curve.wilson_interval(150, 300)
    assert (low + high) / 2 == pytest.approx(0.5)  # symmetric about one half
    assert high - low == pytest.approx(2 * 1.96 * (0.25 / 300 + z2 / (4 * 300 ** 2)) ** 0.5 / (1 + z2 / 300))


def test_curve_table_and_plot_from_a_runs_table(tmp_path):
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
