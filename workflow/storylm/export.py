"""The export stage: a run's final litgpt checkpoint as a Hugging Face model folder.

    python -m storylm.export --record JSON --checkpoint results/pretrain/<h>/final \
        [--evaluate-dir results/evaluate/<h>] [--sample-dir results/sample/<h>] [--val Data/corpus/<h>/val.jsonl] \
        --out results/export/<h>

The folder is what `transformers.AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`
load without trust_remote_code, what llama.cpp loads (model.gguf), and what `hf upload` takes as it
is. Its files are described once, in storylm.hub.folder (FILES), and listed in its model card;
docs/export.md says more about each.

Before the folder is put in place the export loads it back with transformers and compares it with
litgpt: logits on probe texts, from model.safetensors and from model.gguf (a difference is a bug,
so it stops), and token ids (a difference is written into the card and does not stop it). The
folder is built beside its final name and renamed into place whole, so a folder under its final
name is always complete.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from pathlib import Path

import pandas as pd
import yaml

from storylm.hub import clients, lm_eval_task
from storylm.hub.export_check import check_folder, load_folder, probe_texts
from storylm.hub.folder import CARD, CHECKS, CLIENTS, GGUF, LOGITS_TOLERANCE, STAGE_RECORD, WEIGHTS, undescribed
from storylm.hub.gguf_export import write_gguf
from storylm.hub.hf_model import check_expressible, hf_config, hf_weights
from storylm.hub.hf_tokenizer import describe_tokenizer, dummy_prefix, save_tokenizer, special_tokens
from storylm.hub.model_card import CardFacts, model_card, usage_for
from storylm.io import jsonl
from storylm.io.entry import RECORD, StageError, atomic_dir, exit_with, first_line, read_json, write_json, write_text
from storylm.model import checkpoint
from storylm.model.tokens import LICENCE_FILES
from storylm.model.training_runner import ENVIRONMENT
from storylm.plan.integrity import require_intact
from storylm.plan.stage import finish_stage, log_record, read_record
from storylm.results.figures import numeric_figures, sample_figure_files


def read_metrics(evaluate_dir: Path | None) -> dict | None:
    if evaluate_dir is None:
        return None
    return read_json(evaluate_dir / "metrics.json", "the evaluate stage's metrics")


def read_sample_stage(sample_dir: Path | None) -> tuple[list[dict], dict, dict]:
    """The sampled stories, the sample stage's settings, and every figure of its other JSON files."""
    if sample_dir is None:
        return [], {}, {}
    samples = read_json(sample_dir / "samples.json", "the sample stage's stories")
    if not isinstance(samples, list) or not all(isinstance(s, dict) and "text" in s for s in samples):
        raise StageError(f"{sample_dir / 'samples.json'}: not a list of samples with a 'text' each")
    record_path = sample_dir / RECORD
    settings = read_json(record_path, "stage record").get("config", {}) if record_path.is_file() else {}
    figures = {}
    for path in sample_figure_files(sample_dir):
        for key, value in numeric_figures(read_json(path, "sample figures")).items():
            figures[f"{path.stem}.{key}"] = value
    return samples, settings, figures


def read_training(checkpoint_dir: Path) -> dict:
    """The litgpt pretrain settings: final/hyperparameters.yaml as litgpt saved it, else the rendered pretrain.yaml."""
    for path in (checkpoint_dir / "hyperparameters.yaml", checkpoint_dir.parent / "pretrain.yaml"):
        if path.is_file():
            try:
                settings = yaml.safe_load(path.read_text(encoding="utf-8"))
            except yaml.YAMLError as error:
                raise StageError(f"{path}: not valid YAML ({first_line(error)})") from None
            if isinstance(settings, dict):
                return {"file": str(path), **settings, **used_precision(checkpoint_dir.parent, settings)}
    return {}


