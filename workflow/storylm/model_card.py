"""The export's model card (README.md): what the model is, its data, tokenizer, config, figures and a story."""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from storylm.figures import numeric_figures

STAGE_RECORD = "storylm_stage.json"


CHECKS = "storylm_export.json"
CLIENTS = "storylm_clients.json"


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


CLIENTS_START, CLIENTS_END = "<!-- clients: written by the export and workflow/benchmarks/clients.py -->", \
    "<!-- end of clients -->"


def client_lines(clients: list[dict], sample_settings: dict, lm_eval: dict | None) -> list[str]:
    """For each client that passed its check, the lines that load and sample the model; then the ones not checked."""
    prompt = (sample_settings.get("prompts") or ["从前，有一个叫莉莉的小女孩"])[0]
    temperature, top_k = sample_settings.get("temperature", 0.4), sample_settings.get("top_k") or 20
    new = sample_settings.get("max_new_tokens", 200)
    usage = {
        "transformers": ["```python", "from transformers import pipeline", "",
                         'generate = pipeline("text-generation", model="<this folder or repo id>")',
                         f'print(generate("{prompt}", max_new_tokens={new}, do_sample=True, temperature={temperature},'
                         f' top_k={top_k})[0]["generated_text"])', "```"],
        "llama.cpp": ["```bash", f'llama-cli -m model.gguf -no-cnv -p "{prompt}" -n {new} --temp {temperature}'
                                 f" --top-k {top_k}", "```"],
        "ctranslate2": ["```bash", "ct2-transformers-converter --model . --output_dir ct2", "```", "",
                        "```python", "import ctranslate2, transformers", "",
                        'tokenizer = transformers.AutoTokenizer.from_pretrained(".")',
                        'generator = ctranslate2.Generator("ct2")',
                        f'tokens = tokenizer.convert_ids_to_tokens(tokenizer("{prompt}")["input_ids"])',
                        f"result = generator.generate_batch([tokens], max_length={new}, sampling_temperature={temperature},"
                        f" sampling_topk={top_k}, include_prompt_in_result=True)",
                        "print(tokenizer.decode(tokenizer.convert_tokens_to_ids(result[0].sequences[0])))", "```"],
        "lm-eval": ["```bash", "lm_eval --model hf --model_args pretrained=. --tasks storylm_val --include_path lm_eval",
                    "```", "", "`lm_eval/` holds the task and the val stories the pipeline scored"
                    + (f"; expect `bits_per_byte` {lm_eval['bits_per_byte']:.4f} ({lm_eval['bits_per_character']:.4f}"
                       " bits per character, the pipeline's whole-story figure without the end-of-text tokens)."
                       if lm_eval else ".")],
    }
    usage["gguf (transformers)"] = ["```python", "from transformers import AutoModelForCausalLM", "",
                                    'model = AutoModelForCausalLM.from_pretrained(".", gguf_file="model.gguf")', "```"]
    lines = [CLIENTS_START, "## Use it", ""]
    for client in clients:
        if client["passed"]:
            lines += [f"**{client['client']}** {client['version']} (checked: {client['result']}):", "",
                      *usage[client["client"]], ""]
    failed = [c for c in clients if c["passed"] is False]
    unchecked = [c["client"] for c in clients if c["passed"] is None]
    for client in failed:
        lines += [f"**{client['client']}** {client['version']} did not pass its check: {client['result']}.", ""]
    if unchecked:
        lines += [f"Not checked on this export (not installed where it was made): {', '.join(unchecked)};"
                  " `pip install ctranslate2 lm-eval llama-cpp-python`, then"
                  " `python workflow/benchmarks/clients.py <this folder> --write` checks them and adds their lines"
                  " here.", ""]
    return lines + [CLIENTS_END]


def with_client_lines(card: str, lines: list[str]) -> str:
    """The card with its clients section replaced."""
    before, rest = card.split(CLIENTS_START, 1)
    return before + "\n".join(lines) + rest.split(CLIENTS_END, 1)[1]


def model_card(record: dict, config, hf_config, tokenizer_info: dict, checks: dict, metrics: dict | None,
               samples: list[dict], sample_settings: dict, sample_figures: dict, training: dict,
               parameters: int, clients: list[dict], lm_eval: dict | None) -> str:
    metadata = card_metadata(record, tokenizer_info)
    name = config.name or "storylm"
    lines = ["---", yaml.safe_dump(metadata, allow_unicode=True, sort_keys=False).strip(), "---", "",
             f"# {name}: a small Chinese story language model", "",
             f"A {fmt(parameters)}-parameter LLaMA-style causal language model that writes simple Chinese"
             " children's stories, pretrained from scratch with [litgpt](https://github.com/Lightning-AI/litgpt)"
             f" by the storylm pipeline and exported as a `{hf_config.architectures[0]}` (no `trust_remote_code`)"
             " and as `model.gguf` for llama.cpp.", ""]
    lines += client_lines(clients, sample_settings, lm_eval)
    lines += ["", "## Data", ""] + data_lines(record) + ["", "## Tokenizer", ""] + tokenizer_lines(tokenizer_info, checks)
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
                      f" {config.head_size} (as `MistralForCausalLM`, whose `head_dim` every client reads), and"
                      f" `model.gguf` says `attention.key_length` {config.head_size}, so each builds it as trained."]
    lines += ["", "## Metrics", ""]
    if metrics is None:
        lines.append("Validation: not measured (no evaluate stage output was given to the export).")
    else:
        figures = numeric_figures(metrics)
        first = [k for k in ("val_story_bits_per_character", "val_bits_per_character", "val_loss_nats_per_token",
                             "val_perplexity") if k in figures]
        rows = [(key, figures[key]) for key in first + [k for k in figures if k not in first]]
        lines += ["On the held-out val split (bits per character compare models with different tokenizers). Two"
                  " conventions:"
                  + (f" `val_story_bits_per_character` scores {metrics['val_story_bits_per_character_convention']};"
                     if "val_story_bits_per_character_convention" in metrics else "")
                  + (f" `val_bits_per_character` scores {metrics['val_bits_per_character_convention']}."
                     if "val_bits_per_character_convention" in metrics else ""), ""]
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
