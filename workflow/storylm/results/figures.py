"""The figures a stage writes as JSON: which files hold them, and every number in them by its dotted key.

Shared by the report (each run's metrics.json and the runs table) and the export (the model card).
"""

from __future__ import annotations

from pathlib import Path

# The sample stage's files of figures: the builtin-world checker's and those that hold for any corpus.
SAMPLE_FIGURES = ("consistency.json", "figures.json")


def sample_figure_files(sample_dir: Path) -> list[Path]:
    """The sample stage's files of figures that are there."""
    return [Path(sample_dir) / name for name in SAMPLE_FIGURES if (Path(sample_dir) / name).is_file()]


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
