"""Load a litgpt checkpoint directory (lit_model.pth + model_config.yaml + tokenizer files) for inference."""

from __future__ import annotations

from pathlib import Path

import torch
from litgpt import GPT, Config, Tokenizer


def inference_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(checkpoint_dir: Path, device: str | None = None) -> GPT:
    device = device or inference_device()
    config = Config.from_file(checkpoint_dir / "model_config.yaml")
    model = GPT(config)
    # pretrain's checkpoints hold the whole training state; the weights are under "model".
    state = torch.load(checkpoint_dir / "lit_model.pth", map_location="cpu", mmap=True, weights_only=False)
    state = state.get("model", state)
    model.load_state_dict(state)
    # Tied embeddings (train.tie_embeddings) are saved twice; share them again so the model is what was trained.
    if torch.equal(state["lm_head.weight"], state["transformer.wte.weight"]):
        model.transformer.wte.weight = model.lm_head.weight
    model.to(device).eval()
    return model


def load_tokenizer(checkpoint_dir: Path) -> Tokenizer:
    return Tokenizer(checkpoint_dir)


def parameter_count(model: torch.nn.Module) -> int:
    """Distinct parameters: a tied weight counts once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
