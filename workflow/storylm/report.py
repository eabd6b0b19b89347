"""The report steps: each training's results in one folder, and every run side by side.

    run      results/runs/<run>/seed-<seed>/: metrics.json, samples.txt, loss.png, config.yaml, val_curve.tsv,
             story_scores.tsv
    compare  results/runs_by_seed.tsv (one row per training), results/runs.tsv (one row per run, with 95%
             intervals), results/verdicts.tsv (runs compared, figure by figure) and results/compare.png
    samples  results/samples.txt: every training's samples, run by run
"""

from __future__ import annotations

import argparse
import json
import shutil
import textwrap
from pathlib import Path

import pandas as pd
import yaml

from storylm.io.entry import atomic_path, exit_with, read_json, write_json, write_text
from storylm.results.comparison import BPC, CHECKER_ELSEWHERE, CONSISTENT, FIGURES, Runs, by_seed_table
from storylm.results.summary import training_results

# The few columns the report's first page shows (results/runs_summary.tsv): it is narrow.
SUMMARY_COLUMNS = {"run": "run", "differs_from_base": "differs from base", "n_seeds": "seeds",
                   "val_story_bits_per_character": "val bits/char", "consistent_rate": "consistent",
                   "builtin_world_checker_rate": "builtin-world checker (uncalibrated on this corpus)"}
# The verdicts as the report's first page shows them (results/verdicts_summary.tsv).
VERDICT_COLUMNS = ["figure", "A", "B", "A - B [95% interval]", "verdict"]
# A training's files its results folder holds as they are, under their own names.
COPIED = ("samples text", "loss plot", "story scores")
TITLE_WIDTH = 44  # characters a line of a compare.png panel title holds at its size


def run_results(info: dict, files: dict[str, Path], out: Path) -> dict:
    """A training's results folder, from its files by role (storylm.results.summary ROLES and those copied)."""
    metrics, curve = training_results(info, files)
    write_json(out / "metrics.json", metrics)
    write_text(out / "config.yaml", f"# The resolved config of run {info['run']}, seed {info['seed']} (defaults"
               " filled in)\n" + yaml.safe_dump(info["config"], sort_keys=False, allow_unicode=True))
    with atomic_path(out / "val_curve.tsv") as tmp:
        curve.to_csv(tmp, sep="\t", index=False)
    for source in (files[role] for role in COPIED):
        with atomic_path(out / source.name) as tmp:
            shutil.copyfile(source, tmp)
    return metrics


def read_trainings(training_dirs: list[Path]) -> tuple[list[dict], dict]:
    trainings = [read_json(folder / "metrics.json", "a training's results") for folder in training_dirs]
    stories = {(m["run"], m["seed"]): pd.read_csv(folder / "story_scores.tsv", sep="\t")
               for m, folder in zip(trainings, training_dirs, strict=True) if (folder / "story_scores.tsv").is_file()}
    return trainings, stories


def with_interval(table: pd.DataFrame, column: str, digits: int) -> pd.Series:
    """'0.3233 [0.3210, 0.3256]' for the report's first page."""
    def cell(row) -> str:
        if pd.isna(row.get(column)):
            return ""
        text = f"{row[column]:.{digits}f}"
        if not pd.isna(row.get(f"{column}_lo")):
            text += f" [{row[f'{column}_lo']:.{digits}f}, {row[f'{column}_hi']:.{digits}f}]"
        return text

    return table.apply(cell, axis=1)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    shown = table.copy()
    shown["val_story_bits_per_character"] = with_interval(table, BPC.column, 4)
    for figure in (CONSISTENT, CHECKER_ELSEWHERE):
        if figure.column in table:
            shown[figure.column] = with_interval(table, figure.column, 2)
    return shown[[c for c in SUMMARY_COLUMNS if c in shown]].rename(columns=SUMMARY_COLUMNS)


def verdict_summary(verdicts: pd.DataFrame) -> pd.DataFrame:
    """The verdicts in a few words a row, for the report's first page; one row saying so when there is nothing
    to compare (one run)."""
    labels = {figure.column: f"{figure.label} ({'higher' if figure.higher_is_better else 'lower'} is better)"
              for figure in FIGURES}
    digits = {BPC.column: 4}
    rows = []
    for v in verdicts.itertuples():
        n = digits.get(v.figure, 0 if v.figure == "train_tokens_per_second" else 3)
        interval = (f" [{v.difference_lo:+.{n}f}, {v.difference_hi:+.{n}f}]" if pd.notna(v.difference_lo)
                    else " (no interval: one seed a run)")
        rows.append({"figure": labels.get(v.figure, v.figure), "A": v.run_a, "B": v.run_b,
                     "A - B [95% interval]": f"{v.difference:+.{n}f}{interval}",
                     "verdict": f"A {v.verdict} than B" if v.verdict in ("better", "worse") else v.verdict})
    if not rows:
        rows.append({"figure": "(one run: nothing to compare)", "A": "", "B": "", "A - B [95% interval]": "",
                     "verdict": ""})
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)


