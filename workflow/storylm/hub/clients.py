"""An export folder run by the clients people deploy with, each one that is installed, for real.

    transformers   AutoModelForCausalLM + AutoTokenizer: greedy token ids equal litgpt's
    gguf           transformers reading model.gguf (gguf_file=): logits equal litgpt's
    llama.cpp      llama-cpp-python on model.gguf: greedy text equal to transformers'
    ctranslate2    its converter's model: log-probs within 1e-4 of transformers'
    lm-eval        the lm_eval command on the folder's own task (lm_eval/), from another directory:
                   bits per character within 1e-4 (relative) of the figure the export computed in
                   lm-eval's convention (storylm.hub.lm_eval_task)

Each check returns a row: client, version, passed (True, False, or None when not installed) and
what it measured. The export stage runs every installed client and writes the rows into
storylm_clients.json and the model card; workflow/benchmarks/clients.py runs them on any export
folder and prints the table of docs/export.md. None of the clients but transformers is a pinned
dependency: `pip install ctranslate2 "lm-eval[hf]" llama-cpp-python`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from storylm.hub import lm_eval_task
from storylm.hub.folder import GGUF, LM_EVAL, LOGITS_TOLERANCE

# Log-probability agreement asked of ctranslate2 (float32 on both sides), and of lm-eval's bits per
# character against the figure computed in its own convention from litgpt's model (relative; both
# float32, the same windows, so only rounding parts them).
LOGPROB_TOLERANCE = 1e-4
LM_EVAL_TOLERANCE = 1e-4
GREEDY_TOKENS = 40
LM_EVAL_STORIES = 100  # the task's first stories: quick on a CPU
GGUF_CLIENT = "gguf (transformers)"


def version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def row(client: str, package: str, passed: bool | None, result: str) -> dict:
    return {"client": client, "version": version(package), "passed": passed, "result": result}


def not_installed(client: str, package: str) -> dict:
    return row(client, package, None, f"not installed (pip install {package})")


@torch.no_grad()
def litgpt_greedy(model, tokenizer, prompt: str, tokens: int) -> list[int]:
    from litgpt.generate.base import generate

    ids = tokenizer.encode(prompt)
    model.set_kv_cache(batch_size=1, max_seq_length=min(len(ids) + tokens, model.config.block_size))
    out = generate(model, ids, min(len(ids) + tokens, model.config.block_size), temperature=0.0,
                   eos_id=tokenizer.eos_id)
    model.clear_kv_cache()
    return out.tolist()


@torch.no_grad()
def transformers_greedy(hf_model, hf_tokenizer, prompts: list[str], tokens: int) -> dict[str, list[int]]:
    """{prompt: greedy ids, prompt included} of the folder's model as transformers runs it (export_check.load_folder)."""
    found = {}
    for prompt in prompts:
        ids = hf_tokenizer(prompt, return_tensors="pt")["input_ids"]
        out = hf_model.generate(ids, max_new_tokens=tokens, do_sample=False, eos_token_id=hf_tokenizer.eos_token_id,
                                pad_token_id=hf_tokenizer.pad_token_id)
        found[prompt] = out[0].tolist()
    return found


def check_transformers(hf_model, greedy: dict[str, list[int]], model, tokenizer) -> dict:
    """transformers' greedy ids (transformers_greedy) against litgpt's, prompt by prompt."""
    same = []
    for prompt, hf_ids in greedy.items():
        lit_ids = litgpt_greedy(model, tokenizer, prompt, GREEDY_TOKENS)
        same.append(hf_ids[:len(lit_ids)] == lit_ids)
    return row("transformers", "transformers", all(same),
               f"{type(hf_model).__name__}: greedy ids equal litgpt's on {sum(same)} of {len(same)} prompts"
               f" ({GREEDY_TOKENS} new tokens each)")


