"""The export's lm-eval task (lm_eval/ in the folder) and the figures it gives, computed as lm-eval computes them.

    lm_eval/storylm_val.yaml   the task: loglikelihood_rolling on each val story the pipeline scored
    lm_eval/storylm_val.py     its data (the stories beside it, found wherever the folder is) and its metrics
    lm_eval/val_stories.jsonl  each story's text and the bits lm-eval gives it

lm-eval scores a text in windows of the model's context (max_position_embeddings = block_size):
the first window is the model's bos (end-of-text, the token before a story in training) and the
story's first tokens; each later window predicts the next block of tokens from the one token before
it, except the last, shorter one, which sees a whole block of context (lm_eval.utils.
get_rolling_token_windows with context_len 1, made disjoint). It does not score the end-of-text
after the story. The pipeline's val_story_bits_per_character differs on both counts (its windows
give the last one one token of context, and it scores the end-of-text), so the figure to expect is
computed here with the same windows, from litgpt's model.

The metrics are sums of log-likelihoods over characters or bytes (bits_per_character,
bits_per_byte, byte_perplexity): none takes the exponential of a whole story's loss, which
lm-eval's word_perplexity does (a story with few spaces is one "word", and its ~1,000 nats overflow
math.exp), so the task leaves word_perplexity out.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from storylm.hub.folder import LM_EVAL
from storylm.io.entry import write_text

TASK = "storylm_val"
STORIES_FILE = "val_stories.jsonl"
MODULE = "storylm_val"  # lm_eval/storylm_val.py: a name no other task folder's utils.py collides with
METRICS = ("bits_per_character", "bits_per_byte", "byte_perplexity")


def rolling_windows(ids: list[int], prefix: int, max_length: int) -> list[tuple[list[int], list[int]]]:
    """lm-eval's windows over ids (loglikelihood_rolling, lm_eval.utils.get_rolling_token_windows with
    context_len 1 and make_disjoint_window): (the model's input, the ids its last positions predict).
    Every id is predicted once; the first from the prefix alone."""
    if not ids:
        return []
    first = min(max_length, len(ids))
    windows = [([prefix] + ids[:first - 1], ids[:first])]
    predicted = first
    while predicted < len(ids):
        scored = min(len(ids) - predicted, max_length)
        end = predicted + scored
        windows.append((ids[end - max_length - 1:end - 1], ids[end - scored:end]))
        predicted += scored
    return windows


@torch.no_grad()
def rolling_nats(model, stories: list[list[int]], prefix: int, max_length: int, batch_size: int = 8) -> list[float]:
    """Each story's negative log-likelihood (nats) in lm-eval's windows, from a litgpt model (float32 logits).
    Windows of similar length go in one batch, padded on the right (a causal model never attends to it)."""
    device = next(model.parameters()).device
    jobs = sorted(((story, window) for story, ids in enumerate(stories)
                   for window in rolling_windows(ids, prefix, max_length)), key=lambda job: len(job[1][0]))
    nats = [0.0] * len(stories)
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start:start + batch_size]
        tokens = torch.zeros((len(batch), max(len(inputs) for _, (inputs, _) in batch)), dtype=torch.long)
        for row, (_, (inputs, _)) in enumerate(batch):
            tokens[row, :len(inputs)] = torch.tensor(inputs)
        logprobs = model(tokens.to(device)).float().log_softmax(-1).cpu()
        for row, (story, (inputs, targets)) in enumerate(batch):
            positions = torch.arange(len(inputs) - len(targets), len(inputs))
            nats[story] -= logprobs[row, positions, torch.tensor(targets)].sum().item()
    return nats


def write_task(folder: Path, texts: list[str], model, tokenizer, max_length: int) -> dict:
    """lm_eval/ in an export folder: the task, its module and its stories, each with the bits lm-eval gives it
    (litgpt's model in lm-eval's windows of max_length, after the bos = end-of-text). Returns the figures
    the task gives on all of them."""
    ids = [tokenizer.encode(text).tolist() for text in texts]
    nats = rolling_nats(model, ids, tokenizer.eos_id, max_length)
    task = folder / LM_EVAL
    task.mkdir()
    write_text(task / STORIES_FILE, "".join(
        json.dumps({"text": text, "bits": n / math.log(2)}, ensure_ascii=False) + "\n"
        for text, n in zip(texts, nats, strict=True)))
    write_text(task / f"{TASK}.yaml", TASK_YAML)
    write_text(task / f"{MODULE}.py", TASK_MODULE)
    return {**figures(texts, [n / math.log(2) for n in nats]), "tokens": sum(map(len, ids)),
            "window_tokens": max_length, "convention": CONVENTION}


def figures(texts: list[str], bits: list[float]) -> dict:
    """What the task reports on these stories, as its metrics aggregate them (bits over characters or bytes)."""
    characters, size = sum(map(len, texts)), sum(len(text.encode("utf-8")) for text in texts)
    total = sum(bits)
    return {"stories": len(texts), "characters": characters, "bytes": size, "bits_per_character": total / characters,
            "bits_per_byte": total / size, "byte_perplexity": 2 ** (total / size)}


def read_stories(folder: Path) -> list[tuple[str, float]] | None:
    """(text, the bits lm-eval gives it) of an export folder's task stories; None where it has no task."""
    path = folder / LM_EVAL / STORIES_FILE
    if not path.is_file():
        return None
    return [(row["text"], row["bits"]) for row in map(json.loads, path.read_text(encoding="utf-8").splitlines()) if row]


CONVENTION = ("each story after the model's bos, the end-of-text token, with its own end-of-text not scored, in"
              " lm-eval's loglikelihood_rolling windows of the model's context, the last and shorter of which sees a"
              " whole window of context")

TASK_YAML = f"""\
# lm-eval task: each val story the storylm pipeline scored, scored whole (loglikelihood_rolling) after the
# model's bos (end-of-text, the token before a story in training). Its stories are {STORIES_FILE} beside
# this file, found wherever the folder is ({MODULE}.py). From any directory:
#   lm_eval --model hf --model_args pretrained=<folder>,dtype=float32 --include_path <folder>/{LM_EVAL} --tasks {TASK}
# Metrics: bits per character and per byte, and byte perplexity (2 ** bits_per_byte), each the stories' total
# log-likelihood over their characters or bytes; word_perplexity is left out (a Chinese story is about one
# whitespace-separated "word", and exp of its whole loss overflows).
task: {TASK}
custom_dataset: !function {MODULE}.load_stories
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: text
process_results: !function {MODULE}.process_results
metric_list:
  - metric: bits_per_character
    aggregation: bits_per_byte
    higher_is_better: false
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
  - metric: byte_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
metadata:
  version: 2.0
"""

TASK_MODULE = f'''\
"""The {TASK} task's stories and metrics, for lm-eval ({TASK}.yaml beside this file).

The stories are read from {STORIES_FILE} beside this file, so the task runs from any working
directory. Each metric pairs a story's log-likelihood with its characters or bytes; lm-eval's
bits_per_byte aggregation divides the sums (bits_per_character uses it over characters), and
weighted_perplexity takes exp of the nats per byte: no figure takes exp of a whole story's loss.
"""

import json
from pathlib import Path

STORIES = Path(__file__).resolve().with_name("{STORIES_FILE}")


def load_stories(**_metadata):
    """The stories as lm-eval's test split (the keyword arguments are the task's metadata)."""
    import datasets

    rows = [json.loads(line) for line in STORIES.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{{STORIES}}: no stories")
    return datasets.DatasetDict({{"test": datasets.Dataset.from_list([{{"text": row["text"]}} for row in rows])}})


def process_results(doc, results):
    (loglikelihood,) = results
    characters, size = len(doc["text"]), len(doc["text"].encode("utf-8"))
    return {{"bits_per_character": (loglikelihood, characters), "bits_per_byte": (loglikelihood, size),
             "byte_perplexity": (loglikelihood, size)}}
'''
