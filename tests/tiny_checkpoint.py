"""A tiny real checkpoint for stage tests: a byte-level BPE tokenizer trained by the pipeline's own
code on generated stories, and a random-init litgpt model saved as pretrain saves it."""

from __future__ import annotations

from pathlib import Path

import torch
from litgpt import GPT, Config
from litgpt.utils import save_config

from storylm.stories.storygen import generate_stories
from storylm.tokenizer import train_bpe


def make_checkpoint(out_dir: Path, vocab_size: int = 300, block_size: int = 32, seed: int = 0) -> Path:
    texts = [story["text"] for story in generate_stories(200, 3)]
    train_bpe(texts, vocab_size=vocab_size, min_frequency=2, out_dir=out_dir)
    config = Config(name="tiny-test", block_size=block_size, vocab_size=vocab_size, padding_multiple=64, n_layer=1,
                    n_head=2, n_embd=16, head_size=8, intermediate_size=32, mlp_class_name="LLaMAMLP",
                    norm_class_name="RMSNorm", bias=False, parallel_residual=False)
    torch.manual_seed(seed)
    model = GPT(config)
    save_config(config, out_dir)
    torch.save({"model": model.state_dict()}, out_dir / "lit_model.pth")  # pretrain's layout: weights under "model"
    return out_dir
