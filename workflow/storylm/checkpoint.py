"""Load a litgpt checkpoint directory (lit_model.pth + model_config.yaml + tokenizer files) for inference."""

from __future__ import annotations

from pathlib import Path

import torch
from litgpt import GPT, Config, Tokenizer


def load_model(checkpoint_dir: Path, device: str = "cpu") -> GPT:
    config = Config.from_file(checkpoint_dir / "model_config.yaml")
    model = GPT(config)
    # pretrain's checkpoints hold the whole training state; the weights are under "model".
    state = torch.load(checkpoint_dir / "lit_model.pth", map_location=device, mmap=True, weights_only=False)
    model.load_state_dict(state.get("model", state))
    model.to(device).eval()
    return model


def load_tokenizer(checkpoint_dir: Path) -> Tokenizer:
    return Tokenizer(checkpoint_dir)
