"""The evaluate stage: val loss, perplexity and bits per character of the final checkpoint, loss curves,
and bits per character on the extra sets of evaluate.extra_sets.

Bits per character divide the model's total information on the val text by its number
of characters, so models with different tokenizers can be compared:
    bpc = loss (nats/token) x tokens/character / ln 2.

Two conventions, both in metrics.json, each named beside its figure:
- val_bits_per_character: litgpt's validation windows (train.max_seq_length + 1 tokens) over
  the val stories joined by end-of-text, which cut stories anywhere, so many tokens are
  predicted from a short or a wrong context;
- val_story_bits_per_character: each val story whole, after the end-of-text token of the story
  before it (its context in training), its own end-of-text token included, a story longer than
  a window in consecutive windows. About a tenth lower. Its per-story figures (story_scores.tsv)
  give the noise of a finite val set to the runs table's intervals. lm-eval's
  loglikelihood_rolling on the export differs on two counts: it does not score the end-of-text,
  and it gives a long story's last window a whole window of context; the export computes its
  figure as lm-eval does (storylm.hub.lm_eval_task).

An extra set is tokenized as the shards are (each story, then EOS) into one stream, and
every token of the stream but the first is scored exactly once, in windows of
seq_length + 1 tokens that overlap by one; its bpc is the total bits over its characters.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd
import torch

from storylm.io import jsonl
from storylm.io.entry import StageError, atomic_path, exit_with, first_line, write_json
from storylm.io.progress import Progress
from storylm.model.checkpoint import load_model, parameter_count
from storylm.model.tokens import StoryTokenizer
from storylm.plan.integrity import require_intact
from storylm.plan.stage import StageFiles, stage_main, stage_parser
from storylm.results import litgpt_log
from storylm.results.figures import WHOLE_STORIES, WINDOWS
from storylm.results.stats import ratio_se
from storylm.stories import extra_sets


@torch.no_grad()
def val_loss(model, val_dir: Path, seq_length: int, batch_size: int, max_tokens: int | None,
             progress: Progress | None = None) -> tuple[float, int]:
    """Mean cross-entropy (nats/token) over consecutive val windows, in shard order, and the tokens scored."""
    from litdata import StreamingDataLoader, StreamingDataset, TokensLoader

    check_chunks(val_dir)
    vocab = model.config.padded_vocab_size
    dataset = StreamingDataset(input_dir=str(val_dir), item_loader=TokensLoader(block_size=seq_length + 1),
                               shuffle=False)
    loader = StreamingDataLoader(dataset, batch_size=batch_size, num_workers=0, drop_last=False)
    total_nats, total_tokens = 0.0, 0
    device = next(model.parameters()).device
    if progress is not None:
        # the loop below stops at the first whole batch that reaches max_tokens
        needed = len(dataset) if max_tokens is None else math.ceil(max_tokens / seq_length / batch_size) * batch_size
        progress.total = min(len(dataset), needed)
    for batch in loader:
        batch = batch.long().to(device)
        if batch.max() >= vocab or batch.min() < 0:
            raise StageError(f"{val_dir}: a token id {int(batch.max())} outside the model's {vocab}: a damaged shard"
                             f" chunk (litdata keeps no checksum); {RERUN_SHARDS}")
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten(), reduction="sum")
        total_nats += loss.item()
        total_tokens += batch[:, 1:].numel()
        if progress is not None:
            progress.update(progress.done + len(batch))
        if max_tokens is not None and total_tokens >= max_tokens:
            break
    if total_tokens == 0:
        raise StageError(f"{val_dir}: the val shards hold less than one window of {seq_length + 1} tokens")
    return total_nats / total_tokens, total_tokens


RERUN_SHARDS = "rebuild the shards: snakemake --forcerun shards ..."


def check_chunks(split_dir: Path) -> None:
    """Every chunk litdata's index lists is there, with the size it lists: a cut-off chunk fails here with
    its name, instead of as an IndexError deep in the model."""
    index_path = split_dir / "index.json"
    try:
        chunks = json.loads(index_path.read_text(encoding="utf-8"))["chunks"]
    except (OSError, ValueError, KeyError) as error:
        raise StageError(f"{index_path}: not a litdata index ({first_line(error)}); {RERUN_SHARDS}") from None
    for chunk in chunks:
        path = split_dir / chunk["filename"]
        size = path.stat().st_size if path.is_file() else None
        if size != chunk["chunk_bytes"]:
            found = "missing" if size is None else f"{size:,} bytes"
            raise StageError(f"{path}: {found}, but {index_path} lists {chunk['chunk_bytes']:,} bytes: a damaged"
                             f" shard chunk; {RERUN_SHARDS}")


@torch.no_grad()
def stream_nats(model, ids: list[int], seq_length: int, batch_size: int) -> tuple[float, int]:
    """Total cross-entropy (nats) of ids[1:] given the ids before them in a window, and the tokens scored.

    Window k holds ids[k*L : k*L + L + 1] (L = seq_length), so consecutive windows share one
    token and every token after the first is predicted once; the last window may be shorter.
    """
    device = next(model.parameters()).device
    tokens = torch.tensor(ids, dtype=torch.long)
    starts = list(range(0, len(ids) - 1, seq_length))
    full = [s for s in starts if s + seq_length + 1 <= len(ids)]
    total = 0.0
    for i in range(0, len(full), batch_size):
        batch = torch.stack([tokens[s:s + seq_length + 1] for s in full[i:i + batch_size]]).to(device)
        total += _window_nats(model, batch)
    if len(full) < len(starts):  # the rest, shorter than a window
        total += _window_nats(model, tokens[starts[-1]:].unsqueeze(0).to(device))
    return total, max(len(ids) - 1, 0)


def _window_nats(model, batch: torch.Tensor) -> float:
    logits = model(batch[:, :-1])
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten(),
                                             reduction="sum").item()


def corpus_normalize(stats: Path) -> str | None:
    """corpus.normalize as the corpus stage applied it, from its stats."""
    if not stats.is_file():
        raise StageError(f"{stats} does not exist: the extra sets need the corpus stage's settings (run the corpus stage)")
    return json.loads(stats.read_text(encoding="utf-8"))["settings"]["normalize"]


def evaluate_extra_sets(model, tokenizer, entries: list[dict], train: Path | None, corpus_stats: Path | None,
                        seq_length: int, batch_size: int) -> dict:
    """{name: figures} for each entry of evaluate.extra_sets (already checked by extra_sets.check_entries),
    read as the corpus stage read its stories (its stats say how) and compared with its train split."""
    if not entries:
        return {}
    if train is None or corpus_stats is None:
        raise StageError("evaluate.extra_sets: --inputs gives no 'train split' or 'corpus stats' (the corpus stage's)")
    if not train.is_file():
        raise StageError(f"{train}: the train split does not exist; the extra sets are compared with it"
                         " (run the corpus stage)")
    normalize = corpus_normalize(corpus_stats)
    sets, results = {}, {}
    for i, entry in enumerate(entries):
        name, text_field = extra_sets.set_name(entry), entry.get("text_field", "text")
        stories, empty = extra_sets.read_stories(Path(entry["path"]), text_field, f"extra_sets[{i}]", normalize)
        ids = [token for story in tokenizer.encode_batch(stories, eos=True) for token in story]
        nats, scored = stream_nats(model, ids, seq_length, batch_size)
        characters = sum(map(len, stories))
        sets[name] = stories
        results[name] = {
            "path": entry["path"],
            "text_field": text_field,
            "stories": len(stories),
            "empty_stories_skipped": empty,
            "characters": characters,
            "tokens": len(ids),
            "tokens_scored": scored,
            "nats_per_token": nats / scored if scored else None,
            "bits_per_character": nats / math.log(2) / characters,
        }
    in_train = extra_sets.stories_in_train(sets, jsonl.iter_texts(train))
    for name, result in results.items():
        result["stories_in_train"] = in_train[name]
        result["stories_in_train_fraction"] = in_train[name] / result["stories"]
    return results


def val_stories(val: Path, tokenizer, max_tokens: int | None) -> tuple[list[str], list[list[int]]]:
    """The val split's first stories, up to about max_tokens, each as [eos] + its ids + [eos]."""
    stories, ids, total = [], [], 0
    for text in jsonl.iter_texts(val):
        if max_tokens is not None and total >= max_tokens:
            break
        story = [tokenizer.eos_id] + tokenizer.encode_batch([text], eos=True)[0]
        stories.append(text)
        ids.append(story)
        total += len(story) - 1
    return stories, ids


