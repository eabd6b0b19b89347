"""How many samples the sample figures need: their spread over sampling seeds, by number of samples.

Draws --max-samples stories for each of --seeds sampling seeds from a checkpoint (as the
sample stage does: one prompt after the other, a derived seed per story), then computes
storylm.stories.sample_metrics.figures on the first k stories of each seed for each k in --sizes,
and prints, per figure and k, the mean and the standard deviation over the seeds. The
standard deviation is the figure's noise at that sample count: a default for
sample.num_figure_samples should make it small next to the differences between runs one
wants to see.

    python workflow/benchmarks/sample_figure_spread.py --checkpoint results/pretrain/<h>/final \\
        --train Data/corpus/<h>/train.jsonl --val Data/corpus/<h>/val.jsonl --seeds 4 --max-samples 200
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the storylm package in workflow/

import pandas as pd  # noqa: E402

from storylm.io.jsonl import iter_texts  # noqa: E402
from storylm.model.checkpoint import load_model
from storylm.model.tokens import StoryTokenizer  # noqa: E402
from storylm.sample import sample_prompt, story_seed  # noqa: E402
from storylm.stories import consistency  # noqa: E402
from storylm.stories.sample_metrics import figures  # noqa: E402

FIGURES = ("finished_fraction", "repeated_4gram_fraction", "distinct_2", "train_copy_fraction", "consistent_fraction")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--prompts", nargs="+", default=["从前，有一个叫莉莉的小女孩"])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--max-samples", type=int, default=200)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 25, 50, 100, 200])
    parser.add_argument("--copy-ngram", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    args = parser.parse_args()

    model, tokenizer = load_model(args.checkpoint), StoryTokenizer(args.checkpoint)
    train = list(iter_texts(args.train))  # small builtin splits; the stage itself streams
    settings = {"max_new_tokens": args.max_new_tokens, "temperature": 0.8, "top_k": 50, "top_p": 1.0}
    rows, start = [], time.perf_counter()
    for seed in range(args.seeds):
        drawn = {}  # prompt index -> its stories, in order
        for p, prompt in enumerate(args.prompts):
            count = len(range(p, args.max_samples, len(args.prompts)))
            seeds = [story_seed(seed, p, i) for i in range(count)]
            drawn[p] = iter(sample_prompt(model, tokenizer, prompt, seeds, settings))
        samples = []
        for i in range(args.max_samples):  # interleaved over the prompts, as before
            p = i % len(args.prompts)
            text, finished = next(drawn[p])
            samples.append({"prompt": args.prompts[p], "text": text, "finished": finished})
        for k in (k for k in args.sizes if k <= args.max_samples):
            figs = figures(samples[:k], train, args.copy_ngram)
            figs["consistent_fraction"] = consistency.score(samples[:k])["consistent_fraction"]
            rows += [{"samples": k, "seed": seed, "figure": name, "value": figs[name]} for name in FIGURES]
    seconds = time.perf_counter() - start
    table = pd.DataFrame(rows).groupby(["figure", "samples"])["value"].agg(["mean", "std"]).round(4)
    print(table.to_string())
    print(f"\n{args.seeds} seeds x {args.max_samples} samples drawn in {seconds:.0f} s"
          f" ({seconds / (args.seeds * args.max_samples):.2f} s a story, figures included)")


if __name__ == "__main__":
    main()
