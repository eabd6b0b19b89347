"""The sample stage: stories from the final checkpoint, with litgpt's KV-cache generation, and their figures.

Each story gets its own seed derived from (seed, prompt number, sample number), so the
same checkpoint with the same settings gives the same text, and adding a prompt does
not change the stories of the others. The stories of a prompt are drawn in batches, each
row from its own seed (storylm.model.generation), with the same stories as one at a time.

samples.txt shows num_samples stories per prompt. The figures (storylm.stories.sample_metrics:
finished, repetition, diversity, copying from the train split) and the consistency scores
need more stories than one reads, so the stage draws num_figure_samples stories in all,
spread over the prompts; the shown ones are the first of each prompt, so they are the same
stories whatever num_figure_samples is.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path

from storylm.io import jsonl
from storylm.io.entry import StageError, exit_with, write_json, write_text
from storylm.io.progress import Progress
from storylm.model.checkpoint import load_model
from storylm.model.generation import continuations
from storylm.model.tokens import StoryTokenizer
from storylm.plan.config import ConfigError, check_prompt_tokens
from storylm.plan.integrity import require_intact
from storylm.plan.stage import add_stage_arguments, run_in_folder, run_step
from storylm.stories import consistency
from storylm.stories.sample_metrics import figures


def story_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    return seed * 1_000_003 + prompt_index * 1_009 + sample_index


def stories_per_prompt(settings: dict) -> int:
    """At least num_samples (the shown ones); enough for num_figure_samples over all prompts."""
    return max(settings["num_samples"], math.ceil(settings["num_figure_samples"] / len(settings["prompts"])))


def sample_prompt(model, tokenizer, prompt: str, seeds: list[int], settings: dict,
                  progress: Progress | None = None) -> list[tuple[str, bool]]:
    """For each seed, the story (prompt included) and whether the model ended it with its end-of-text token.

    The stories of a prompt are drawn together, in batches (storylm.model.generation), each from its own seed.
    """
    prompt_ids = tokenizer.encode(prompt, device=next(model.parameters()).device)
    written = continuations(model, prompt_ids, seeds, settings["max_new_tokens"], settings["temperature"],
                            settings["top_k"], settings["top_p"], tokenizer.eos_id,
                            None if progress is None else lambda rows: progress.update(progress.done + rows))
    prompt_list = prompt_ids.tolist()
    return [(tokenizer.decode(prompt_list + ids), finished) for ids, finished in written]


def never_sample_beyond(model, num_ids: int) -> None:
    """Mask the logits of the padded rows past the tokenizer's ids (e.g. 64,789 of ChatGLM3's 65,024).

    Training never sees those ids, but an undertrained model still gives them some probability,
    and a sampled one cannot be decoded (SentencePiece: "piece id is out of range").
    """
    if model.config.padded_vocab_size <= num_ids:
        return

    def mask(_module, _inputs, logits):
        logits[..., num_ids:] = float("-inf")
        return logits

    model.lm_head.register_forward_hook(mask)


def sample_all(checkpoint_dir: Path, settings: dict) -> list[dict]:
    require_intact("pretrain", Path(checkpoint_dir).parent)
    model = load_model(checkpoint_dir)
    tokenizer = StoryTokenizer(checkpoint_dir)
    never_sample_beyond(model, tokenizer.ids)
    samples = []
    with Progress("sample", len(settings["prompts"]) * stories_per_prompt(settings), "stories") as progress:
        for p, prompt in enumerate(settings["prompts"]):
            seeds = [story_seed(settings["seed"], p, s) for s in range(stories_per_prompt(settings))]
            written = sample_prompt(model, tokenizer, prompt, seeds, settings, progress)
            for s, (seed, (text, finished)) in enumerate(zip(seeds, written, strict=True)):
                samples.append({"prompt": prompt, "sample": s + 1, "seed": seed, "shown": s < settings["num_samples"],
                                "finished": finished, "text": text, "check": consistency.check_story(text, prompt)})
    return samples


def _figure(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def render_text(samples: list[dict], settings: dict, hashes: dict, scores: dict, figs: dict) -> str:
    reference = (f" (val stories {_figure(figs['reference_copy_fraction'])})"
                 if figs["reference_copy_fraction"] is not None else "")
    lines = [
        "# Stories sampled by the storylm pipeline",
        "# stage hashes: " + "  ".join(f"{stage}={value}" for stage, value in hashes.items()),
        f"# settings: temperature={settings['temperature']} top_k={settings['top_k']} top_p={settings['top_p']}"
        f" max_new_tokens={settings['max_new_tokens']} num_samples={settings['num_samples']} seed={settings['seed']}",
        f"# figures (of {figs['num_samples']} samples): finished {_figure(figs['finished_fraction'])},"
        f" repeated 4-grams {_figure(figs['repeated_4gram_fraction'])}, distinct-2 {_figure(figs['distinct_2'])},"
        f" train copy ({figs['train_copy_n']}-grams) {_figure(figs['train_copy_fraction'])}{reference}",
        f"# builtin-world checker (fraction of {scores['num_samples']} samples passing):"
        f" all rules {scores['consistent_fraction']:.2f}; "
        + ", ".join(f"{key.removesuffix('_fraction')} {value:.2f}" for key, value in scores.items()
                    if key.endswith("_fraction") and key != "consistent_fraction"),
        "",
    ]
    for prompt in settings["prompts"]:
        lines += ["=" * 60, f"Prompt: {prompt}", "=" * 60]
        for sample in (s for s in samples if s["prompt"] == prompt and s["shown"]):
            failed = sample["check"]["failed_rules"]
            mark = "consistent" if not failed else "inconsistent: " + ", ".join(failed)
            lines += [f"--- story {sample['sample']} (seed {sample['seed']}, {mark})", sample["text"], ""]
    return "\n".join(lines) + "\n"


def corpus_texts(path: Path, what: str):
    """Stories of a corpus split file (the corpus stage's JSON lines)."""
    if not path.is_file():
        raise StageError(f"{path}: {what} does not exist (run the corpus stage)")
    return jsonl.iter_texts(path)


def reference_stories(val: Path | None, count: int) -> list[str]:
    if val is None:
        return []
    texts = corpus_texts(val, "the val split")
    return list(itertools.islice(texts, count))


def check_prompts(args: argparse.Namespace, settings: dict) -> None:
    """The prompts' token counts against the block size; run as soon as the tokenizer exists (before
    training), since a prompt that leaves no room for a story would only fail here."""
    try:
        tokenizer = StoryTokenizer(args.files.input("tokenizer").parent)
        counts = check_prompt_tokens(settings["prompts"], tokenizer, args.block_size)
    except ConfigError as error:
        raise StageError(str(error)) from None
    write_json(args.files.output("prompt tokens"), {"prompt_tokens": counts, "block_size": args.block_size})


def sample_stage(args: argparse.Namespace, settings: dict) -> str:
    model = args.files.input("final model")
    if not model.is_file():
        raise StageError(f"{model}: no such file (run the pretrain stage)")
    train = corpus_texts(args.files.input("train split"), "the train split")
    reference = reference_stories(args.files.optional("val split"), settings["num_figure_samples"])

    samples = sample_all(model.parent, settings)
    scores = consistency.score([{"prompt": s["prompt"], "text": s["text"]} for s in samples])
    figs = figures(samples, train, settings["copy_ngram"], reference)
    text = render_text(samples, settings, json.loads(args.hashes), scores, figs)
    write_text(args.files.output("samples text"), text)
    write_json(args.files.output("samples"), samples)
    write_json(args.files.output("sample checks"), scores)
    write_json(args.files.output("sample figures"), figs)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    stories = commands.add_parser("stories", help="sample the stories and their figures")
    add_stage_arguments(stories)
    stories.add_argument("--hashes", required=True, help="JSON of every stage's hash, for the header")
    prompts = commands.add_parser("prompts", help="check that every prompt leaves room for a story")
    add_stage_arguments(prompts)
    prompts.add_argument("--block-size", type=int, required=True, help="model_config.block_size of the run")
    args = parser.parse_args(argv)
    if args.command == "prompts":
        run_step(args, check_prompts, "sample")  # a first step: the folder is not finished
        return
    run_in_folder(args, sample_stage, "sample", "python -m storylm.sample stories")


if __name__ == "__main__":
    exit_with(main)
