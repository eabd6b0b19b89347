"""Stories from any litgpt checkpoint, for labelling by hand or for measuring the story checker.

Writes JSON lines {"prompt", "text", "source", "seed"} and prints how many the checker
(storylm.stories.consistency) calls consistent, with each rule's pass fraction.

  calibration  (how tests/data/labelled_samples.jsonl was sampled; docs/evaluation.md)
      python workflow/benchmarks/consistency_samples.py results/pretrain/<hash>/step-00000100 \\
          --source default-step100 --first-seed 1000 --num 24 --prompts calibration --out s100.jsonl
  tuning       (the pipeline's three prompts, story seeds as storylm.sample gives them)
      python workflow/benchmarks/consistency_samples.py results/pretrain/<hash>/final \\
          --num-per-prompt 16 --temperature 0.4 --top-k 20 --out tune.jsonl

A step-* checkpoint of litgpt pretrain holds model_config.yaml and the tokenizer files beside
lit_model.pth, so it samples like the final one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from storylm.model.checkpoint import load_model
from storylm.model.tokens import StoryTokenizer
from storylm.sample import never_sample_beyond, sample_prompt, story_seed
from storylm.stories import consistency

PIPELINE_PROMPTS = ["从前，有一个叫莉莉的小女孩", "有一天，小明和他的狗", "在森林里"]
# Two more characters' openings and a place, so the shapes with a friend come up too.
CALIBRATION_PROMPTS = PIPELINE_PROMPTS + ["从前，有一个叫天天的小男孩", "朵朵和乐乐是最好的朋友", "在公园里"]


def calibration_seeds(prompts: list[str], first_seed: int, num: int) -> list[tuple[str, int]]:
    """Sample i: prompt i mod len(prompts), seed first_seed + i."""
    return [(prompts[i % len(prompts)], first_seed + i) for i in range(num)]


def pipeline_seeds(prompts: list[str], seed: int, num_per_prompt: int) -> list[tuple[str, int]]:
    """The seeds storylm.sample gives with sample.seed = seed and num_samples = num_per_prompt."""
    return [(prompt, story_seed(seed, p, s)) for p, prompt in enumerate(prompts) for s in range(num_per_prompt)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--source", default="", help="recorded in each line (which checkpoint)")
    parser.add_argument("--prompts", choices=("pipeline", "calibration"), default="pipeline")
    parser.add_argument("--num", type=int, help="calibration: this many samples, seeds first-seed, first-seed+1, ...")
    parser.add_argument("--first-seed", type=int, default=1000)
    parser.add_argument("--num-per-prompt", type=int, default=16, help="without --num: storylm.sample's seeds")
    parser.add_argument("--seed", type=int, default=7, help="sample.seed for storylm.sample's seeds")
    parser.add_argument("--temperature", type=float, default=0.4)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    args = parser.parse_args(argv)

    prompts = CALIBRATION_PROMPTS if args.prompts == "calibration" else PIPELINE_PROMPTS
    jobs = (calibration_seeds(prompts, args.first_seed, args.num) if args.num
            else pipeline_seeds(prompts, args.seed, args.num_per_prompt))
    model, tokenizer = load_model(args.checkpoint), StoryTokenizer(args.checkpoint)
    never_sample_beyond(model, tokenizer.ids)  # as the sample stage does
    settings = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_k": args.top_k,
                "top_p": 1.0}
    by_prompt = {}
    for prompt, seed in jobs:
        by_prompt.setdefault(prompt, []).append(seed)
    stories = {(prompt, seed): story for prompt, seeds in by_prompt.items()
               for seed, story in zip(seeds, sample_prompt(model, tokenizer, prompt, seeds, settings), strict=True)}
    samples = []
    for prompt, seed in jobs:
        text, finished = stories[(prompt, seed)]
        samples.append({"prompt": prompt, "text": text, "finished": finished, "source": args.source, "seed": seed})
    args.out.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples), encoding="utf-8")
    scores = consistency.score(samples)
    print(json.dumps({"checkpoint": str(args.checkpoint), "temperature": args.temperature, "top_k": args.top_k,
                      "consistent": round(scores["consistent_fraction"] * len(samples)),
                      "distinct": len({s["text"] for s in samples}), **scores}))


if __name__ == "__main__":
    main()
