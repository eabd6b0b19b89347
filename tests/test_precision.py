"""`precision: auto` (storylm.model.precision): bf16-mixed where the hardware has bf16, 32-true elsewhere, chosen
where the training runs; the rendered litgpt config leaves the choice to it (null)."""

from __future__ import annotations

import pytest
import torch

from storylm.model import precision


@pytest.mark.parametrize(("avx512_bf16", "amx", "expected"), [
    (True, False, "bf16-mixed"),  # AMD Zen 4, Intel Cooper Lake
    (False, True, "bf16-mixed"),  # Intel Sapphire Rapids and later
    (True, True, "bf16-mixed"),
    (False, False, "32-true"),  # autocast without bf16 instructions is slower than fp32
])
def test_auto_on_a_cpu_is_bf16_mixed_only_with_bf16_instructions(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert precision.training_precision("auto") == precision.training_precision(None) == expected
    assert precision.training_precision("32-true") == "32-true"  # a setting is kept as it is
    assert precision.training_precision("bf16-true") == "bf16-true"


@pytest.mark.parametrize(("bf16_gpu", "expected"), [(True, "bf16-mixed"), (False, "16-mixed")])
def test_auto_on_cuda_is_litgpts_own_choice(monkeypatch, bf16_gpu, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16_gpu)
    assert precision.training_precision("auto") == expected


def test_the_litgpt_config_leaves_auto_to_the_machine_that_trains():
    assert precision.litgpt_setting("auto") is None
    assert precision.litgpt_setting("bf16-mixed") == "bf16-mixed"
