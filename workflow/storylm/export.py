"""The export stage: a run's final litgpt checkpoint as a Hugging Face model folder.

    python -m storylm.export --record JSON --checkpoint results/pretrain/<h>/final \
        [--evaluate-dir results/evaluate/<h>] [--sample-dir results/sample/<h>] --out results/export/<h>

The folder is what `transformers.AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`
load without trust_remote_code, and what `hf upload` takes as it is:

    config.json              LlamaForCausalLM config (head_dim, rms_norm_eps, rope_theta, tie_word_embeddings,
                             vocab_size = litgpt's padded_vocab_size, since the embedding has that many rows)
    model.safetensors        the weights, named by litgpt's own copy_weights_llama
    generation_config.json   bos, eos, pad (= eos) and the sample stage's sampling settings
    tokenizer files          a trained BPE as PreTrainedTokenizerFast; a SentencePiece model (ChatGLM3) as
                             LlamaTokenizerFast (tokenizer.json) and LlamaTokenizer (tokenizer.model)
    README.md                the model card
    storylm_stage.json       the stage record (config.json is the model's)
    storylm_export.json      what the export checked: logits and token ids against litgpt

Before the folder is put in place the export loads it back with transformers and compares it with
litgpt: logits on probe texts (a difference is a bug, so it stops) and token ids (a difference is
written into the card, as the issue asks, and does not stop it). The folder is built beside its
final name and renamed into place whole, so a folder under its final name is always complete.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml

from storylm.cli import StageError, exit_with, write_json, write_text

STAGE_RECORD = "storylm_stage.json"
CHECKS = "storylm_export.json"
# The one file to name as the Snakemake output; the whole folder appears at once.
OUTPUT_FILE = "model.safetensors"

# A difference of this much between transformers' and litgpt's fp32 logits means a wrong conversion
# (a mis-named or mis-split weight moves logits by whole units); float rounding stays far below.
LOGITS_TOLERANCE = 1e-3

# Texts the tokenizer check always includes, besides the prompts and the sampled stories: the
# corners where a Hugging Face tokenizer most often parts from its original (leading and repeated
# spaces, newlines as byte fallback, digits, Latin text, emoji, characters outside the vocabulary,
# and special-token strings written as plain text).
PROBE_TEXTS = (
    "莉莉和本是朋友。",
    "从前，有一个叫莉莉的小女孩。\n她喜欢在公园里玩。\n\n有一天，她找到了3个红苹果。",
    "他说：“你好！”……她笑了。",
    " 开头有空格", "两个  空格", "结尾有空格 ", "\t制表符\t",
    "Tom and Lily, 123 4567.89!",
    "表情 😀🐶 和生僻字 𠀀𪚥",
    "</s> <s> <unk> 是普通文字",
)

# litgpt config keys whose value LlamaForCausalLM has no way to express otherwise: key -> (the
# value Llama needs, what Llama does instead). Keys outside this table map onto LlamaConfig fields.
LLAMA_NEEDS = {
    "mlp_class_name": ("LLaMAMLP", "Llama's MLP is the gated SiLU MLP (gate_proj, up_proj, down_proj)"),
    "norm_class_name": ("RMSNorm", "Llama normalizes with RMSNorm only"),
    "parallel_residual": (False, "Llama adds attention and MLP one after the other"),
    "shared_attention_norm": (False, "Llama has a norm before attention and another before the MLP"),
    "norm_1": (True, "Llama has a norm before attention"),
    "norm_2": (True, "Llama has a norm before the MLP"),
    "post_attention_norm": (False, "Llama has no norm after attention"),
    "post_mlp_norm": (False, "Llama has no norm after the MLP"),
    "norm_qk": (False, "Llama does not normalize queries and keys"),
    # LlamaConfig has attention_bias and mlp_bias, but litgpt's Llama conversion (copy_weights_llama)
    # has no names for bias weights: it fails with a KeyError on the first one.
    "bias": (False, "litgpt's Llama conversion (copy_weights_llama) names no bias weights"),
    "attn_bias": (False, "litgpt's Llama conversion (copy_weights_llama) names no bias weights"),
    "lm_head_bias": (False, "Llama's lm_head has no bias"),
    "rotary_percentage": (1.0, "Llama rotates every channel of a head (no partial rotary embedding)"),
    "rope_condense_ratio": (1, "the export writes no rope_scaling"),
    "rope_adjustments": (None, "the export writes no rope_scaling"),
    "rope_interleave": (False, "Llama rotates the two halves of a head, not interleaved pairs"),
    "rope_local_base_freq": (None, "Llama has one rope base for every layer"),
    "scale_embeddings": (False, "Llama does not scale the embeddings by sqrt(n_embd)"),
    "attention_logit_softcapping": (None, "Llama has no logit softcapping"),
    "final_logit_softcapping": (None, "Llama has no logit softcapping"),
    "sliding_window_size": (None, "LlamaForCausalLM attends to the whole context"),
    "latent_attention": (None, "Llama has no latent attention"),
    "n_expert": (0, "Llama has no mixture of experts"),
}


# ---------------------------------------------------------------------------
# Reading the checkpoint


def first_line(error: BaseException) -> str:
    """The error model prints one line; library errors sometimes span several."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def read_json(path: Path, what: str):
    if not path.is_file():
        raise StageError(f"{path}: missing ({what})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise StageError(f"{path}: not valid JSON ({first_line(error)})") from None


def load_config(checkpoint_dir: Path):
    from litgpt import Config

    path = checkpoint_dir / "model_config.yaml"
    if not path.is_file():
        raise StageError(f"{path}: missing (the checkpoint's model config)")
    try:
        return Config.from_file(path)
    except (TypeError, ValueError, AssertionError, yaml.YAMLError) as error:
        raise StageError(f"{path}: not a litgpt model config ({first_line(error)})") from None


def load_state(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    path = checkpoint_dir / "lit_model.pth"
    if not path.is_file():
        raise StageError(f"{path}: missing (the checkpoint's weights)")
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as error:  # noqa: BLE001 - any failure to read is a damaged file
        raise StageError(f"{path}: cannot be read as a torch checkpoint ({first_line(error)})") from None
    # pretrain's final checkpoint holds the whole training state; the weights are under "model".
    state = state.get("model", state) if isinstance(state, dict) else None
    if not isinstance(state, dict) or "transformer.wte.weight" not in state:
        raise StageError(f"{path}: holds no litgpt GPT weights (no transformer.wte.weight)")
    return state


def check_llama(config) -> None:
    """Stop with the model_config key of anything LlamaForCausalLM cannot express."""
    for key, (needed, why) in LLAMA_NEEDS.items():
        value = getattr(config, key)
        if value != needed and not (needed is None and not value):
            raise StageError(f"model_config.{key}: {value!r} cannot be expressed as LlamaForCausalLM"
                             f" (it needs {needed!r}: {why})")
    if config.attention_scores_scalar not in (None, config.head_size):
        raise StageError(f"model_config.attention_scores_scalar: {config.attention_scores_scalar} cannot be"
                         f" expressed as LlamaForCausalLM (it scales attention by 1/sqrt(head_size"
                         f" {config.head_size}))")


def embeddings_tied(state: dict[str, torch.Tensor]) -> bool:
    # litgpt saves a tied embedding (train.tie_embeddings) under both names; an untied head never
    # equals the embedding after initialization and training.
    head = state.get("lm_head.weight")
    return head is not None and torch.equal(head, state["transformer.wte.weight"])


# ---------------------------------------------------------------------------
# The model: config and weights


def llama_config(config, tied: bool, dtype: torch.dtype, special: dict):
    from transformers import LlamaConfig

    return LlamaConfig(
        architectures=["LlamaForCausalLM"],
        # The embedding and the head have padded_vocab_size rows; ids past the tokenizer's are never produced.
        vocab_size=config.padded_vocab_size,
        hidden_size=config.n_embd,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        num_key_value_heads=config.n_query_groups,
        # Stated always: transformers' default n_embd // n_head is wrong where n_head x head_size != n_embd.
        head_dim=config.head_size,
        hidden_act="silu",
        max_position_embeddings=config.block_size,
        rms_norm_eps=config.norm_eps,
        rope_theta=float(config.rope_base),
        tie_word_embeddings=tied,
        attention_bias=False,
        mlp_bias=False,
        dtype=dtype,
        **special,
    )


def hf_weights(config, state: dict[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    """litgpt's weights under Llama's names, through litgpt's own conversion code."""
    from litgpt.scripts.convert_lit_checkpoint import copy_weights_llama

    weights: dict[str, torch.Tensor] = {}
    # untie_weights=True leaves lm_head.weight out: with tie_word_embeddings transformers ties it to the
    # embedding, as litgpt did.
    copy_weights_llama(config, weights, state, untie_weights=tied)
    # safetensors stores each tensor on its own: the q/k/v views of one qkv matrix become copies.
    return {name: tensor.detach().contiguous().clone() for name, tensor in weights.items()}


def lit_model(config, state: dict[str, torch.Tensor], tied: bool):
    from litgpt import GPT

    model = GPT(config)
    model.load_state_dict(state)
    if tied:
        model.transformer.wte.weight = model.lm_head.weight
    return model.float().eval()


# ---------------------------------------------------------------------------
# The tokenizer


def tokenizer_files(checkpoint_dir: Path):
    from litgpt import Tokenizer

    try:
        return Tokenizer(checkpoint_dir)
    except NotImplementedError:
        raise StageError(f"{checkpoint_dir}: holds neither tokenizer.json nor tokenizer.model") from None


def special_tokens(tokenizer) -> dict:
    """bos/eos/pad ids and strings; pad is eos (no tokenizer here has a pad token, and stories end in eos)."""
    def piece(i):
        if i is None:
            return None
        if tokenizer.backend == "sentencepiece":
            return tokenizer.processor.id_to_piece(i)
        return tokenizer.processor.id_to_token(i)

    return {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.eos_id,
            "bos_token": piece(tokenizer.bos_id), "eos_token": piece(tokenizer.eos_id),
            "pad_token": piece(tokenizer.eos_id)}


def save_tokenizer(checkpoint_dir: Path, tokenizer, out_dir: Path, block_size: int) -> str:
    """Write the tokenizer as a class built into transformers; returns that class's name."""
    special = special_tokens(tokenizer)
    common = dict(bos_token=special["bos_token"], eos_token=special["eos_token"], pad_token=special["pad_token"],
                  model_max_length=block_size, clean_up_tokenization_spaces=False)
    if tokenizer.backend == "huggingface":
        from transformers import PreTrainedTokenizerFast

        config_path = checkpoint_dir / "tokenizer_config.json"
        unk = read_json(config_path, "tokenizer config").get("unk_token") if config_path.is_file() else None
        hf = PreTrainedTokenizerFast(tokenizer_file=str(checkpoint_dir / "tokenizer.json"), unk_token=unk, **common)
        hf.save_pretrained(out_dir)
        return "PreTrainedTokenizerFast"

    from transformers import LlamaTokenizerFast

    model_file = checkpoint_dir / "tokenizer.model"
    hf = LlamaTokenizerFast(
        vocab_file=str(model_file), from_slow=True,
        unk_token=tokenizer.processor.id_to_piece(tokenizer.processor.unk_id()),
        add_bos_token=tokenizer.use_bos, add_eos_token=False,
        # legacy: text goes through SentencePiece's own rules (what litgpt does), not Llama's newer ones.
        legacy=True,
        # SentencePiece's dummy prefix ("▁" before the text, id 30910 for ChatGLM3), as its model says.
        add_prefix_space=dummy_prefix(model_file),
        # SentencePiece reads "</s>" in a text as four characters, never as the eos token.
        split_special_tokens=True,
        **common,
    )
    hf.save_pretrained(out_dir)
    # tokenizer.json already holds the prefix rule; left in the config, add_prefix_space would make
    # transformers rebuild the fast tokenizer from tokenizer.model (needing sentencepiece) on every load.
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.pop("add_prefix_space", None)
    write_json(config_path, config)
    return "LlamaTokenizerFast"


def dummy_prefix(model_file: Path) -> bool:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    return proto.normalizer_spec.add_dummy_prefix


def describe_tokenizer(tokenizer, checkpoint_dir: Path, hf_class: str) -> dict:
    info = {"backend": tokenizer.backend, "vocab_size": tokenizer.vocab_size, "transformers_class": hf_class,
            "eos_id": tokenizer.eos_id, "bos_id": tokenizer.bos_id, "use_bos": tokenizer.use_bos}
    config_path = checkpoint_dir / "tokenizer_config.json"
    if config_path.is_file():
        source = read_json(config_path, "tokenizer config").get("name_or_path")
        if source:
            info["source"] = source
    return info


# ---------------------------------------------------------------------------
# The card's inputs: metrics, samples, training settings


def numeric_figures(obj, prefix: str = "") -> dict[str, float]:
    """Every number in a JSON object, under its dotted key path (booleans and lists left out)."""
    figures = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            figures.update(numeric_figures(value, f"{prefix}{key}."))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        figures[prefix[:-1]] = obj
    return figures


def read_metrics(evaluate_dir: Path | None) -> dict | None:
    if evaluate_dir is None:
        return None
    return read_json(evaluate_dir / "metrics.json", "the evaluate stage's metrics")


def read_samples(sample_dir: Path | None) -> tuple[list[dict], dict, dict]:
    """The sampled stories, the sample stage's settings, and every figure of its other JSON files."""
    if sample_dir is None:
        return [], {}, {}
    samples = read_json(sample_dir / "samples.json", "the sample stage's stories")
    if not isinstance(samples, list) or not all(isinstance(s, dict) and "text" in s for s in samples):
        raise StageError(f"{sample_dir / 'samples.json'}: not a list of samples with a 'text' each")
    record_path = sample_dir / "config.json"
    settings = read_json(record_path, "stage record").get("config", {}) if record_path.is_file() else {}
    figures = {}
    # Any JSON of figures the sample stage writes (consistency.json, metrics.json, ...), whatever its keys.
    for path in sorted(sample_dir.glob("*.json")):
        if path.name not in ("samples.json", "config.json"):
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
                return {"file": str(path), **settings}
    return {}


# ---------------------------------------------------------------------------
# Checking the written folder against litgpt


def probe_texts(samples: list[dict], settings: dict) -> list[str]:
    texts = list(PROBE_TEXTS) + list(settings.get("prompts", []))
    texts += [s["prompt"] for s in samples if s.get("prompt")] + [s["text"] for s in samples]
    return list(dict.fromkeys(t for t in texts if isinstance(t, str)))


@torch.no_grad()
def check_folder(folder: Path, model, tokenizer, texts: list[str], block_size: int) -> dict:
    """Load the folder with transformers as a user would, and compare it with litgpt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_model, info = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, output_loading_info=True)
    unloaded = {key: value for key, value in info.items() if value}
    if unloaded:
        raise RuntimeError(f"{folder}: transformers did not load every weight: {unloaded}")
    hf_tokenizer = AutoTokenizer.from_pretrained(folder)
    mismatches, decode_mismatches = [], 0
    for text in texts:
        lit_ids = tokenizer.encode(text).tolist()
        hf_ids = hf_tokenizer(text)["input_ids"]
        if lit_ids != hf_ids:
            mismatches.append({"text": text, "litgpt": lit_ids, "transformers": hf_ids})
        # litgpt's backends drop special tokens when decoding; transformers does so when asked.
        hf_text = hf_tokenizer.decode(lit_ids, skip_special_tokens=True)
        decode_mismatches += hf_text != tokenizer.decode(torch.tensor(lit_ids))
    max_diff, scored = 0.0, 0
    # The probe strings' corners and the model's own stories.
    for text in dict.fromkeys(texts[:4] + texts[-4:]):
        ids = tokenizer.encode(text, eos=True)[:block_size].long().unsqueeze(0)
        diff = (hf_model(ids).logits - model(ids)).abs().max().item()
        max_diff, scored = max(max_diff, diff), scored + ids.numel()
    if not max_diff <= LOGITS_TOLERANCE:
        raise RuntimeError(f"{folder}: transformers' logits differ from litgpt's by {max_diff:.3g}"
                           f" (more than {LOGITS_TOLERANCE}): the conversion is wrong")
    return {
        "transformers_class": type(hf_model).__name__,
        "tokenizer_class": type(hf_tokenizer).__name__,
        "logits_max_abs_diff": max_diff,
        "logits_tokens_compared": scored,
        "tokenizer_texts_compared": len(texts),
        "tokenizer_ids_equal": not mismatches,
        "tokenizer_mismatches": mismatches[:5],
        "tokenizer_mismatch_count": len(mismatches),
        "decode_mismatch_count": decode_mismatches,
    }


# ---------------------------------------------------------------------------
# The model card


def fmt(value) -> str:
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return f"{value:,.1f}"
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def table(rows: list[tuple], header: tuple) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(fmt(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]


def card_metadata(record: dict, tokenizer_info: dict) -> dict:
    settings = record.get("config", {})
    chatglm3 = "chatglm3" in str(tokenizer_info.get("source", "")).lower()
    metadata = {
        "language": settings.get("language", ["zh"]),
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["storylm", "litgpt", "llama", "text-generation", "children-stories", "chinese"],
        # No licence is chosen for the user: "other" until the export config names one.
        "license": settings.get("license", "other"),
    }
    if metadata["license"] == "other":
        metadata["license_name"] = settings.get("license_name", "chatglm3-6b-model-license" if chatglm3
                                                else "unspecified")
        link = settings.get("license_link", "https://huggingface.co/THUDM/chatglm3-6b/blob/main/MODEL_LICENSE"
                            if chatglm3 else None)
        if link:
            metadata["license_link"] = link
    corpus = settings.get("corpus", {})
    if isinstance(corpus, dict) and corpus.get("source") == "hf" and corpus.get("hf", {}).get("repo_id"):
        metadata["datasets"] = [corpus["hf"]["repo_id"]]
    return metadata


def data_lines(record: dict) -> list[str]:
    corpus = record.get("config", {}).get("corpus")
    if not isinstance(corpus, dict) or "source" not in corpus:
        return ["Not recorded in this export's stage record (`config.corpus`); the pipeline's corpus stage"
                " that fed it is named by the stage hashes below."]
    source = corpus["source"]
    if source == "builtin":
        builtin = corpus.get("builtin", {})
        text = (f"Generated Chinese children's stories from storylm's built-in story generator"
                f" (`storylm.storygen`, {fmt(builtin.get('num_stories', '?'))} stories,"
                f" seed {builtin.get('seed', '?')}).")
    elif source == "hf":
        hf = corpus.get("hf", {})
        text = f"The Hugging Face dataset `{hf.get('repo_id')}` (revision `{hf.get('revision', 'main')}`)."
    else:
        text = f"Corpus source `{source}`: `{json.dumps(corpus.get(source), ensure_ascii=False)}`."
    details = [f"{key}: `{json.dumps(corpus[key], ensure_ascii=False)}`"
               for key in ("text_field", "normalize", "dedup", "split", "max_stories") if key in corpus]
    return [text, "", "Corpus settings: " + ", ".join(details) + "." if details else ""]


def budget_lines(training: dict, metrics: dict | None) -> list[str]:
    if not training:
        return ["Not recorded (no `hyperparameters.yaml` in the checkpoint and no `pretrain.yaml` beside it)."]
    train = training.get("train") or {}
    optimizer = training.get("optimizer") or {}
    rows = [(key, train[key]) for key in ("max_tokens", "global_batch_size", "micro_batch_size", "max_seq_length",
                                          "lr_warmup_steps", "min_lr", "max_norm", "tie_embeddings") if key in train]
    if isinstance(optimizer, dict):
        rows.append(("optimizer", optimizer.get("class_path", "")))
        rows += [(f"optimizer {key}", value) for key, value in (optimizer.get("init_args") or {}).items()]
    rows += [(key, training[key]) for key in ("precision", "devices", "num_nodes", "seed") if key in training]
    if metrics:
        for key in ("train_steps", "train_iters"):
            if key in metrics:
                rows.append((f"{key} (measured)", metrics[key]))
        if "train_steps" in metrics and {"global_batch_size", "max_seq_length"} <= train.keys():
            rows.append(("tokens trained on (steps x global batch x sequence)",
                         metrics["train_steps"] * train["global_batch_size"] * train["max_seq_length"]))
    return [f"From litgpt's `{Path(training['file']).name}` of the run:", ""] + table(rows, ("setting", "value"))


def tokenizer_lines(info: dict, checks: dict) -> list[str]:
    if info["backend"] == "huggingface":
        what = (f"A byte-level BPE trained by the pipeline with Hugging Face `tokenizers` ({fmt(info['vocab_size'])}"
                f" tokens), shipped as `tokenizer.json` for `PreTrainedTokenizerFast`.")
    else:
        what = (f"The SentencePiece model `tokenizer.model` ({fmt(info['vocab_size'])} pieces"
                + (f", from `{info['source']}`" if info.get("source") else "")
                + "), shipped as the built-in `LlamaTokenizerFast` (`tokenizer.json`, legacy SentencePiece"
                " rules, dummy prefix, byte fallback, special-token strings split as text) and, with"
                " `use_fast=False`, `LlamaTokenizer` on the same `tokenizer.model`.")
    lines = [what, "", f"Stories end with eos id {info['eos_id']}; "
             f"{'bos is added' if info['use_bos'] else 'no bos is added'}; the pad id is eos.", ""]
    if checks["tokenizer_ids_equal"]:
        lines.append(f"Its ids equal `litgpt.Tokenizer`'s (the ids the model was trained on) on all"
                     f" {checks['tokenizer_texts_compared']} texts the export checked (probe texts with spaces,"
                     " newlines, digits, Latin letters, emoji and rare characters, the prompts and the sampled"
                     " stories).")
    else:
        lines.append(f"**Its ids differ from `litgpt.Tokenizer`'s** (the ids the model was trained on) on"
                     f" {checks['tokenizer_mismatch_count']} of {checks['tokenizer_texts_compared']} texts checked."
                     " The exact differences, first ones:")
        lines.append("")
        for m in checks["tokenizer_mismatches"]:
            lines.append(f"- `{json.dumps(m['text'], ensure_ascii=False)}`: litgpt `{m['litgpt']}`,"
                         f" transformers `{m['transformers']}`")
    return lines


def model_card(record: dict, config, hf_config, tokenizer_info: dict, checks: dict, metrics: dict | None,
               samples: list[dict], sample_settings: dict, sample_figures: dict, training: dict,
               parameters: int) -> str:
    metadata = card_metadata(record, tokenizer_info)
    name = config.name or "storylm"
    lines = ["---", yaml.safe_dump(metadata, allow_unicode=True, sort_keys=False).strip(), "---", "",
             f"# {name}: a small Chinese story language model", "",
             f"A {fmt(parameters)}-parameter LLaMA-style causal language model that writes simple Chinese"
             " children's stories, pretrained from scratch with [litgpt](https://github.com/Lightning-AI/litgpt)"
             " by the storylm pipeline and exported as a `LlamaForCausalLM` (no `trust_remote_code`).", "",
             "```python",
             "from transformers import pipeline",
             "",
             'generate = pipeline("text-generation", model="<this folder or repo id>")',
             'print(generate("从前，有一个叫莉莉的小女孩")[0]["generated_text"])',
             "```", "",
             "## Data", ""] + data_lines(record) + ["", "## Tokenizer", ""] + tokenizer_lines(tokenizer_info, checks)
    rows = [("layers (num_hidden_layers)", config.n_layer), ("hidden size (n_embd)", config.n_embd),
            ("attention heads", config.n_head), ("key/value heads (n_query_groups)", config.n_query_groups),
            ("head_dim (head_size)", config.head_size), ("MLP intermediate size", config.intermediate_size),
            ("context length (block_size)", config.block_size),
            ("vocabulary (tokenizer / padded, = embedding rows)", f"{fmt(tokenizer_info['vocab_size'])} /"
                                                                  f" {fmt(config.padded_vocab_size)}"),
            ("tie_word_embeddings", hf_config.tie_word_embeddings), ("rms_norm_eps", config.norm_eps),
            ("rope_theta", float(config.rope_base)), ("weights dtype", str(hf_config.dtype).replace("torch.", "")),
            ("parameters (tied weights once)", parameters)]
    lines += ["", "## Model config", ""] + table(rows, ("", "value"))
    if config.n_head * config.head_size != config.n_embd:
        lines += ["", f"Attention is {config.n_head} heads x {config.head_size} = {config.n_head * config.head_size}"
                      f" channels while the hidden size is {config.n_embd}; `config.json` says `head_dim`"
                      f" {config.head_size}, so transformers builds it as trained."]
    lines += ["", "## Metrics", ""]
    if metrics is None:
        lines.append("Validation: not measured (no evaluate stage output was given to the export).")
    else:
        figures = numeric_figures(metrics)
        first = [k for k in ("val_bits_per_character", "val_loss_nats_per_token", "val_perplexity") if k in figures]
        rows = [(key, figures[key]) for key in first + [k for k in figures if k not in first]]
        lines += ["On the held-out val split (bits per character compare models with different tokenizers):", ""]
        lines += table(rows, ("figure", "value"))
    lines += [""]
    if not sample_figures:
        lines.append("Sample figures: not measured (no sample stage output was given to the export).")
    else:
        lines += ["Figures of the sampled stories:", ""]
        lines += table(list(sample_figures.items()), ("figure (file.key)", "value"))
    lines += ["", "## A sampled story", ""]
    if not samples:
        lines.append("Not sampled (no sample stage output was given to the export).")
    else:
        story = samples[0]
        how = ", ".join(f"{key} {sample_settings[key]}" for key in ("temperature", "top_k", "top_p", "max_new_tokens")
                        if key in sample_settings)
        lines += [f"Prompt `{story.get('prompt', '')}`, seed {story.get('seed', '?')}"
                  + (f", {how}" if how else "") + " (litgpt generation; `generation_config.json` holds the same"
                  " sampling settings):", "", "> " + story["text"].replace("\n", "\n> ")]
    lines += ["", "## Training budget", ""] + budget_lines(training, metrics)
    lines += ["", "## Export check", "",
              f"Loaded back with transformers, the model's fp32 logits differ from litgpt's by at most"
              f" {checks['logits_max_abs_diff']:.2g} on {fmt(checks['logits_tokens_compared'])} tokens."
              " Weights were renamed by litgpt's own `copy_weights_llama`."]
    licence = f"`license: {metadata['license']}`" + (f" ({metadata.get('license_name')})"
                                                      if metadata["license"] == "other" else "") + "."
    if "license_link" in metadata and "chatglm3" in metadata.get("license_name", ""):
        licence += (" The tokenizer files are THUDM's ChatGLM3-6B tokenizer, under its model licence"
                    f" ({metadata['license_link']}).")
    if metadata.get("license_name") == "unspecified":
        licence += " No licence was chosen for this model: set one (the export config's `license`) before sharing it."
    lines += ["", "## Licence", "", licence]
    lines += ["", "## Provenance", "",
              f"storylm export stage `{record.get('hash', '?')}`; the stages it was built from: "
              + ", ".join(f"{stage} `{value}`" for stage, value in record.get("inputs", {}).items())
              + f". The stage record is `{STAGE_RECORD}`; the export's checks are `{CHECKS}`.", "",
              "## Limitations", "",
              "A small model trained on simple stories: it writes short, simple Chinese stories in the style of"
              " its training data, and nothing it writes should be taken as fact.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# The stage


@contextmanager
def atomic_dir(path: Path):
    """Yield a fresh folder beside `path`; it replaces `path` whole only when the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            # Snakemake creates an output's folder before the job; a folder cannot be renamed onto a
            # non-empty one, so the old one is moved aside first and removed after.
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export(record: dict, checkpoint_dir: Path, evaluate_dir: Path | None, sample_dir: Path | None,
           out_dir: Path) -> dict:
    if not checkpoint_dir.is_dir():
        raise StageError(f"{checkpoint_dir}: the checkpoint folder does not exist")
    config = load_config(checkpoint_dir)
    check_llama(config)
    tokenizer = tokenizer_files(checkpoint_dir)
    metrics = read_metrics(evaluate_dir)
    samples, sample_settings, sample_figures = read_samples(sample_dir)
    training = read_training(checkpoint_dir)
    state = load_state(checkpoint_dir)
    tied = embeddings_tied(state)
    dtype = state["transformer.wte.weight"].dtype
    special = special_tokens(tokenizer)
    hf_config = llama_config(config, tied, dtype, {k: v for k, v in special.items() if k.endswith("_id")})
    model = lit_model(config, state, tied)
    from safetensors.torch import save_file
    from storylm.checkpoint import parameter_count
    from transformers import GenerationConfig

    with atomic_dir(out_dir) as tmp:
        hf_config.save_pretrained(tmp)
        save_file(hf_weights(config, state, tied), str(tmp / OUTPUT_FILE), metadata={"format": "pt"})
        sampling = {key: sample_settings[key] for key in ("temperature", "top_k", "top_p") if key in sample_settings}
        generation = GenerationConfig(
            bos_token_id=special["bos_token_id"], eos_token_id=special["eos_token_id"],
            pad_token_id=special["pad_token_id"], max_length=config.block_size,
            **({"do_sample": True, **sampling} if sampling.get("temperature") else {}))
        generation.save_pretrained(tmp)
        hf_class = save_tokenizer(checkpoint_dir, tokenizer, tmp, config.block_size)
        tokenizer_info = describe_tokenizer(tokenizer, checkpoint_dir, hf_class)
        checks = check_folder(tmp, model, tokenizer, probe_texts(samples, sample_settings), config.block_size)
        checks.update(parameters=parameter_count(model), tie_word_embeddings=tied, head_dim=config.head_size,
                      vocab_size=config.padded_vocab_size, tokenizer=tokenizer_info)
        write_text(tmp / "README.md", model_card(record, config, hf_config, tokenizer_info, checks, metrics, samples,
                                                 sample_settings, sample_figures, training, checks["parameters"]))
        write_json(tmp / CHECKS, checks)
        write_json(tmp / STAGE_RECORD, record)
        readable(tmp)
    return checks


def readable(folder: Path) -> None:
    """Temporary files and folders are private (0600/0700); the export is meant to be shared."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", required=True, help="JSON stage record (settings and input hashes)")
    parser.add_argument("--checkpoint", type=Path, required=True, help="the final checkpoint directory")
    parser.add_argument("--evaluate-dir", type=Path, help="the evaluate stage's folder (metrics.json)")
    parser.add_argument("--sample-dir", type=Path, help="the sample stage's folder (samples.json, figures)")
    parser.add_argument("--out", type=Path, required=True, help="the export folder, replaced whole")
    args = parser.parse_args(argv)
    try:
        record = json.loads(args.record)
    except json.JSONDecodeError as error:
        raise StageError(f"--record: not valid JSON ({first_line(error)})") from None
    if not isinstance(record, dict):
        raise StageError("--record: not a JSON object")
    checks = export(record, args.checkpoint, args.evaluate_dir, args.sample_dir, args.out)
    print(f"exported {args.checkpoint} to {args.out}: logits max |diff| {checks['logits_max_abs_diff']:.2g},"
          f" tokenizer ids {'equal' if checks['tokenizer_ids_equal'] else 'DIFFERENT'} on"
          f" {checks['tokenizer_texts_compared']} texts")


if __name__ == "__main__":
    exit_with(main)
