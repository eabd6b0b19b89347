"""Story consistency and val bits per character against training minutes, from a runs table.

Run the training-budget sweep, then draw its curve:

    snakemake --cores all --configfile config/sweeps/budget.yaml
    PYTHONPATH=workflow python workflow/benchmarks/budget_curve.py results/runs_by_seed.tsv \\
        --out docs/images/budget_curve.png

Prints one line per training (minutes, tokens, bits/char, consistent share with its 95% Wilson
interval, from statsmodels) and draws both against training minutes (litgpt's own training time, which leaves
out the start-up of the job). The interval shows how far apart two runs must be to differ:
with 300 samples a share near 0.15 is known to about +-0.04.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from storylm.io.entry import atomic_path  # noqa: E402
from storylm.results.stats import proportion_interval  # noqa: E402


def curve_table(runs: pd.DataFrame) -> pd.DataFrame:
    table = pd.DataFrame({
        "run": runs["run"],
        "train_minutes": runs["train_seconds"] / 60,
        "train_tokens": runs["train_tokens"],
        "val_bits_per_character": runs["val_bits_per_character"],
        "samples": runs["sample.num_samples"].astype(int),
        "consistent_fraction": runs["sample.consistent_fraction"],
    })
    consistent = (table["consistent_fraction"] * table["samples"]).round().astype(int)
    bounds = [(i.lo, i.hi) for i in (proportion_interval(c, n) for c, n in zip(consistent, table["samples"],
                                                                            strict=True))]
    table["consistent_low"], table["consistent_high"] = zip(*bounds, strict=True)
    return table.sort_values("train_minutes").reset_index(drop=True)


def plot(table: pd.DataFrame, out: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    minutes = table["train_minutes"]
    errors = [table["consistent_fraction"] - table["consistent_low"],
              table["consistent_high"] - table["consistent_fraction"]]
    left.errorbar(minutes, table["consistent_fraction"], yerr=errors, marker="o", capsize=4)
    left.set_ylabel("stories the checker passes (share, 95% CI)")
    right.plot(minutes, table["val_bits_per_character"], marker="o")
    right.set_ylabel("val bits per character")
    for ax in (left, right):
        ax.set_xlabel("training time (minutes, 2 CPU cores)")
        ax.grid(alpha=0.3)
        for _, row in table.iterrows():
            y = row["consistent_fraction"] if ax is left else row["val_bits_per_character"]
            ax.annotate(f"{row['train_tokens'] / 1e6:.1f}M tokens", (row["train_minutes"], y),
                        textcoords="offset points", xytext=(6, 4), fontsize=8)
    fig.suptitle(f"Training budget sweep ({table['samples'].iloc[0]} sampled stories a run)")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs_tsv", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    table = curve_table(pd.read_csv(args.runs_tsv, sep="\t"))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    plot(table, args.out)


if __name__ == "__main__":
    main()
