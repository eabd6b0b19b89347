"""The sample stage: stories from the final checkpoint, with litgpt's KV-cache generation.

Each story gets its own seed derived from (seed, prompt number, sample number), so the
same checkpoint with the same settings gives the same text, and adding a prompt does
not change the stories of the others.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from litgpt.generate.base import generate

from storylm import consistency
from storylm.checkpoint import load_model, load_tokenizer
from storylm.config import write_stage_record


def story_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    return seed * 1_000_003 + prompt_index * 1_009 + sample_index


@torch.inference_mode()
def sample_story(model, tokenizer, prompt: str, settings: dict, seed: int) -> str:
    prompt_ids = tokenizer.encode(prompt, device=next(model.parameters()).device)
    max_returned = min(len(prompt_ids) + settings["max_new_tokens"], model.config.block_size)
    model.set_kv_cache(batch_size=1, max_seq_length=max_returned, device=prompt_ids.device)
    torch.manual_seed(seed)
    ids = generate(model, prompt_ids, max_returned, temperature=settings["temperature"], top_k=settings["top_k"],
                   top_p=settings["top_p"], eos_id=tokenizer.eos_id)
    model.clear_kv_cache()
    if len(ids) and ids[-1].item() == tokenizer.eos_id:
        ids = ids[:-1]
    return tokenizer.decode(ids)


def sample_all(checkpoint_dir: Path, settings: dict) -> list[dict]:
    model = load_model(checkpoint_dir)
    tokenizer = load_tokenizer(checkpoint_dir)
    samples = []
    for p, prompt in enumerate(settings["prompts"]):
        for s in range(settings["num_samples"]):
            seed = story_seed(settings["seed"], p, s)
            text = sample_story(model, tokenizer, prompt, settings, seed)
            samples.append({"prompt": prompt, "sample": s + 1, "seed": seed, "text": text,
                            "check": consistency.check_story(text, prompt)})
    return samples


def render_text(samples: list[dict], settings: dict, hashes: dict, scores: dict) -> str:
    lines = [
        "# Stories sampled by the storylm pipeline",
        "# stage hashes: " + "  ".join(f"{stage}={value}" for stage, value in hashes.items()),
        f"# settings: temperature={settings['temperature']} top_k={settings['top_k']} top_p={settings['top_p']}"
        f" max_new_tokens={settings['max_new_tokens']} num_samples={settings['num_samples']} seed={settings['seed']}",
        f"# consistency (fraction of samples): all rules {scores['consistent_fraction']:.2f},"
        f" names {scores['name_consistent_fraction']:.2f}, place {scores['place_consistent_fraction']:.2f},"
        f" finished {scores['ended_fraction']:.2f} (of {scores['num_samples']} samples)",
        "",
    ]
    for prompt in settings["prompts"]:
        lines += ["=" * 60, f"Prompt: {prompt}", "=" * 60]
        for sample in (s for s in samples if s["prompt"] == prompt):
            mark = "consistent" if sample["check"]["consistent"] else "inconsistent"
            lines += [f"--- story {sample['sample']} (seed {sample['seed']}, {mark})", sample["text"], ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--record", required=True, help="JSON stage record (settings and input hashes)")
    parser.add_argument("--hashes", required=True, help="JSON of every stage's hash, for the header")
    parser.add_argument("--checkpoint", type=Path, required=True, help="the final checkpoint directory")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    settings = json.loads(args.record)["config"]
    samples = sample_all(args.checkpoint, settings)
    scores = consistency.score([{"prompt": s["prompt"], "text": s["text"]} for s in samples])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "samples.txt").write_text(render_text(samples, settings, json.loads(args.hashes), scores),
                                          encoding="utf-8")
    (args.out / "samples.json").write_text(json.dumps(samples, indent=2, ensure_ascii=False) + "\n",
                                           encoding="utf-8")
    (args.out / "consistency.json").write_text(json.dumps(scores, indent=2) + "\n")
    write_stage_record(args.record, args.out)
    print((args.out / "samples.txt").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
