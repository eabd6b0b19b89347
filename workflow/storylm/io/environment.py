"""What a stage ran on: the things that change a float's last bits, recorded beside its results.

Two trainings of one config are bit-for-bit equal only on the same CPU instruction set, with the same
torch thread count and library versions (docs/evaluation.md, "What is reproducible"); each stage
folder keeps these in environment.json, and each run's metrics.json gathers them.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

ENVIRONMENT = "environment.json"  # the file of it in each stage folder: its one spelling
LIBRARIES = ("torch", "litgpt", "lightning", "litdata", "tokenizers", "transformers", "numpy")
# CPU features that pick different matrix kernels (and so different rounding).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "fma")


def cpu() -> dict:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), "flags": [flag for flag in CPU_FLAGS if flag in flags]}


def describe() -> dict:
    import torch

    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu": cpu(),
        "gpus": gpus,
        "python": platform.python_version(),
        "versions": versions,
    }