@torch.no_grad()
def story_scores(model, stories: list[str], ids: list[list[int]], seq_length: int, batch_size: int,
                 progress: Progress | None = None) -> pd.DataFrame:
    """Per story: characters, tokens scored (its own and its end-of-text), nats in all, and the nats of the
    end-of-text alone. A story that fits one window is scored in one pass, in batches of stories of
    similar length (padded on the right, which a causal model never attends to); a longer one in
    consecutive windows (stream_nats)."""
    device = next(model.parameters()).device
    nats, eos_nats = [0.0] * len(ids), [0.0] * len(ids)
    fits = sorted((i for i, story in enumerate(ids) if len(story) <= seq_length + 1), key=lambda i: len(ids[i]))
    for start in range(0, len(fits), batch_size):
        rows = fits[start:start + batch_size]
        width = max(len(ids[i]) for i in rows)
        batch = torch.full((len(rows), width), -100, dtype=torch.long)
        for r, i in enumerate(rows):
            batch[r, :len(ids[i])] = torch.tensor(ids[i])
        batch = batch.to(device)
        logits = model(batch[:, :-1].clamp(min=0))
        token_nats = torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(), batch[:, 1:],
                                                       ignore_index=-100, reduction="none")
        for r, i in enumerate(rows):
            nats[i] = token_nats[r, :len(ids[i]) - 1].sum().item()
            eos_nats[i] = token_nats[r, len(ids[i]) - 2].item()
        if progress is not None:
            progress.update(progress.done + len(rows))
    for i, story in enumerate(ids):
        if len(story) > seq_length + 1:
            nats[i] = stream_nats(model, story, seq_length, batch_size)[0]
            eos_nats[i] = nats[i] - stream_nats(model, story[:-1], seq_length, batch_size)[0]
            if progress is not None:
                progress.update(progress.done + 1)
    return pd.DataFrame({"story": range(len(ids)), "characters": [len(text) for text in stories],
                         "tokens": [len(story) - 1 for story in ids], "nats": nats, "eos_nats": eos_nats})


