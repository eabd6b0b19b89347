"""Run an export folder in every client that is installed, and print one table: client, version, result.

    PYTHONPATH=workflow python workflow/benchmarks/clients.py results/export/<hash> [--checkpoint DIR] [--write]

transformers (greedy ids equal litgpt's), transformers reading model.gguf (logits equal litgpt's),
llama.cpp through llama-cpp-python (greedy text equal to transformers'), ctranslate2 (log-probs
within 1e-4 of transformers') and lm-eval (the lm_eval command on the folder's own task: bits per
character within 1e-4 of the figure the export computed in lm-eval's convention): storylm.hub.clients
has each check. A client that is not installed is skipped and
named; install them with `pip install ctranslate2 "lm-eval[hf]" llama-cpp-python` (they are not pinned).
The litgpt checkpoint is the export's own (its storylm_stage.json names the pretrain folder) unless
--checkpoint says otherwise. --write puts the results into the folder's storylm_clients.json and
the model card's "Use it" section. docs/export.md carries the table measured with this script.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from storylm.hub import clients, lm_eval_task, model_card  # noqa: E402
from storylm.hub.export_check import load_folder, probe_texts  # noqa: E402
from storylm.hub.folder import CARD, CLIENTS, STAGE_RECORD  # noqa: E402
from storylm.io.entry import write_json, write_text  # noqa: E402
from storylm.model.checkpoint import load_model
from storylm.model.tokens import StoryTokenizer  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="an export folder (results/export/<hash>)")
    parser.add_argument("--checkpoint", type=Path, help="the litgpt final/ folder it was exported from")
    parser.add_argument("--write", action="store_true", help="write the results into the folder and its card")
    args = parser.parse_args(argv)
    record = json.loads((args.folder / STAGE_RECORD).read_text())
    checkpoint = args.checkpoint or Path("results/pretrain") / record["inputs"]["pretrain"] / "final"
    model, tokenizer = load_model(checkpoint, "cpu"), StoryTokenizer(checkpoint)
    settings = json.loads((args.folder / "generation_config.json").read_text())
    stories = lm_eval_task.read_stories(args.folder)
    prompts = ["从前，有一个叫莉莉的小女孩", "有一天，小明和他的狗", "在森林里"]
    hf_model, hf_tokenizer = load_folder(args.folder)
    found = clients.run_all(args.folder, hf_model, hf_tokenizer, model, tokenizer, probe_texts([], {"prompts": prompts}),
                            prompts, stories)
    print(f"{'client':<20} {'version':<10} {'result':<6} what was measured")
    for row in found:
        verdict = {True: "pass", False: "FAIL", None: "skip"}[row["passed"]]
        print(f"{row['client']:<20} {row['version'] or '-':<10} {verdict:<6} {row['result']}")
    if args.write:
        saved_path = args.folder / CLIENTS
        saved = json.loads(saved_path.read_text()) if saved_path.is_file() else {}
        write_json(saved_path, {**saved, "clients": found})
        card = (args.folder / CARD).read_text(encoding="utf-8")
        sample_settings = {"prompts": prompts[:1], "temperature": settings.get("temperature", 0.4),
                           "top_k": settings.get("top_k", 20)}
        use = model_card.usage_for(model.config, tokenizer, sample_settings, saved.get("lm_eval_expected"))
        lines = model_card.client_lines(found, use)
        write_text(args.folder / CARD, model_card.with_client_lines(card, lines))


if __name__ == "__main__":
    main()
