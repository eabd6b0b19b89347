"""Stories per second of the sample stage, one story at a time (litgpt's generate, as before) against
batched (storylm.model.generation), side by side in one run on the same checkpoint, machine and settings.

    PYTHONPATH=workflow python workflow/benchmarks/sample_speed.py results/pretrain/<hash>/final \
        [--stories 300] [--record results/sample/<hash>/config.json] [--threads N]

The stories are those of the sample stage (its prompts, seeds and sampling settings; the schema's
defaults without --record). It prints both rates, their ratio, and how many of the stories the two
ways wrote alike (they differ only where a batched matrix product rounds a last bit differently and
that flips a draw).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from litgpt.generate.base import generate  # noqa: E402

from storylm.model.checkpoint import load_model  # noqa: E402
from storylm.model.tokens import StoryTokenizer  # noqa: E402
from storylm.plan.schema import defaults  # noqa: E402
from storylm.sample import never_sample_beyond, sample_prompt, story_seed  # noqa: E402


def one_at_a_time(model, tokenizer, prompt: str, seeds: list[int], settings: dict) -> list[tuple[str, bool]]:
    """The sample stage before batching: litgpt's generate, one story after another."""
    stories = []
    prompt_ids = tokenizer.encode(prompt)
    max_returned = min(len(prompt_ids) + settings["max_new_tokens"], model.config.block_size)
    for seed in seeds:
        model.set_kv_cache(batch_size=1, max_seq_length=max_returned)
        torch.manual_seed(seed)
        ids = generate(model, prompt_ids, max_returned, temperature=settings["temperature"], top_k=settings["top_k"],
                       top_p=settings["top_p"], eos_id=tokenizer.eos_id)
        model.clear_kv_cache()
        finished = len(ids) > len(prompt_ids) and ids[-1].item() == tokenizer.eos_id
        stories.append((tokenizer.decode(ids[:-1] if finished else ids), finished))
    return stories


def timed(draw, model, tokenizer, jobs: dict[str, list[int]], settings: dict) -> tuple[float, list]:
    start = time.perf_counter()
    stories = [story for prompt, seeds in jobs.items() for story in draw(model, tokenizer, prompt, seeds, settings)]
    return time.perf_counter() - start, stories


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a final/ checkpoint folder")
    parser.add_argument("--stories", type=int, default=300, help="stories in all, spread over the prompts")
    parser.add_argument("--record", type=Path, help="the sample stage's config.json (else the schema's defaults)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = json.loads(args.record.read_text())["config"] if args.record else defaults()["sample"]
    prompts = settings["prompts"]
    per_prompt = -(-args.stories // len(prompts))
    jobs = {prompt: [story_seed(settings["seed"], p, s) for s in range(per_prompt)] for p, prompt in enumerate(prompts)}
    model, tokenizer = load_model(args.checkpoint, "cpu"), StoryTokenizer(args.checkpoint)
    never_sample_beyond(model, tokenizer.ids)
    single_s, single = timed(one_at_a_time, model, tokenizer, jobs, settings)
    batched_s, batched = timed(sample_prompt, model, tokenizer, jobs, settings)
    n = len(single)
    same = sum(a == b for a, b in zip(single, batched, strict=True))
    print(f"checkpoint {args.checkpoint}, {n} stories ({len(prompts)} prompts), torch threads {torch.get_num_threads()}")
    print(f"one at a time: {single_s:7.1f} s  {n / single_s:6.2f} stories/s")
    print(f"batched:       {batched_s:7.1f} s  {n / batched_s:6.2f} stories/s")
    print(f"speed-up: {single_s / batched_s:.1f}x; stories written alike: {same} of {n}")


if __name__ == "__main__":
    main()