@torch.no_grad()
def check_gguf(folder: Path, model, texts: list[torch.Tensor]) -> dict:
    """transformers reads model.gguf back: its logits against litgpt's on the probe texts."""
    if version("gguf") is None:
        return not_installed(GGUF_CLIENT, "gguf")
    from transformers import AutoModelForCausalLM

    try:
        hf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32).eval()
    except Exception as error:  # noqa: BLE001 - whatever transformers refuses, said in the row
        reason = f"{type(error).__name__}: {str(error).strip().splitlines()[-1].strip()[:300]}"
        if model.config.n_head * model.config.head_size != model.config.n_embd:
            # transformers builds a llama GGUF as LlamaConfig, which transformers 5 refuses for heads that do
            # not fill the hidden size; llama.cpp itself reads attention.key_length (its own check).
            return row(GGUF_CLIENT, "gguf", None, f"transformers {version('transformers')} reads no llama GGUF whose heads do"
                                           f" not fill the hidden size ({reason}); llama.cpp is its check")
        return row(GGUF_CLIENT, "gguf", False, f"transformers {version('transformers')} cannot read {GGUF}: {reason}")
    diff = max((hf(ids.unsqueeze(0)).logits - model(ids.unsqueeze(0))).abs().max().item() for ids in texts)
    return {**row(GGUF_CLIENT, "gguf", diff <= LOGITS_TOLERANCE,
                  f"{GGUF} read by transformers {version('transformers')} as {type(hf).__name__}: logits differ"
                  f" from litgpt's by at most {diff:.2g} on {sum(len(t) for t in texts)} tokens"),
            "logits_max_abs_diff": diff}


def check_llama_cpp(folder: Path, prompts: list[str], expected: dict[str, str]) -> dict:
    """llama-cpp-python on model.gguf, greedy (its own tokenizer, sampler and detokenizer): the same text
    as transformers' greedy text."""
    if version("llama_cpp_python") is None:
        return not_installed("llama.cpp", "llama-cpp-python")
    from llama_cpp import Llama

    llm = Llama(model_path=str(folder / GGUF), n_ctx=0, verbose=False)
    same = 0
    for prompt in prompts:
        ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=False)
        written = []
        for token in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            if token == llm.token_eos() or len(written) == GREEDY_TOKENS:
                break
            written.append(token)
        same += llama_cpp_text(llm, ids + written) == expected[prompt]
    return row("llama.cpp", "llama_cpp_python", same == len(prompts),
               f"llama-cpp-python on {GGUF}: greedy text equal to transformers' on {same} of {len(prompts)} prompts"
               f" ({GREEDY_TOKENS} new tokens each)")


def llama_cpp_text(llm, tokens: list[int]) -> str:
    """llama.cpp's own detokenizer (llama_detokenize, as its tools use it): with remove_special it drops the
    space a SentencePiece dummy prefix puts before the text, as transformers' decode does."""
    import ctypes

    import llama_cpp

    array = (llama_cpp.llama_token * len(tokens))(*tokens)
    size = 16 * len(tokens) + 16
    buffer = ctypes.create_string_buffer(size)
    written = llama_cpp.llama_detokenize(llm._model.vocab, array, len(tokens), buffer, size, True, False)
    return buffer.raw[:written].decode("utf-8", errors="replace")


@torch.no_grad()
def check_ctranslate2(folder: Path, hf_model, hf_tokenizer, texts: list[str]) -> dict:
    """ctranslate2's own converter on the folder, then its log-probs against transformers'."""
    if version("ctranslate2") is None:
        return not_installed("ctranslate2", "ctranslate2")
    import ctranslate2
    from ctranslate2.converters import TransformersConverter

    with tempfile.TemporaryDirectory() as out:
        TransformersConverter(str(folder)).convert(out, force=True)
        generator = ctranslate2.Generator(out, device="cpu", compute_type="float32")
        worst = 0.0
        for text in texts:
            ids = hf_tokenizer(text)["input_ids"]
            logits = np.asarray(generator.forward_batch([hf_tokenizer.convert_ids_to_tokens(ids)]))[0]
            ct2 = torch.from_numpy(logits).float().log_softmax(-1)
            hf = hf_model(torch.tensor([ids])).logits[0].log_softmax(-1)
            worst = max(worst, (ct2 - hf).abs().max().item())
    return row("ctranslate2", "ctranslate2", worst <= LOGPROB_TOLERANCE,
               f"ctranslate2-converted {type(hf_model).__name__}: log-probs differ from transformers' by at most"
               f" {worst:.2g} on {len(texts)} texts")


