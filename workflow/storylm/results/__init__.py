"""Figures and comparisons: litgpt's log, a training's results, intervals, verdicts, the runs tables."""
