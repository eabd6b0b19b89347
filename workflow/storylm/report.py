"""The report steps: each run's results in one folder, and every run side by side.

    run      results/runs/<run>/: samples.txt, metrics.json, loss.png, config.yaml, val_curve.tsv
    compare  results/runs.tsv (one row per run) and results/compare.png
    samples  results/samples.txt: every run's samples, run by run

Training FLOPs are litgpt's own estimate (litgpt.utils.estimate_flops, the figure its
throughput monitor uses for MFU): 6 x trainable parameters per token for the forward and
backward pass, plus the attention's 12 x n_layer x n_embd x seq_len, per token trained on.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pandas as pd
import yaml

from storylm import litgpt_log
from storylm.entry import atomic_path, exit_with, write_json, write_text
from storylm.figures import numeric_figures, sample_figure_files

# The runs table's columns before the sample figures, in order, with their units in the name.
# The few columns the report's first page shows (results/runs_summary.tsv).
# The report's first page is narrow: five short columns.
SUMMARY_COLUMNS = {"run": "run", "differs_from_base": "differs from base", "parameters": "params",
                   "val_bits_per_character": "val bits/char", "sample.consistent_fraction": "consistent"}
TABLE_COLUMNS = ["run", "differs_from_base", "parameters", "train_tokens", "train_flops", "train_seconds",
                 "train_tokens_per_second", "val_loss_nats_per_token", "val_bits_per_character"]


def flops_per_token(litgpt_config: dict) -> float:
    """litgpt's estimate of training FLOPs per token for the rendered model (on the meta device: no memory)."""
    import torch
    from litgpt import GPT, Config
    from litgpt.utils import estimate_flops

    seq_length = litgpt_config["train"]["max_seq_length"]
    with torch.device("meta"):
        model = GPT(Config(**litgpt_config["model_config"]))
        model.max_seq_length = seq_length
    return estimate_flops(model, training=True) / seq_length


def val_curve(train_log: Path, tokens_per_iter: int, flops: float) -> pd.DataFrame:
    """litgpt's validations during training: val loss against tokens and FLOPs trained."""
    _, val = litgpt_log.parse(train_log)
    curve = pd.DataFrame({"iter": val["iter"], "val_loss_nats_per_token": val["val_loss"]})
    curve["train_tokens"] = curve["iter"] * tokens_per_iter
    curve["train_flops"] = curve["train_tokens"] * flops
    return curve


def run_results(info: dict, pretrain_dir: Path, evaluate_dir: Path, sample_dir: Path, out: Path) -> dict:
    litgpt_config = yaml.safe_load((pretrain_dir / "pretrain.yaml").read_text())
    train = litgpt_config["train"]
    tokens_per_iter = train["micro_batch_size"] * train["max_seq_length"] * litgpt_config["devices"] \
        * litgpt_config["num_nodes"]
    flops = flops_per_token(litgpt_config)
    performance = litgpt_log.performance(pretrain_dir / "train.log")
    evaluation = json.loads((evaluate_dir / "metrics.json").read_text())
    if performance["train_tokens"] is None:  # a log without litgpt's closing lines
        performance["train_tokens"] = evaluation["train_iters"] * tokens_per_iter
    sample_figures = {}
    for path in sample_figure_files(sample_dir):
        sample_figures.update(json.loads(path.read_text()))
    metrics = {
        "run": info["run"],
        "differs_from_base": info["differs_from_base"],
        "stage_hashes": info["stage_hashes"],
        **evaluation,
        "flops_per_token": flops,
        "train_flops": flops * performance["train_tokens"],
        **performance,
        "sample_figures": sample_figures,
        "export_dir": info["export_dir"],
    }
    write_json(out / "metrics.json", metrics)
    write_text(out / "config.yaml", f"# The resolved config of run {info['run']} (defaults filled in)\n"
               + yaml.safe_dump(info["config"], sort_keys=False, allow_unicode=True))
    with atomic_path(out / "val_curve.tsv") as tmp:
        val_curve(pretrain_dir / "train.log", tokens_per_iter, flops).to_csv(tmp, sep="\t", index=False)
    for source in (sample_dir / "samples.txt", evaluate_dir / "loss.png"):
        with atomic_path(out / source.name) as tmp:
            shutil.copyfile(source, tmp)
    return metrics