def plot_comparison(runs: Runs, curves: dict[tuple[str, int], pd.DataFrame], table: pd.DataFrame,
                    png: Path) -> list[dict]:
    """Draw compare.png; returns what a person sees of each panel: its title, whether the title lies whole
    inside the picture, and where its value axis starts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, bpc_ax, rate_ax) = plt.subplots(1, 3, figsize=(16, 4.8), dpi=110)
    colors = {run: f"C{i % 10}" for i, run in enumerate(runs.names)}
    for m in runs.trainings:
        curve = curves[(m["run"], m["seed"])]
        # The final point is the evaluate stage's val loss of the final checkpoint.
        tokens = [*curve["train_tokens"], m["train_tokens"]]
        losses = [*curve["val_loss_nats_per_token"], m["val_loss_nats_per_token"]]
        first = m is runs.of[m["run"]][0]
        loss_ax.plot(tokens, losses, "o-", color=colors[m["run"]], alpha=0.8, markersize=3,
                     label=m["run"] if first else None)
    loss_ax.set_xscale("log")
    loss_ax.set_xlabel("training tokens")
    loss_ax.set_ylabel("val loss (nats/token)")
    loss_ax.set_title("val loss during training (one line per seed)")
    loss_ax.grid(alpha=0.3)
    loss_ax.legend(fontsize=8)
    checker = CONSISTENT if CONSISTENT.column in table else CHECKER_ELSEWHERE
    for ax, figure, unit in ((bpc_ax, BPC, "val bits per character, whole stories (lower is better)"),
                             (rate_ax, checker, f"{checker.label} (higher is better)")):
        if figure.column not in table:
            ax.set_visible(False)
            continue
        means = table[figure.column]
        lo = (means - table[f"{figure.column}_lo"]).fillna(0)
        hi = (table[f"{figure.column}_hi"] - means).fillna(0)
        ax.bar(table["run"], means, yerr=[lo, hi], capsize=4, color=[colors[r] for r in table["run"]], alpha=0.85)
        for i, m in enumerate(table["run"]):  # each seed's own value
            seeds = runs.series(m, figure)
            ax.plot([i] * len(seeds), seeds, "k.", markersize=4)
        ax.set_ylabel("\n".join(textwrap.wrap(unit, TITLE_WIDTH)), fontsize=8)
        ax.set_title("\n".join(textwrap.wrap(f"{figure.label}: mean of seeds, 95% interval", TITLE_WIDTH)),
                     fontsize=9)
        ax.tick_params(axis="x", rotation=30)
        ax.set_ylim(bottom=0.0)  # bars from zero: a bar's height is its value, so a 9% difference looks 9%
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    renderer = fig.canvas.get_renderer()
    picture = fig.bbox
    seen = []
    for ax in (loss_ax, bpc_ax, rate_ax):
        if ax.get_visible():
            title = ax.title.get_window_extent(renderer)
            seen.append({"title": ax.get_title(), "ylim_bottom": ax.get_ylim()[0],
                         "title_inside": picture.x0 <= title.x0 and title.x1 <= picture.x1 and title.y1 <= picture.y1})
    plt.close(fig)
    return seen


def compare(training_dirs: list[Path], by_seed: Path, table_path: Path, verdicts_path: Path, plot: Path,
            summary_path: Path, verdicts_summary_path: Path) -> Runs:
    trainings, stories = read_trainings(training_dirs)
    runs = Runs(trainings, stories)
    table, verdicts = runs.table(), runs.verdicts()
    for frame, path, digits in ((by_seed_table(trainings), by_seed, "%.6g"), (table, table_path, "%.6g"),
                                (verdicts, verdicts_path, "%.6g"), (summary(table), summary_path, "%.4g"),
                                (verdict_summary(verdicts), verdicts_summary_path, "%.4g")):
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, sep="\t", index=False, float_format=digits)
    curves = {(m["run"], m["seed"]): pd.read_csv(folder / "val_curve.tsv", sep="\t")
              for m, folder in zip(trainings, training_dirs, strict=True)}
    plot_comparison(runs, curves, table, plot)
    print(table.to_string(index=False))
    print(verdicts.to_string(index=False))
    return runs


def all_samples(labels: list[str], sample_files: list[Path]) -> str:
    if len(labels) == 1:
        return sample_files[0].read_text(encoding="utf-8")
    parts = []
    for label, path in zip(labels, sample_files, strict=True):
        parts += ["#" * 72, f"# run: {label}", "#" * 72, path.read_text(encoding="utf-8")]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="one training's results folder")
    run.add_argument("--info", required=True,
                     help="JSON: run, seed, stage_hashes, corpus_source, export_dir, differs_from_base, config")
    run.add_argument("--inputs", required=True, help="JSON: the training's files by role (common.smk RUN_INPUTS)")
    run.add_argument("--out", type=Path, required=True)
    comparing = commands.add_parser("compare", help="the runs tables, the verdicts and the comparison plot")
    comparing.add_argument("--training-dirs", type=Path, nargs="+", required=True)
    comparing.add_argument("--by-seed", type=Path, required=True)
    comparing.add_argument("--table", type=Path, required=True)
    comparing.add_argument("--verdicts", type=Path, required=True)
    comparing.add_argument("--plot", type=Path, required=True)
    comparing.add_argument("--summary", type=Path, required=True, help="the few columns the report shows first")
    comparing.add_argument("--verdicts-summary", type=Path, required=True, help="the verdicts the report shows first")
    samples = commands.add_parser("samples", help="every training's samples in one file")
    samples.add_argument("--labels", nargs="+", required=True)
    samples.add_argument("--files", type=Path, nargs="+", required=True)
    samples.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    if args.command == "run":
        files = {role: Path(path) for role, path in json.loads(args.inputs).items()}
        run_results(json.loads(args.info), files, args.out)
    elif args.command == "compare":
        compare(args.training_dirs, args.by_seed, args.table, args.verdicts, args.plot, args.summary,
                args.verdicts_summary)
    else:
        write_text(args.out, all_samples(args.labels, args.files))


if __name__ == "__main__":
    exit_with(main)
