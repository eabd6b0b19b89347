"""The export's check: its folder loaded with transformers as a user would, and compared with litgpt.

Logits on probe texts (a difference is a bug, so it stops the export) and token ids (a
difference is written into the model card, and does not stop it).
"""

from __future__ import annotations

from pathlib import Path

import torch

from storylm.hub.folder import LOGITS_TOLERANCE

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


def probe_texts(samples: list[dict], settings: dict) -> list[str]:
    texts = list(PROBE_TEXTS) + list(settings.get("prompts", []))
    texts += [s["prompt"] for s in samples if s.get("prompt")] + [s["text"] for s in samples]
    return list(dict.fromkeys(t for t in texts if isinstance(t, str)))


def load_folder(folder: Path):
    """(model, tokenizer) of the folder as a user loads it with transformers, float32: the one load every
    check of the export shares. A weight transformers did not load stops the export."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_model, info = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, output_loading_info=True)
    unloaded = {key: value for key, value in info.items() if value}
    if unloaded:
        raise RuntimeError(f"{folder}: transformers did not load every weight: {unloaded}")
    return hf_model.eval(), AutoTokenizer.from_pretrained(folder)


@torch.no_grad()
def check_folder(folder: Path, hf_model, hf_tokenizer, model, tokenizer, texts: list[str], block_size: int) -> dict:
    """transformers' model and tokenizer of the folder (load_folder) against litgpt's: logits and token ids."""
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
