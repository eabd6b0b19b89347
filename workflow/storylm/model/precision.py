"""The training precision `precision: auto` stands for: bf16-mixed where the hardware has bf16, else 32-true.

On a CPU, bf16 autocast pays only with bf16 matrix instructions (AVX512-BF16, AMX): the default
model's training step is 1.2-1.3x faster there at the same loss (docs/experiments.md, "bf16-mixed
on the CPU"), and slower than 32-true without them. On CUDA it is litgpt's own default
(`litgpt.utils.get_default_supported_precision`): bf16-mixed, or 16-mixed on a GPU without bf16.

`auto` is resolved where the training runs, not where the plan is made (a Slurm login node has
another CPU and no GPU): the rendered litgpt config says `precision: null`, litgpt's "pick one for
this machine", and storylm.model.litgpt_train makes litgpt pick with `training_precision` below.
Each part of a training records what it used (environment.json, "precision"): the training runner
asks before it starts litgpt, so this module imports torch only (litgpt costs seconds to import).
"""

from __future__ import annotations

AUTO = "auto"


def cpu_has_bf16() -> bool:
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def training_precision(setting: str | None = AUTO) -> str:
    """The Lightning precision a training with this setting uses on this machine."""
    if setting not in (None, AUTO):
        return setting
    import torch

    if torch.cuda.is_available():  # litgpt's own default (litgpt.utils), without importing litgpt here
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_bf16() else "32-true"


def litgpt_setting(setting: str) -> str | None:
    """The value for litgpt's `precision` argument: null (this machine's choice) for auto."""
    return None if setting == AUTO else setting
