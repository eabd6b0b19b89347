"""The one loader of litgpt checkpoints (lit_model.pth, model_config.yaml, tokenizer files) for evaluate,
sample, export and the training runner's resume check.

A missing or damaged file is a StageError that names it and says which stage to rerun, so a
truncated lit_model.pth reads as one clear line, not as torch's `Invalid argument`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from litgpt import GPT, Config

from storylm.io.entry import StageError, first_line

WEIGHTS = "lit_model.pth"
MODEL_CONFIG = "model_config.yaml"
RERUN = "rerun pretrain (snakemake --forcerun pretrain ...)"


def inference_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_config(checkpoint_dir: Path) -> Config:
    path = Path(checkpoint_dir) / MODEL_CONFIG
    if not path.is_file():
        raise StageError(f"{path}: missing (the checkpoint's model config); {RERUN}")
    try:
        return Config.from_file(path)
    except (TypeError, ValueError, AssertionError, yaml.YAMLError) as error:
        raise StageError(f"{path}: not a litgpt model config ({first_line(error)})") from None


def read_checkpoint(path: Path) -> object:
    """What a lit_model.pth holds (memory-mapped, on the CPU); a missing or damaged file is a StageError."""
    if not path.is_file():
        raise StageError(f"{path}: missing (the checkpoint's weights); {RERUN}")
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as error:  # noqa: BLE001 - any failure to read is a damaged file
        raise StageError(f"{path}: cannot be read as a torch checkpoint, truncated or damaged"
                         f" ({first_line(error)}); {RERUN}") from None


def load_state(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    """The model weights; pretrain's checkpoints hold the whole training state, with the weights under "model"."""
    path = Path(checkpoint_dir) / WEIGHTS
    state = read_checkpoint(path)
    state = state.get("model", state) if isinstance(state, dict) else None
    if not isinstance(state, dict) or "transformer.wte.weight" not in state:
        raise StageError(f"{path}: holds no litgpt GPT weights (no transformer.wte.weight)")
    check_finite(state, path)
    return state


def non_finite_tensor(state: dict) -> tuple[str, int] | None:
    """(name, how many values) of the first floating-point tensor holding NaN or infinity, or None."""
    for name, tensor in state.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            bad = tensor.numel() - int(torch.isfinite(tensor).sum())
            if bad:
                return name, bad
    return None


def check_finite(state: dict, path: Path) -> None:
    """A model with NaN or infinite weights computes garbage that still looks like a result (NaN
    losses, stories of U+FFFD): refused, naming the file and the tensor."""
    found = non_finite_tensor(state)
    if found is not None:
        name, bad = found
        raise StageError(f"{path}: tensor {name} holds {bad} NaN or infinite values (a diverged training or a"
                         f" damaged file); {RERUN}")


def embeddings_tied(state: dict[str, torch.Tensor]) -> bool:
    """litgpt saves a tied embedding (train.tie_embeddings) under both names; an untied head never
    equals the embedding after initialization and training."""
    head = state.get("lm_head.weight")
    return head is not None and torch.equal(head, state["transformer.wte.weight"])


def model_from_state(config: Config, state: dict[str, torch.Tensor]) -> GPT:
    """The GPT as it was trained, in eval mode; tied weights are shared again, as in training."""
    model = GPT(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise StageError(f"the checkpoint's weights do not fit its model_config.yaml ({first_line(error)})") from None
    if embeddings_tied(state):
        model.transformer.wte.weight = model.lm_head.weight
    return model.eval()


def load_model(checkpoint_dir: Path, device: str | None = None) -> GPT:
    checkpoint_dir = Path(checkpoint_dir)
    model = model_from_state(load_config(checkpoint_dir), load_state(checkpoint_dir))
    return model.to(device or inference_device())


def parameter_count(model: torch.nn.Module) -> int:
    """Distinct parameters: a tied weight counts once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
