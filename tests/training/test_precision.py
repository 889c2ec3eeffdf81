"""The bf16 decision per CPU kind (AMX, AVX512-BF16, neither) and the hardware line CI prints."""

from __future__ import annotations

import pytest
import torch

from lightning_embed.training import precision


@pytest.mark.parametrize(("amx", "avx512_bf16", "path", "default"), [
    (True, True, "AMX", "bf16-mixed"),                 # Intel Sapphire Rapids and later
    (False, True, "AVX512-BF16", "bf16-mixed"),        # AMD Zen 4 and later, Intel Cooper Lake
    (False, False, "none (emulated)", "32-true"),      # older x86 and most ARM: bf16 would be emulated
])
def test_each_cpu_kind_gets_its_precision(monkeypatch, amx, avx512_bf16, path, default):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert precision.bf16_path() == path
    assert precision.native_bf16() is (default == "bf16-mixed")
    assert precision.default_precision() == default
    line = precision.describe_hardware()
    assert f"bf16 path: {path}" in line and f"fit default precision: {default}" in line


def test_the_hardware_line_names_this_cpu():
    line = precision.describe_hardware()
    assert line.startswith(("CPU: ", "GPU: ")) and precision.cpu_model() in line
    assert precision.cpu_model().strip()
