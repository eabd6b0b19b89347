"""The export stage: a run's final litgpt checkpoint as a Hugging Face model folder.

    python -m storylm.export --record JSON --inputs '{"final model": "results/pretrain/<h>/final/lit_model.pth",
        "metrics": ..., "samples": ..., "val split": ..., "tokenizer": ...}' --out results/export/<h>

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
from storylm.io.entry import StageError, atomic_dir, exit_with, first_line, read_json, write_json, write_text
from storylm.io.environment import ENVIRONMENT
from storylm.model import checkpoint
from storylm.model.tokens import LICENCE_FILES, StoryTokenizer
from storylm.plan import stages
from storylm.plan.integrity import require_intact
from storylm.plan.stage import StageFiles, finish_stage, finished_record, pending_settings, run_step, stage_parser
from storylm.plan.stages import CONTINUE_KEY
from storylm.results.figures import SAMPLE_FIGURES, numeric_figures, sample_figure_files


def read_metrics(metrics: Path | None) -> dict | None:
    return None if metrics is None else read_json(metrics, "the evaluate stage's metrics")


def read_sample_stage(samples_file: Path | None, files: StageFiles) -> tuple[list[dict], dict, dict]:
    """The sampled stories, the sample stage's settings (its record), and every figure of its other JSON files."""
    if samples_file is None:
        return [], {}, {}
    samples = read_json(samples_file, "the sample stage's stories")
    if not isinstance(samples, list) or not all(isinstance(s, dict) and "text" in s for s in samples):
        raise StageError(f"{samples_file}: not a list of samples with a 'text' each")
    sample_dir = samples_file.parent
    try:
        settings = (finished_record(sample_dir, "sample") or {}).get("config", {})
    except ValueError as error:
        raise StageError(str(error)) from None
    figures = {}
    for path in sample_figure_files({role: files.optional(role) for role in SAMPLE_FIGURES}):
        for key, value in numeric_figures(read_json(path, "sample figures")).items():
            figures[f"{path.stem}.{key}"] = value
    return samples, settings, figures


def read_training(candidates: list[Path | None], environment: Path | None = None) -> dict:
    """The litgpt pretrain settings: the first of these files there is (the hyperparameters litgpt saved with the
    final model, else the rendered litgpt config)."""
    for path in candidates:
        if path is not None and path.is_file():
            try:
                settings = yaml.safe_load(path.read_text(encoding="utf-8"))
            except yaml.YAMLError as error:
                raise StageError(f"{path}: not valid YAML ({first_line(error)})") from None
            if isinstance(settings, dict):
                return {"file": str(path), **settings, **used_precision(environment, settings)}
    return {}


def used_precision(environment: Path | None, settings: dict) -> dict:
    """`precision: auto` is saved as litgpt's null: the card shows what each part of the training used."""
    if settings.get("precision") is not None or environment is None:
        return {}
    try:
        parts = json.loads(environment.read_text(encoding="utf-8"))
        used = sorted({part["precision"] for part in parts})
    except (OSError, ValueError, KeyError, TypeError):
        return {"precision": "auto (what it chose is not recorded)"}
    return {"precision": f"auto: {', '.join(used)}"}


def export(record: dict, files: StageFiles, out_dir: Path) -> dict:
    """The export folder of the stage's files by role: the final model's folder, and (each optional, for an export
    by hand) the metrics and story scores, the samples, the val split and the tokenizer."""
    checkpoint_dir = files.input("final model").parent
    tokenizer_file = files.optional("tokenizer")  # its folder may hold a licence file
    if not checkpoint_dir.is_dir():
        raise StageError(f"{checkpoint_dir}: the checkpoint folder does not exist")
    config = checkpoint.load_config(checkpoint_dir)
    check_expressible(config)
    # One copy: the tokenizer stage's folder (its licence beside it); a checkpoint outside the pipeline holds
    # its tokenizer beside its weights, as litgpt saves one.
    tokenizer = StoryTokenizer(tokenizer_file.parent if tokenizer_file else checkpoint_dir)
    metrics = read_metrics(files.optional("metrics"))
    samples, sample_settings, sample_figures = read_sample_stage(files.optional("samples"), files)
    stories = scored_texts(files.optional("story scores"), files.optional("val split"))
    training = read_training([files.optional("hyperparameters"), files.optional("litgpt config")],
                             Path(checkpoint_dir).parent / ENVIRONMENT)
    upstream = pending_settings(Path(checkpoint_dir).parent, "pretrain").get(CONTINUE_KEY)
    if upstream:  # continued pretraining: the card names the training it started from
        training["continued_from"] = stages.folder("pretrain", upstream)
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
        hf_class = save_tokenizer(tokenizer, tmp, config.block_size)
        write_gguf(tmp / GGUF, config, weights, tokenizer, special,
                   dummy_prefix(tokenizer.file) if tokenizer.sentencepiece else None)
        tokenizer_info = describe_tokenizer(tokenizer, hf_class)
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
        licence = copy_licence(tmp, tokenizer.folder)
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


def scored_texts(story_scores: Path | None, val_split: Path | None) -> list[str] | None:
    """The val stories the evaluate stage scored whole (its story scores' rows): what the lm-eval task scores."""
    if story_scores is None or val_split is None or not story_scores.is_file():
        return None
    if not val_split.is_file():
        raise StageError(f"{val_split}: the val split does not exist (run the corpus stage)")
    scores = pd.read_csv(story_scores, sep="\t")
    return list(itertools.islice(jsonl.iter_texts(val_split), len(scores)))


def copy_licence(folder: Path, source: Path) -> str | None:
    """The tokenizer's licence file (ChatGLM3's MODEL_LICENSE), from the tokenizer's folder, into the export:
    its name, or None where it has none."""
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
    # The folder is built aside and put in place whole, its record in it (export): no lock, no record after.
    run_step(stage_parser("python -m storylm.export", __doc__, "the export folder, replaced whole").parse_args(argv),
             export_stage, "export")


def export_stage(args: argparse.Namespace, settings: dict) -> str:
    checks = export(args.stage_record, args.files, args.out)
    return (f"exported {args.files.input('final model').parent} to {args.out}: logits max |diff| {checks['logits_max_abs_diff']:.2g},"
            f" tokenizer ids {'equal' if checks['tokenizer_ids_equal'] else 'DIFFERENT'} on"
            f" {checks['tokenizer_texts_compared']} texts")


if __name__ == "__main__":
    exit_with(main)
