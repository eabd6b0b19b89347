"""The export's model card (README.md): what the model is, its data, tokenizer, config, figures and a story."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from storylm.hub import lm_eval_task
from storylm.hub.folder import CHECKS, DESCRIBED, GGUF, LM_EVAL, STAGE_RECORD
from storylm.plan.schema import defaults
from storylm.results.figures import WHOLE_STORIES, WINDOWS, numeric_figures


def fmt(value) -> str:
    """A figure for a person: whole numbers with thousands separators, others to 4 significant digits with
    their trailing zeros (0.2900, not 0.29), tiny or huge ones in exponent form."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value.is_integer() and abs(value) < 1e15:
            return f"{value:,.1f}"
        if 1e-3 <= abs(value) < 1e4:
            return f"{value:#.4g}"
        return f"{value:,.1f}" if 1e4 <= abs(value) < 1e15 else f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def table(rows: list[tuple], header: tuple) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(fmt(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]


CHATGLM3_LICENCE = "https://huggingface.co/THUDM/chatglm3-6b/blob/main/MODEL_LICENSE"


def card_metadata(record: dict, tokenizer_info: dict, licence_file: str | None = None) -> dict:
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
        # The hub links a licence file of the repository by its name; without one, the upstream text.
        link = settings.get("license_link", licence_file or (CHATGLM3_LICENCE if chatglm3 else None))
        if link:
            metadata["license_link"] = link
    corpus = settings.get("corpus", {})
    if isinstance(corpus, dict) and corpus.get("source") == "hf" and corpus.get("hf", {}).get("repo_id"):
        metadata["datasets"] = [corpus["hf"]["repo_id"]]
    return metadata


MAX_FILES_LISTED = 20  # a local or url corpus of more files lists the first ones and counts the rest


def corpus_of(record: dict) -> dict | None:
    corpus = record.get("config", {}).get("corpus")
    return corpus if isinstance(corpus, dict) and "source" in corpus else None


def builtin_corpus(record: dict) -> bool:
    """Whether the model was trained on the builtin stories: the one corpus the story checker is calibrated on.
    A record without a corpus says nothing, and is taken as not builtin."""
    corpus = corpus_of(record)
    return corpus is not None and corpus["source"] == "builtin"


def file_list(entries: list[str]) -> list[str]:
    shown = entries[:MAX_FILES_LISTED]
    more = len(entries) - len(shown)
    return [*shown, *([f"- ... and {more:,} more (all of them in `{STAGE_RECORD}`)"] if more else [])]


def data_lines(record: dict) -> list[str]:
    corpus = corpus_of(record)
    if corpus is None:
        return ["Not recorded in this export's stage record (`config.corpus`); the pipeline's corpus stage"
                " that fed it is named by the stage hashes below."]
    source = corpus["source"]
    listed: list[str] = []
    if source == "builtin":
        builtin = corpus.get("builtin", {})
        text = (f"Generated Chinese children's stories from storylm's built-in story generator"
                f" (`storylm.stories.storygen`, {fmt(builtin.get('num_stories', '?'))} stories,"
                f" seed {builtin.get('seed', '?')}).")
    elif source == "hf":
        hf = corpus.get("hf", {})
        text = f"The Hugging Face dataset `{hf.get('repo_id')}` (revision `{hf.get('revision', 'main')}`)."
    elif source == "local" and isinstance(corpus.get("local_files"), list):
        files = corpus["local_files"]
        text = (f"A local corpus of {len(files):,} file{'s' if len(files) != 1 else ''}, named here by their names"
                " (inside the folders given) and sha256 (where they lay on the training machine is not recorded):")
        listed = file_list([f"- `{name}`" + (f" sha256 `{digest}`" if digest else " (missing when planned)")
                            for name, digest in files])
    elif source == "url" and isinstance(corpus.get("url"), dict) and corpus["url"].get("files"):
        files = corpus["url"]["files"]
        text = f"{len(files):,} file{'s' if len(files) != 1 else ''} downloaded from:"
        listed = file_list([f"- <{entry.get('url')}>" + (f" sha256 `{entry['sha256']}`" if entry.get("sha256") else
                                                           " (no sha256 given)") for entry in files])
    else:
        text = f"Corpus source `{source}`: `{json.dumps(corpus.get(source), ensure_ascii=False)}`."
    details = [f"{key}: `{json.dumps(corpus[key], ensure_ascii=False)}`"
               for key in ("include", "text_field", "normalize", "dedup", "split", "max_stories") if key in corpus]
    return [text, *([""] + listed if listed else []), "",
            "Corpus settings: " + ", ".join(details) + "." if details else ""]


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
    if info["backend"] == "huggingface":
        lines += [f"A literal `</s>` in a text is the end-of-text token (id {info['eos_id']}) for transformers, as"
                  " for litgpt in training (the BPE matches its special tokens in text). llama.cpp reads it so"
                  " only when asked to parse special tokens (`llama_tokenize(..., parse_special=true)`, in"
                  " llama-cpp-python `tokenize(..., special=True)`); by default it tokenizes the characters"
                  " `</s>` as text, so a text holding them gets other ids there.", ""]
    else:
        lines += ["A literal `</s>` in a text is plain text, not the end-of-text token, for SentencePiece (so in"
                  " training), for transformers (`split_special_tokens`) and for llama.cpp's default tokenizing;"
                  " llama.cpp asked to parse special tokens (`parse_special=true`) reads it as end-of-text.", ""]
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


CLIENTS_START, CLIENTS_END = "<!-- clients: written by the storylm export -->", "<!-- end of clients -->"
# The start marker of cards written before it was renamed, which with_client_lines still finds.
OLD_CLIENTS_START = "<!-- clients: written by the export and workflow/benchmarks/clients.py -->"


@dataclass(frozen=True)
class Usage:
    """What the card's usage lines need: the first prompt, its length in tokens, the model's context and the
    sample stage's sampling settings; whether the heads fill the hidden size; the lm-eval task's figures."""

    prompt: str
    prompt_tokens: int
    block_size: int
    temperature: float  # 0: greedy
    top_k: int | None  # None: no top-k filter
    max_new_tokens: int
    heads_fill_width: bool
    lm_eval: dict | None

    @property
    def new_tokens(self) -> int:
        """max_new_tokens, cut so that the prompt and the continuation fit the model's context."""
        return max(1, min(self.max_new_tokens, self.block_size - self.prompt_tokens))


def usage_for(config, tokenizer, sample_settings: dict, lm_eval: dict | None) -> Usage:
    """Usage from litgpt's config and tokenizer and the sample stage's settings; one it does not give (a
    checkpoint exported without a sample stage) is its schema default, as the sample stage would take it."""
    settings = {**defaults()["sample"], **sample_settings}
    prompt = settings["prompts"][0]
    return Usage(prompt=prompt, prompt_tokens=len(tokenizer.encode(prompt)), block_size=config.block_size,
                 temperature=settings["temperature"], top_k=settings["top_k"], max_new_tokens=settings["max_new_tokens"],
                 heads_fill_width=config.n_head * config.head_size == config.n_embd, lm_eval=lm_eval)


def sampling(client: str, use: Usage) -> str:
    """The client's sampling arguments for the sample stage's settings: temperature 0 is greedy (transformers
    refuses do_sample with it), and no top-k filter is top_k 0 (each client's "off")."""
    top_k = use.top_k or 0
    if client in ("transformers", "gguf (transformers)"):
        return "do_sample=False" if use.temperature == 0 else f"do_sample=True, temperature={use.temperature}, top_k={top_k}"
    if client == "ctranslate2":
        return "sampling_topk=1" if use.temperature == 0 else f"sampling_temperature={use.temperature}, sampling_topk={top_k}"
    if client == "llama-cli":
        return f"--temp {use.temperature} --top-k {top_k}"
    return f"temperature={use.temperature}, top_k={top_k}"  # llama-cpp-python: temperature 0 is greedy

LLAMA_CPP_WHEELS = "https://abetlen.github.io/llama-cpp-python/whl/cpu"
LLAMA_CPP_RELEASES = "https://github.com/ggml-org/llama.cpp/releases"

# The package each client's lines need, besides what pip brings with it.
INSTALL = {"transformers": "pip install transformers torch",
           "gguf (transformers)": "pip install transformers torch gguf accelerate",
           # llama-cpp-python's own prebuilt CPU wheels: from PyPI alone pip compiles llama.cpp (tens of minutes)
           "llama.cpp": f"pip install llama-cpp-python --prefer-binary --extra-index-url {LLAMA_CPP_WHEELS}",
           "ctranslate2": "pip install ctranslate2 transformers torch",
           "lm-eval": 'pip install "lm-eval[hf]"'}


def usage_lines(client: str, use: Usage) -> list[str]:
    """The lines that install, load and run one client, each runnable as written in the model's folder."""
    prompt, new = use.prompt, use.new_tokens
    install = ["```bash", INSTALL[client], "```", ""]
    if client == "transformers":
        return install + [
            "```python", "from transformers import pipeline", "",
            'generate = pipeline("text-generation", model=".")  # or the hub repo id',
            f'print(generate("{prompt}", max_new_tokens={new}, {sampling(client, use)})[0]["generated_text"])', "```"]
    if client == "gguf (transformers)":
        lines = install + [
            "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            f'model = AutoModelForCausalLM.from_pretrained(".", gguf_file="{GGUF}")',
            'tokenizer = AutoTokenizer.from_pretrained(".")',
            f'ids = tokenizer("{prompt}", return_tensors="pt")["input_ids"]',
            f"print(tokenizer.decode(model.generate(ids, max_new_tokens={new}, {sampling(client, use)})[0],"
            " skip_special_tokens=True))", "```"]
        if not use.heads_fill_width:
            lines += ["", "This needs transformers 4: transformers 5 builds a llama GGUF as `LlamaConfig`, which"
                          " refuses attention heads that do not fill the hidden size (this model's), while"
                          " `config.json` (`MistralForCausalLM` with `head_dim`) loads in both, and llama.cpp reads"
                          " the GGUF's `attention.key_length`."]
        return lines
    if client == "llama.cpp":
        return install + [
            "The extra index holds llama-cpp-python's own prebuilt CPU wheels; from PyPI alone (or for a Python"
            " version the index has no wheel for) pip compiles llama.cpp from source, which takes tens of minutes.",
            "",
            "```python", "from llama_cpp import Llama", "",
            f'llm = Llama(model_path="{GGUF}", n_ctx=0, verbose=False)  # n_ctx=0: the model\'s context',
            f'print(llm.create_completion("{prompt}", max_tokens={new}, {sampling(client, use)},'
            ' seed=1)["choices"][0]["text"])', "```", "",
            f"or with llama.cpp's own programs, prebuilt for each system on its releases page ({LLAMA_CPP_RELEASES};"
            " unpack one, with `llama-cli` on your PATH):", "",
            "```bash", f'llama-cli -m {GGUF} -no-cnv -p "{prompt}" -n {new} {sampling("llama-cli", use)}',
            "```"]
    if client == "ctranslate2":
        return install + [
            "```bash", "ct2-transformers-converter --model . --output_dir ct2 --force", "```", "",
            "```python", "import ctranslate2", "import transformers", "",
            'tokenizer = transformers.AutoTokenizer.from_pretrained(".")',
            'generator = ctranslate2.Generator("ct2")',
            f'ids = tokenizer("{prompt}")["input_ids"]',
            f"result = generator.generate_batch([tokenizer.convert_ids_to_tokens(ids)], max_length={new},"
            f" {sampling(client, use)}, include_prompt_in_result=False)",
            "print(tokenizer.decode(ids + result[0].sequences_ids[0], skip_special_tokens=True))", "```"]
    if client == "lm-eval":
        lines = install + [
            "```bash", f"lm_eval --model hf --model_args pretrained=.,dtype=float32 --include_path {LM_EVAL}"
                       f" --tasks {lm_eval_task.TASK} --batch_size 8", "```", "",
            f"`{LM_EVAL}/` holds the task and the val stories; it runs from any directory with the folder's"
            f" path in both places (`pretrained=<folder>`, `--include_path <folder>/{LM_EVAL}`)."]
        if use.lm_eval:
            e = use.lm_eval
            lines[-1] += (f" On its {fmt(e['stories'])} stories ({fmt(e['characters'])} characters, {fmt(e['bytes'])}"
                          f" bytes) expect `bits_per_character` {e['bits_per_character']:.5f},"
                          f" `bits_per_byte` {e['bits_per_byte']:.5f} and `byte_perplexity` {e['byte_perplexity']:.5f},"
                          " computed at export with litgpt's model in lm-eval's convention (Metrics says which).")
        return lines
    raise KeyError(client)


def client_lines(clients: list[dict], use: Usage) -> list[str]:
    """For each client, its check at export time and the lines that install, load and run it; a client that
    failed its check gets the failure instead of lines."""
    lines = [CLIENTS_START, "## Use it", "",
             "Each block runs as written in this model's folder (from the hub: `hf download <repo id> --local-dir"
             " <folder>`, then `cd <folder>`). The context is"
             f" {fmt(use.block_size)} tokens, prompt included, so the lines ask for at most {fmt(use.new_tokens)} new"
             " tokens.", ""]
    for client in clients:
        if client["client"] == "lm-eval" and not use.lm_eval:
            continue  # no task in this folder
        lines += [f"### {client['client']}", ""]
        if client["passed"] is False:
            lines += [f"**Did not pass its check** at export ({client['client']} {client['version']}):"
                      f" {client['result']}.", ""]
            continue
        status = (f"Checked at export with {client['client']} {client['version']}: {client['result']}."
                  if client["passed"] else f"Not checked at export: {client['result']}.")
        lines += [status, "", *usage_lines(client["client"], use), ""]
    return lines + [CLIENTS_END]


def with_client_lines(card: str, lines: list[str]) -> str:
    """The card with its clients section replaced."""
    before, rest = card.replace(OLD_CLIENTS_START, CLIENTS_START).split(CLIENTS_START, 1)
    return before + "\n".join(lines) + rest.split(CLIENTS_END, 1)[1]


@dataclass(frozen=True)
class CardFacts:
    """Everything the card says, gathered by the export: the stage record, litgpt's config and the
    transformers config written, the tokenizer's description, the export's checks (storylm_export.json),
    the evaluate and sample stages' outputs, the training settings, the clients' rows and their usage,
    the licence file shipped in the folder (None when there is none) and the names of the folder's files."""

    record: dict
    config: object
    hf_config: object
    tokenizer_info: dict
    checks: dict
    metrics: dict | None
    samples: list[dict]
    sample_settings: dict
    sample_figures: dict
    training: dict
    clients: list[dict]
    usage: Usage
    licence_file: str | None = None
    files: list[str] = field(default_factory=list)


def files_lines(names: list[str]) -> list[str]:
    """The folder's files, each with what it holds (storylm.hub.folder.FILES, in its order)."""
    return table([(f"`{name}`", what) for name, what in DESCRIBED.items() if name in names], ("file", "what"))


def metrics_lines(metrics: dict | None, lm_eval: dict | None) -> list[str]:
    """The evaluate stage's figures, each bits-per-character figure with its convention, and the figures the
    folder's lm-eval task gives, with lm-eval's."""

    lines = []
    if metrics is None:
        lines.append("Validation: not measured (no evaluate stage output was given to the export).")
    else:
        figures = numeric_figures(metrics)
        first = [k for k in ("val_story_bits_per_character", "val_bits_per_character", "val_loss_nats_per_token",
                             "val_perplexity") if k in figures]
        rows = [(key, figures[key]) for key in first + [k for k in figures if k not in first]]
        conventions = {"val_story_bits_per_character": WHOLE_STORIES, "val_bits_per_character": WINDOWS}
        lines += ["On the held-out val split, by the pipeline's evaluate stage (bits per character compare models"
                  " with different tokenizers). Its conventions:"
                  + "".join(f" `{key}` scores {text};" for key, text in conventions.items() if key in figures)
                  [:-1] + ".", ""]
        lines += table(rows, ("figure", "value"))
    if lm_eval:
        lines += ["", f"lm-eval's figures, as the `{lm_eval_task.TASK}` task in `{LM_EVAL}/` computes them,"
                      f" computed at export with litgpt's model: {lm_eval['convention']}, in"
                      f" {fmt(lm_eval['window_tokens'])}-token windows. Unlike `val_story_bits_per_character` they"
                      " leave out each story's end-of-text, so the two differ.", ""]
        lines += table([(f"{lm_eval_task.TASK} {key}", lm_eval[key]) for key in lm_eval_task.METRICS]
                       + [("stories / characters / bytes / tokens scored",
                           f"{fmt(lm_eval['stories'])} / {fmt(lm_eval['characters'])} / {fmt(lm_eval['bytes'])}"
                           f" / {fmt(lm_eval['tokens'])}")], ("figure", "value"))
    return lines


CHECKER_PREFIX = "consistency."  # the builtin-world story checker's figures (the sample stage's consistency.json)
UNCALIBRATED = "uncalibrated on this corpus"


def sample_figure_lines(figures: dict, builtin: bool) -> list[str]:
    """The sample figures; off the builtin corpus the story checker's are marked uncalibrated, as in runs.tsv
    (builtin_world_checker_rate) and the report."""
    if not figures:
        return ["Sample figures: not measured (no sample stage output was given to the export)."]
    lines = ["Figures of the sampled stories:", ""]
    if not builtin and any(key.startswith(CHECKER_PREFIX) for key in figures):
        lines = ["Figures of the sampled stories. The `consistency.*` ones are the builtin-world story checker's,"
                 " whose rules were written and checked against hand labels on the builtin generated stories"
                 f" only: on this corpus they are {UNCALIBRATED}, a count of the checker's rules, not a measure"
                 " of the stories.", ""]
    rows = [(f"{key} ({UNCALIBRATED})" if not builtin and key.startswith(CHECKER_PREFIX) else key, value)
            for key, value in figures.items()]
    return lines + table(rows, ("figure (file.key)", "value"))


def licence_lines(metadata: dict, licence_file: str | None) -> list[str]:
    licence = f"`license: {metadata['license']}`" + (f" ({metadata.get('license_name')})"
                                                      if metadata["license"] == "other" else "") + "."
    if "chatglm3" in metadata.get("license_name", ""):
        where = (f"its text is `{licence_file}` in this folder" if licence_file else
                 "its text is not in this folder: get `MODEL_LICENSE` from the THUDM/chatglm3-6b model repository"
                 f" ({CHATGLM3_LICENCE}) and add it before sharing the model")
        licence += f" The tokenizer files are THUDM's ChatGLM3-6B tokenizer, under its model licence; {where}."
    if metadata.get("license_name") == "unspecified":
        licence += " No licence was chosen for this model: set one (the export config's `license`) before sharing it."
    return [licence]


def origin(training: dict) -> str:
    if training.get("continued_from"):
        return f"pretrained from the final weights of the training in `{training['continued_from']}` (continued pretraining)"
    return "pretrained from scratch"


def continued_lines(training: dict) -> list[str]:
    """A continued model saw two corpora: the card's data section is this training's, so it says so first."""
    if not training.get("continued_from"):
        return []
    return [f"Continued pretraining: the model first learned from the data of the training in"
            f" `{training['continued_from']}` (that folder's `config.json`, or its export's card, names it), with its"
            " tokenizer; then it trained on the corpus below.", ""]


def model_card(facts: CardFacts) -> str:
    record, config, hf_config, checks = facts.record, facts.config, facts.hf_config, facts.checks
    metadata = card_metadata(record, facts.tokenizer_info, facts.licence_file)
    name = config.name or "storylm"
    parameters = checks["parameters"]
    builtin = builtin_corpus(record)
    writes = ("writes simple Chinese children's stories" if builtin else
              "writes stories in the style of the corpus it was trained on (Data names it)")
    lines = ["---", yaml.safe_dump(metadata, allow_unicode=True, sort_keys=False).strip(), "---", "",
             f"# {name}: a small Chinese story language model", "",
             f"A {fmt(parameters)}-parameter LLaMA-style causal language model that {writes},"
             f" {origin(facts.training)} with [litgpt](https://github.com/Lightning-AI/litgpt)"
             f" by the storylm pipeline and exported as a `{hf_config.architectures[0]}` (no `trust_remote_code`)"
             f" and as `{GGUF}` for llama.cpp.", ""]
    lines += client_lines(facts.clients, facts.usage)
    lines += ["", "## Data", ""] + continued_lines(facts.training) + data_lines(record) + ["", "## Tokenizer", ""]
    lines += tokenizer_lines(facts.tokenizer_info, checks)
    rows = [("layers (num_hidden_layers)", config.n_layer), ("hidden size (n_embd)", config.n_embd),
            ("attention heads", config.n_head), ("key/value heads (n_query_groups)", config.n_query_groups),
            ("head_dim (head_size)", config.head_size), ("MLP intermediate size", config.intermediate_size),
            ("context length (block_size), tokens", config.block_size),
            ("vocabulary (tokenizer / padded, = embedding rows)", f"{fmt(facts.tokenizer_info['vocab_size'])} /"
                                                                  f" {fmt(config.padded_vocab_size)}"),
            ("tie_word_embeddings", hf_config.tie_word_embeddings), ("rms_norm_eps", config.norm_eps),
            ("rope_theta", float(config.rope_base)), ("weights dtype", str(hf_config.dtype).replace("torch.", "")),
            ("parameters (tied weights once)", parameters)]
    lines += ["", "## Model config", ""] + table(rows, ("", "value"))
    if config.n_head * config.head_size != config.n_embd:
        lines += ["", f"Attention is {config.n_head} heads x {config.head_size} = {config.n_head * config.head_size}"
                      f" channels while the hidden size is {config.n_embd}; `config.json` says `head_dim`"
                      f" {config.head_size} (as `MistralForCausalLM`, whose `head_dim` every client reads), and"
                      f" `{GGUF}` says `attention.key_length` {config.head_size}, so each builds it as trained."]
    lines += ["", "## Metrics", ""] + metrics_lines(facts.metrics, facts.usage.lm_eval) + [""]
    lines += sample_figure_lines(facts.sample_figures, builtin_corpus(record))
    lines += ["", "## A sampled story", ""]
    if not facts.samples:
        lines.append("Not sampled (no sample stage output was given to the export).")
    else:
        story, settings = facts.samples[0], facts.sample_settings
        how = ", ".join(f"{key} {settings[key]}" for key in ("temperature", "top_k", "top_p", "max_new_tokens")
                        if key in settings)
        lines += [f"Prompt `{story.get('prompt', '')}`, seed {story.get('seed', '?')}"
                  + (f", {how}" if how else "") + " (litgpt generation; `generation_config.json` holds the same"
                  " sampling settings):", "", "> " + story["text"].replace("\n", "\n> ")]
    lines += ["", "## Training budget", ""] + budget_lines(facts.training, facts.metrics)
    lines += ["", "## Export check", "",
              f"Loaded back with transformers, the model's fp32 logits differ from litgpt's by at most"
              f" {checks['logits_max_abs_diff']:.2g} on {fmt(checks['logits_tokens_compared'])} tokens."
              " Weights were renamed by litgpt's own `copy_weights_llama`."]
    lines += ["", "## Files", ""] + files_lines(facts.files)
    lines += ["", "## Licence", ""] + licence_lines(metadata, facts.licence_file)
    lines += ["", "## Provenance", "",
              f"storylm export stage `{record.get('hash', '?')}`; the stages it was built from: "
              + ", ".join(f"{stage} `{value}`" for stage, value in record.get("inputs", {}).items())
              + f". The stage record is `{STAGE_RECORD}`; the export's checks are `{CHECKS}`.", "",
              "## Limitations", "",
              ("A small model trained on simple stories: it writes short, simple Chinese stories in the style of"
               if builtin else "A small model: it writes text in the style of")
              + " its training data, and nothing it writes should be taken as fact.", ""]
    return "\n".join(lines)
