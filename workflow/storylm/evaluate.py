"""The evaluate stage: val loss, perplexity and bits per character of the final checkpoint, and loss curves.

Bits per character divide the model's total information on the val text by its number
of characters, so models with different tokenizers can be compared:
    bpc = loss (nats/token) x tokens/character / ln 2.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from storylm import litgpt_log
from storylm.checkpoint import load_model, parameter_count
from storylm.config import write_stage_record


@torch.no_grad()
def val_loss(model, val_dir: Path, seq_length: int, batch_size: int, max_tokens: int | None) -> tuple[float, int]:
    """Mean cross-entropy (nats/token) over consecutive val windows, in shard order, and the tokens scored."""
    from litdata import StreamingDataLoader, StreamingDataset, TokensLoader

    dataset = StreamingDataset(input_dir=str(val_dir), item_loader=TokensLoader(block_size=seq_length + 1),
                               shuffle=False)
    loader = StreamingDataLoader(dataset, batch_size=batch_size, num_workers=0, drop_last=False)
    total_nats, total_tokens = 0.0, 0
    device = next(model.parameters()).device
    for batch in loader:
        batch = batch.long().to(device)
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten(), reduction="sum")
        total_nats += loss.item()
        total_tokens += batch[:, 1:].numel()
        if max_tokens is not None and total_tokens >= max_tokens:
            break
    if total_tokens == 0:
        raise SystemExit(f"{val_dir}: the val shards hold less than one window of {seq_length + 1} tokens")
    return total_nats / total_tokens, total_tokens


def plot_curves(train, val, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(train["step"], train["loss"], label="train loss (running mean)", color="tab:blue")
    if len(val):
        steps = train.set_index("iter")["step"].reindex(val["iter"]).to_numpy() if len(train) else val["iter"]
        ax.plot(steps, val["val_loss"], "o-", label="val loss (litgpt validation)", color="tab:orange")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("pretraining loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def evaluate(checkpoint_dir: Path, shards_dir: Path, train_log: Path, out_dir: Path, seq_length: int,
             batch_size: int, max_tokens: int | None) -> dict:
    model = load_model(checkpoint_dir)
    loss, tokens = val_loss(model, shards_dir / "val", seq_length, batch_size, max_tokens)
    shard_stats = json.loads((shards_dir / "stats.json").read_text())
    tokens_per_char = shard_stats["val_tokens_per_character"]
    train, val = litgpt_log.parse(train_log)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_curves(train, val, out_dir / "loss.png")
    train.to_csv(out_dir / "train_loss.tsv", sep="\t", index=False)
    return {
        "val_loss_nats_per_token": loss,
        "val_perplexity": math.exp(loss),
        "val_bits_per_character": loss * tokens_per_char / math.log(2),
        "val_tokens_scored": tokens,
        "val_tokens_per_character": tokens_per_char,
        "parameters": parameter_count(model),
        "train_steps": int(train["step"].max()) if len(train) else 0,
        "train_iters": int(train["iter"].max()) if len(train) else 0,
        "final_train_loss_nats_per_token": float(train["loss"].iloc[-1]) if len(train) else None,
        "litgpt_final_val_loss_nats_per_token": float(val["val_loss"].iloc[-1]) if len(val) else None,
        "resumed_from": litgpt_log.resumed_from(train_log),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--record", required=True, help="JSON stage record (settings and input hashes)")
    parser.add_argument("--checkpoint", type=Path, required=True, help="the final checkpoint directory")
    parser.add_argument("--shards", type=Path, required=True)
    parser.add_argument("--train-log", type=Path, required=True)
    parser.add_argument("--seq-length", type=int, required=True, help="train.max_seq_length of the run")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    settings = json.loads(args.record)["config"]
    torch.manual_seed(0)
    metrics = evaluate(args.checkpoint, args.shards, args.train_log, args.out, args.seq_length,
                       settings["batch_size"], settings["max_tokens"])
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_stage_record(args.record, args.out)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
