"""The figures a stage writes as JSON: which files hold them, and every number in them by its dotted key.

Shared by the report (each run's metrics.json and the runs table) and the export (the model card).
"""

from __future__ import annotations

from pathlib import Path

from storylm.entry import RECORD

# The sample stage's JSON files that are not figures: the stories and the stage record.
NOT_FIGURES = ("samples.json", RECORD)


def sample_figure_files(sample_dir: Path) -> list[Path]:
    """The sample stage's files of figures (consistency.json, figures.json, ...), whatever their keys."""
    return sorted(p for p in Path(sample_dir).glob("*.json") if p.name not in NOT_FIGURES)


def numeric_figures(obj, prefix: str = "") -> dict[str, float]:
    """Every number in a JSON object, under its dotted key path (booleans and lists left out)."""
    figures = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            figures.update(numeric_figures(value, f"{prefix}{key}."))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        figures[prefix[:-1]] = obj
    return figures