def used_precision(pretrain_dir: Path, settings: dict) -> dict:
    """`precision: auto` is saved as litgpt's null: the card shows what each part of the training used."""
    if settings.get("precision") is not None:
        return {}
    try:
        parts = json.loads((pretrain_dir / ENVIRONMENT).read_text(encoding="utf-8"))
        used = sorted({part["precision"] for part in parts})
    except (OSError, ValueError, KeyError, TypeError):
        return {"precision": "auto (what it chose is not recorded)"}
    return {"precision": f"auto: {', '.join(used)}"}


def export(record: dict, checkpoint_dir: Path, evaluate_dir: Path | None, sample_dir: Path | None,
           out_dir: Path, val_split: Path | None = None, tokenizer_dir: Path | None = None) -> dict:
    if not checkpoint_dir.is_dir():
        raise StageError(f"{checkpoint_dir}: the checkpoint folder does not exist")
    config = checkpoint.load_config(checkpoint_dir)
    check_expressible(config)
    tokenizer = checkpoint.load_tokenizer(checkpoint_dir)
    metrics = read_metrics(evaluate_dir)
    samples, sample_settings, sample_figures = read_sample_stage(sample_dir)
    stories = scored_texts(evaluate_dir, val_split)
    training = read_training(checkpoint_dir)
    require_intact("pretrain", Path(checkpoint_dir).parent)
    state = checkpoint.load_state(checkpoint_dir)
    tied = checkpoint.embeddings_tied(state)
    dtype = state["transformer.wte.weight"].dtype
    special = special_tokens(tokenizer)
    model_config = hf_config(config, tied, dtype, {k: special[k] for k in ("bos_token_id", "eos_token_id",
                                                                             "pad_token_id")})
    model = checkpoint.model_from_state(config, state).float()
    weights = hf_weights(config, state, tied)
    texts = probe_texts(samples, sample_settings)
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    with atomic_dir(out_dir) as tmp:
        model_config.save_pretrained(tmp)
        save_file(weights, str(tmp / WEIGHTS), metadata={"format": "pt"})
        sampling = {key: sample_settings[key] for key in ("temperature", "top_k", "top_p") if key in sample_settings}
        # max_new_tokens as the card's lines ask (the first prompt and they fit the context), never max_length:
        # transformers 5 warns "Both max_new_tokens and max_length seem to have been set" on every call that
        # passes max_new_tokens to a model whose generation_config.json sets max_length.
        generation = GenerationConfig(
            bos_token_id=special["bos_token_id"], eos_token_id=special["eos_token_id"],
            pad_token_id=special["pad_token_id"],
            max_new_tokens=usage_for(config, tokenizer, sample_settings, None).new_tokens,
            **({"do_sample": True, **sampling} if sampling.get("temperature") else {}))
        generation.save_pretrained(tmp)
        hf_class = save_tokenizer(checkpoint_dir, tokenizer, tmp, config.block_size)
        write_gguf(tmp / GGUF, config, weights, tokenizer, checkpoint_dir, special,
                   dummy_prefix(checkpoint_dir / "tokenizer.model") if tokenizer.backend == "sentencepiece" else None)
        tokenizer_info = describe_tokenizer(tokenizer, checkpoint_dir, hf_class)
        hf_model, hf_tokenizer = load_folder(tmp)
        checks = check_folder(tmp, hf_model, hf_tokenizer, model, tokenizer, texts, config.block_size)
        checks.update(parameters=checkpoint.parameter_count(model), tie_word_embeddings=tied, head_dim=config.head_size,
                      vocab_size=config.padded_vocab_size, tokenizer=tokenizer_info)
        lm_eval = None if stories is None else lm_eval_task.write_task(tmp, stories, model, tokenizer,
                                                                         config.block_size)
        found = clients.run_all(tmp, hf_model, hf_tokenizer, model, tokenizer, texts,
                                list(sample_settings.get("prompts") or texts[:1]), lm_eval_task.read_stories(tmp))
        gguf = next(row for row in found if row["client"] == clients.GGUF_CLIENT)
        if gguf["passed"] is False:  # like the safetensors check: a difference is a bug
            raise RuntimeError(f"{tmp / GGUF}: {gguf['result']}, more than {LOGITS_TOLERANCE}: the GGUF is wrong")
        licence = copy_licence(tmp, [d for d in (tokenizer_dir, checkpoint_dir) if d is not None])
        usage = usage_for(config, tokenizer, sample_settings, lm_eval)
        # The card lists the folder's files: those written so far and the three written after it.
        files = sorted({path.name for path in tmp.iterdir()} | {CARD, CHECKS, CLIENTS, STAGE_RECORD})
        if undescribed(files):  # a file the export writes must be described, for the card and its users
            raise RuntimeError(f"{tmp}: storylm.hub.folder.FILES does not describe {undescribed(files)}")
        write_text(tmp / CARD, model_card(CardFacts(
            record=record, config=config, hf_config=model_config, tokenizer_info=tokenizer_info, checks=checks,
            metrics=metrics, samples=samples, sample_settings=sample_settings, sample_figures=sample_figures,
            training=training, clients=found, usage=usage, licence_file=licence, files=files)))
        write_json(tmp / CHECKS, checks)
        write_json(tmp / CLIENTS, {"clients": found, "lm_eval_expected": lm_eval})
        # Last, as in every stage folder; no environment.json: the folder is for the hub, and
        # storylm_export.json already names the client versions it was checked with.
        finish_stage(tmp, record, STAGE_RECORD, environment=None)
        readable(tmp)
    return checks