def runs_table(run_dirs: list[Path]) -> pd.DataFrame:
    rows = []
    for run_dir in run_dirs:
        m = json.loads((run_dir / "metrics.json").read_text())
        row = {key: m.get(key) for key in TABLE_COLUMNS}
        row["differs_from_base"] = "; ".join(f"{k}={json.dumps(v, ensure_ascii=False)}"
                                             for k, v in m["differs_from_base"].items()) or "(base)"
        row.update({f"sample.{k}": v for k, v in numeric_figures(m["sample_figures"]).items()})
        row.update({f"hash.{stage}": h for stage, h in m["stage_hashes"].items()})
        row["export_dir"] = m["export_dir"]
        rows.append(row)
    return pd.DataFrame(rows)


def plot_comparison(run_dirs: list[Path], table: pd.DataFrame, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_tokens, by_flops, bpc) = plt.subplots(1, 3, figsize=(15, 4.5), dpi=110)
    colors = []
    for run_dir, (_, row) in zip(run_dirs, table.iterrows(), strict=True):
        curve = pd.read_csv(run_dir / "val_curve.tsv", sep="\t")
        # The final point is the evaluate stage's val loss of the final checkpoint.
        tokens = [*curve["train_tokens"], row["train_tokens"]]
        flops = [*curve["train_flops"], row["train_flops"]]
        losses = [*curve["val_loss_nats_per_token"], row["val_loss_nats_per_token"]]
        line, = by_tokens.plot(tokens, losses, "o-", label=row["run"])
        by_flops.plot(flops, losses, "o-", color=line.get_color(), label=row["run"])
        colors.append(line.get_color())
    for ax, unit in ((by_tokens, "training tokens"), (by_flops, "training FLOPs (litgpt estimate)")):
        ax.set_xscale("log")
        ax.set_xlabel(unit)
        ax.set_ylabel("val loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    by_tokens.set_title("val loss against tokens")
    by_flops.set_title("val loss against compute")
    bars = bpc.bar(table["run"], table["val_bits_per_character"], color=colors)
    bpc.bar_label(bars, fmt="%.3f", fontsize=8)
    bpc.set_ylabel("val bits per character (lower is better)")
    bpc.set_title("bits per character (comparable across tokenizers)")
    bpc.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def all_samples(runs: list[str], sample_files: list[Path]) -> str:
    if len(runs) == 1:
        return sample_files[0].read_text(encoding="utf-8")
    parts = []
    for run, path in zip(runs, sample_files, strict=True):
        parts += ["#" * 72, f"# run: {run}", "#" * 72, path.read_text(encoding="utf-8")]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="one run's results folder")
    run.add_argument("--info", required=True, help="JSON: run, stage_hashes, export_dir, differs_from_base, config")
    run.add_argument("--pretrain-dir", type=Path, required=True)
    run.add_argument("--evaluate-dir", type=Path, required=True)
    run.add_argument("--sample-dir", type=Path, required=True)
    run.add_argument("--out", type=Path, required=True)
    compare = commands.add_parser("compare", help="the runs table and the comparison plot")
    compare.add_argument("--run-dirs", type=Path, nargs="+", required=True)
    compare.add_argument("--table", type=Path, required=True)
    compare.add_argument("--plot", type=Path, required=True)
    compare.add_argument("--summary", type=Path, required=True, help="the few columns the report shows first")
    samples = commands.add_parser("samples", help="every run's samples in one file")
    samples.add_argument("--runs", nargs="+", required=True)
    samples.add_argument("--files", type=Path, nargs="+", required=True)
    samples.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    if args.command == "run":
        run_results(json.loads(args.info), args.pretrain_dir, args.evaluate_dir, args.sample_dir, args.out)
    elif args.command == "compare":
        table = runs_table(args.run_dirs)
        with atomic_path(args.table) as tmp:
            table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
        summary = table[[c for c in SUMMARY_COLUMNS if c in table]].rename(columns=SUMMARY_COLUMNS)
        with atomic_path(args.summary) as tmp:
            summary.to_csv(tmp, sep="\t", index=False, float_format="%.4g")
        plot_comparison(args.run_dirs, table, args.plot)
        print(table.to_string(index=False))
    else:
        write_text(args.out, all_samples(args.runs, args.files))


if __name__ == "__main__":
    exit_with(main)
