"""The figures a stage writes as JSON: which files hold them, and every number in them by its dotted key.

Shared by the report (each run's metrics.json and the runs table) and the export (the model card).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

# The sample stage's files of figures, by role (storylm.plan.stages provides): the builtin-world checker's and
# those that hold for any corpus.
SAMPLE_FIGURES = ("sample checks", "sample figures")


def sample_figure_files(files: Mapping[str, Path | None]) -> list[Path]:
    """The sample stage's files of figures that are there, from a training's files by role."""
    return [path for path in (files.get(role) for role in SAMPLE_FIGURES) if path is not None and path.is_file()]


def numeric_figures(obj, prefix: str = "") -> dict[str, float]:
    """Every number in a JSON object, under its dotted key path (booleans and lists left out)."""
    figures = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            figures.update(numeric_figures(value, f"{prefix}{key}."))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        figures[prefix[:-1]] = obj
    return figures


# What each bits-per-character figure of the evaluate stage measures (metrics.json), said beside it in the
# evaluate stage's output and in the model card.
WINDOWS = ("windows of train.max_seq_length + 1 tokens over the val stories joined by end-of-text, cutting"
           " stories anywhere (litgpt's validation)")
WHOLE_STORIES = ("each val story whole, after the end-of-text token before it, its own end-of-text token included,"
                 " a story longer than a window in consecutive windows of train.max_seq_length tokens")
