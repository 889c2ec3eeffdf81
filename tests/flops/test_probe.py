"""The FLOP probe (lightning_embed/flops/probe.py) on meta-device stand-ins of real weights."""

from __future__ import annotations

import pytest

from lightning_embed.models.backbones import load_backbone
from tests.flops.reference import tune_by_hand


@pytest.mark.parametrize("arch", ["gpt_neox", "llama", "bert"])
def test_probe_runs_on_meta_stand_ins_of_real_weights(tiny_backbones, arch):
    from lightning_embed.flops.probe import _probe_once

    model = tune_by_hand(load_backbone(tiny_backbones[arch], attn_implementation="eager"), arch, "lora")
    meta, _ = _probe_once(model, 8, False, on_meta=True)  # raises if the meta path broke
    real, _ = _probe_once(model, 8, False, on_meta=False)
    def seen(events):
        return [(e.name, e.flop, e.requires, reaches) for e, reaches, _ in events]

    assert seen(meta) == seen(real)