def check_lm_eval(folder: Path, stories: list[tuple[str, float]]) -> dict:
    """The lm_eval command on the folder's own task (lm_eval/), from another working directory, on its first
    stories: its bits per character against the figure the export computed in lm-eval's convention."""
    if version("lm_eval") is None:
        return not_installed("lm-eval", "lm-eval[hf]")
    sample = stories[:LM_EVAL_STORIES]
    expected = lm_eval_task.figures([text for text, _ in sample], [bits for _, bits in sample])
    try:
        found = run_lm_eval(folder, limit=len(sample))
    except RuntimeError as error:
        return row("lm-eval", "lm-eval", False, str(error))
    bpc = found["bits_per_character"]
    off = abs(bpc - expected["bits_per_character"]) / expected["bits_per_character"]
    return {**row("lm-eval", "lm-eval", off <= LM_EVAL_TOLERANCE,
                  f"`lm_eval` on the folder's {lm_eval_task.TASK} task, first {len(sample)} stories:"
                  f" {bpc:.5f} bits/char, {found['bits_per_byte']:.5f} bits/byte, against the expected"
                  f" {expected['bits_per_character']:.5f} and {expected['bits_per_byte']:.5f}"
                  f" ({off:.2e} apart)"), **{f"lm_eval_{key}": found[key] for key in lm_eval_task.METRICS},
            "stories": len(sample)}


def run_lm_eval(folder: Path, limit: int | None = None) -> dict:
    """`python -m lm_eval` (the lm_eval command) on folder/lm_eval's task, in a temporary working directory:
    {metric: value} of its results file. A failure raises RuntimeError with the command's last line."""
    with tempfile.TemporaryDirectory() as cwd:
        command = [sys.executable, "-m", "lm_eval", "--model", "hf",
                   "--model_args", f"pretrained={folder.resolve()},dtype=float32", "--device", "cpu",
                   "--include_path", str((folder / LM_EVAL).resolve()), "--tasks", lm_eval_task.TASK,
                   "--batch_size", "8", "--output_path", "out", *(["--limit", str(limit)] if limit else [])]
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
        results = sorted(Path(cwd, "out").rglob("results_*.json"))
        if done.returncode != 0 or not results:
            last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1][:300]
            raise RuntimeError(f"lm_eval exited with status {done.returncode}: {last}")
        metrics = json.loads(results[-1].read_text())["results"][lm_eval_task.TASK]
    return {key: metrics[f"{key},none"] for key in lm_eval_task.METRICS}


def run_all(folder: Path, hf_model, hf_tokenizer, model, tokenizer, texts: list[str], prompts: list[str],
            stories: list[tuple[str, float]] | None) -> list[dict]:
    """Every client's check on an export folder: the installed ones for real, the others named.

    hf_model, hf_tokenizer: the folder as transformers loads it (export_check.load_folder); model, tokenizer:
    litgpt's (storylm.model.checkpoint); texts: probe texts; stories: (text, the pipeline's bits lm-eval
    gives it: storylm.hub.lm_eval_task.read_stories) of the folder's lm-eval task.
    """
    block = model.config.block_size
    ids = [tokenizer.encode(text, eos=True)[:block].long() for text in dict.fromkeys(texts[:4] + texts[-4:])]
    greedy = transformers_greedy(hf_model, hf_tokenizer, prompts, GREEDY_TOKENS)
    found = [check_transformers(hf_model, greedy, model, tokenizer), check_gguf(folder, model, ids)]
    expected = {prompt: hf_tokenizer.decode(out, skip_special_tokens=True) for prompt, out in greedy.items()}
    found.append(check_llama_cpp(folder, prompts, expected))
    found.append(check_ctranslate2(folder, hf_model, hf_tokenizer, texts[:8]))
    if stories:
        found.append(check_lm_eval(folder, stories))
    else:
        found.append(row("lm-eval", "lm-eval", None, "no lm-eval task: no val stories scored by the pipeline were given"))
    return found