def scored_texts(evaluate_dir: Path | None, val_split: Path | None) -> list[str] | None:
    """The val stories the evaluate stage scored whole (story_scores.tsv's rows): what the lm-eval task scores."""
    if evaluate_dir is None or val_split is None or not (evaluate_dir / "story_scores.tsv").is_file():
        return None
    if not val_split.is_file():
        raise StageError(f"{val_split}: the val split does not exist (run the corpus stage)")
    scores = pd.read_csv(evaluate_dir / "story_scores.tsv", sep="\t")
    return list(itertools.islice(jsonl.iter_texts(val_split), len(scores)))


def copy_licence(folder: Path, sources: list[Path]) -> str | None:
    """The tokenizer's licence file (ChatGLM3's MODEL_LICENSE), from the first folder that has one, into the
    export: its name, or None where no folder has one."""
    for source in sources:
        for name in LICENCE_FILES:
            if (source / name).is_file():
                (folder / name).write_bytes((source / name).read_bytes())
                return name
    return None


def readable(folder: Path) -> None:
    """Temporary files and folders are private (0600/0700); the export is meant to be shared."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", required=True, help="JSON stage record (settings and input hashes)")
    parser.add_argument("--checkpoint", type=Path, required=True, help="the final checkpoint directory")
    parser.add_argument("--evaluate-dir", type=Path, help="the evaluate stage's folder (metrics.json)")
    parser.add_argument("--sample-dir", type=Path, help="the sample stage's folder (samples.json, figures)")
    parser.add_argument("--val", type=Path, help="the corpus stage's val.jsonl: the stories lm-eval is checked on")
    parser.add_argument("--tokenizer-dir", type=Path,
                        help="the tokenizer stage's folder: a licence file there (MODEL_LICENSE) goes into the export")
    parser.add_argument("--out", type=Path, required=True, help="the export folder, replaced whole")
    args = parser.parse_args(argv)
    record = read_record(args.record, "export")
    log_record(record)
    checks = export(record, args.checkpoint, args.evaluate_dir, args.sample_dir, args.out, args.val, args.tokenizer_dir)
    print(f"exported {args.checkpoint} to {args.out}: logits max |diff| {checks['logits_max_abs_diff']:.2g},"
          f" tokenizer ids {'equal' if checks['tokenizer_ids_equal'] else 'DIFFERENT'} on"
          f" {checks['tokenizer_texts_compared']} texts")


if __name__ == "__main__":
    exit_with(main)