def story_figures(scores: pd.DataFrame) -> dict:
    """Bits per character of the whole stories, and its standard error from the finite set of stories."""
    nats, chars = scores["nats"].to_numpy(), scores["characters"].to_numpy(dtype=float)
    return {"val_story_bits_per_character": nats.sum() / chars.sum() / math.log(2),
            "val_story_bits_per_character_se": ratio_se(nats / math.log(2), chars),
            "val_story_nats_per_token": nats.sum() / scores["tokens"].sum(), "val_stories_scored": len(scores),
            "val_story_characters": int(chars.sum())}


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
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def check_inputs(files: StageFiles) -> None:
    for role, stage in (("final model", "pretrain"), ("train log", "pretrain"), ("shards", "shards")):
        if not files.input(role).is_file():
            raise StageError(f"{files.input(role)} does not exist (run the {stage} stage)")


def evaluate(files: StageFiles, seq_length: int, settings: dict) -> dict:
    """The metrics of the final model, by role: its folder's, the shards', the train log's and the splits'."""
    entries = settings.get("extra_sets", [])
    check_inputs(files)
    checkpoint_dir, shards_dir, train_log = files.input("final model").parent, files.input("shards").parent, \
        files.input("train log")
    train_split, val_split = files.optional("train split"), files.optional("val split")
    require_intact("shards", shards_dir)  # token ids overwritten with other valid ids change only the sha256
    require_intact("pretrain", checkpoint_dir.parent)
    extra_sets.check_entries(entries)  # before the slow part, so a typo fails at once
    model = load_model(checkpoint_dir)
    tokenizer = StoryTokenizer(checkpoint_dir)
    with Progress("evaluate", None, "val windows") as progress:
        loss, tokens = val_loss(model, shards_dir / "val", seq_length, settings["batch_size"], settings["max_tokens"],
                                progress)
    shard_stats = json.loads(files.input("shards").read_text())
    tokens_per_char = shard_stats["val_tokens_per_character"]
    whole = {}
    if val_split is not None:
        if not val_split.is_file():
            raise StageError(f"{val_split}: the val split does not exist (run the corpus stage)")
        stories, ids = val_stories(val_split, tokenizer, settings["max_tokens"])
        with Progress("evaluate", len(ids), "val stories") as progress:
            scores = story_scores(model, stories, ids, seq_length, settings["batch_size"], progress)
        with atomic_path(files.output("story scores")) as tmp:
            scores.to_csv(tmp, sep="\t", index=False, float_format="%.6f")
        whole = {**story_figures(scores), "val_story_bits_per_character_convention": WHOLE_STORIES}
    extra = evaluate_extra_sets(model, tokenizer, entries, train_split, files.optional("corpus stats"), seq_length,
                                settings["batch_size"])
    train, val = litgpt_log.parse(train_log)
    plot_curves(train, val, files.output("loss plot"))
    with atomic_path(files.output("train loss")) as tmp:
        train.to_csv(tmp, sep="\t", index=False)
    return {
        "val_loss_nats_per_token": loss,
        "val_perplexity": math.exp(loss),
        "val_bits_per_character": loss * tokens_per_char / math.log(2),
        "val_bits_per_character_convention": WINDOWS,
        "val_tokens_scored": tokens,
        **whole,
        "val_tokens_per_character": tokens_per_char,
        "parameters": parameter_count(model),
        "train_steps": int(train["step"].max()) if len(train) else 0,
        "train_iters": int(train["iter"].max()) if len(train) else 0,
        "final_train_loss_nats_per_token": float(train["loss"].iloc[-1]) if len(train) else None,
        "litgpt_final_val_loss_nats_per_token": float(val["val_loss"].iloc[-1]) if len(val) else None,
        "resumed_from": litgpt_log.resumed_from(train_log),
        "extra_sets": extra,
    }


def evaluate_stage(args: argparse.Namespace, cfg: dict) -> str:
    torch.manual_seed(0)
    metrics = evaluate(args.files, args.seq_length, cfg)
    write_json(args.files.output("metrics"), metrics)
    return json.dumps(metrics, indent=2, ensure_ascii=False)


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser("python -m storylm.evaluate", __doc__)
    parser.add_argument("--seq-length", type=int, required=True, help="train.max_seq_length of the run")
    stage_main(parser, evaluate_stage, argv, "evaluate")


if __name__ == "__main__":
    exit_with(main)
