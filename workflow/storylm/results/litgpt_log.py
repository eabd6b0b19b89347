"""Read the loss curves from what `litgpt pretrain` prints.

The printed lines are the same whichever logger (csv, tensorboard, wandb) the run uses,
and the pipeline appends them to one train.log across resumed runs, so this is the one
source of the curves for every logger.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

# "Epoch 1 | iter 40 step 10 | loss train: 6.123, val: n/a | iter time: 123.45 ms (step) ..."
TRAIN_LINE = re.compile(r"^Epoch (?P<epoch>\d+) \| iter (?P<iter>\d+) step (?P<step>\d+) \| loss train: (?P<loss>[\d.]+)"
                        r".*iter time: (?P<iter_ms>[\d.]+) ms")
# "iter 400: val loss 3.2345, val time: 12.34 ms"
VAL_LINE = re.compile(r"^iter (?P<iter>\d+): val loss (?P<val_loss>[\d.]+)")
# "Final evaluation | val loss: 3.123 | val ppl: 22.7"
FINAL_LINE = re.compile(r"^Final evaluation \| val loss: (?P<val_loss>[\d.]+)")
RESUME_LINE = re.compile(r"^Resuming training from (?P<path>\S+)")
# "| - Total tokens  : 1,204,224" and "| - Training Time : 75.62 s", printed once per (resumed) run
TOTAL_TOKENS_LINE = re.compile(r"^\| - Total tokens\s*: (?P<tokens>[\d,]+)")
TRAINING_TIME_LINE = re.compile(r"^\| - Training Time\s*: (?P<seconds>[\d.]+) s")


def parse(log_path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, val) tables: train has iter, step, epoch, loss, iter_ms; val has iter, val_loss.

    A resumed run repeats the steps after its checkpoint; the later lines win.
    """
    train_rows, val_rows, last_iter = [], [], 0
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        if m := TRAIN_LINE.match(line):
            row = {k: float(v) if k in ("loss", "iter_ms") else int(v) for k, v in m.groupdict().items()}
            train_rows.append(row)
            last_iter = row["iter"]
        elif m := VAL_LINE.match(line):
            val_rows.append({"iter": int(m["iter"]), "val_loss": float(m["val_loss"]), "final": False})
        elif m := FINAL_LINE.match(line):
            val_rows.append({"iter": last_iter, "val_loss": float(m["val_loss"]), "final": True})
    train = pd.DataFrame(train_rows, columns=["epoch", "iter", "step", "loss", "iter_ms"])
    val = pd.DataFrame(val_rows, columns=["iter", "val_loss", "final"])
    train = train.drop_duplicates("iter", keep="last").sort_values("iter").reset_index(drop=True)
    val = val.drop_duplicates(["iter", "final"], keep="last").sort_values("iter").reset_index(drop=True)
    return train, val


def resumed_from(log_path: Path) -> list[str]:
    """Checkpoints the log says training resumed from, in order."""
    text = log_path.read_text(encoding="utf-8", errors="replace")
    return [m["path"] for line in text.splitlines() if (m := RESUME_LINE.match(line))]


def performance(log_path: Path) -> dict:
    """Tokens trained on and training seconds, over every resumed part of the run.

    litgpt prints its own tok/s from the wrong clock (it divides by a perf_counter timestamp),
    so tokens/s is computed here: total tokens / the sum of the parts' training times.
    """
    tokens, seconds = None, 0.0
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        if m := TOTAL_TOKENS_LINE.match(line):
            tokens = int(m["tokens"].replace(",", ""))  # counts from iter 0, resumed or not: the last wins
        elif m := TRAINING_TIME_LINE.match(line):
            seconds += float(m["seconds"])
    return {
        "train_tokens": tokens,
        "train_seconds": round(seconds, 2) if seconds else None,
        "train_tokens_per_second": round(tokens / seconds, 1) if tokens and seconds else None,
    }
