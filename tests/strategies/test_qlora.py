"""QLoRA (strategies/qlora.py): 4-bit block linears, strict state dicts, bf16 autocast, restore, export."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch

from lightning_embed.models.backbones import load_backbone
from lightning_embed.strategy import (
    StrategyError,
    apply_strategy,
    build_strategy,
    parameter_summary,
)
from tests.strategies.builtin_cases import (
    arch_cases,
    block_linears,
    check_gpt2_conv1d,
    check_restore_and_export_reproduce_the_trained_model,
    check_trains_exactly_the_intended_parameters,
    hidden,
    inputs,
    train,
)


@pytest.mark.parametrize(("arch", "spec"), arch_cases("qlora"))
def test_trains_exactly_the_intended_parameters(arch, spec, tiny_backbones):
    check_trains_exactly_the_intended_parameters(arch, spec, tiny_backbones)


@pytest.mark.parametrize(("arch", "spec"), arch_cases("qlora"))
def test_restore_and_export_reproduce_the_trained_model(arch, spec, tiny_backbones):
    check_restore_and_export_reproduce_the_trained_model(arch, spec, tiny_backbones)


def test_docstring_examples_run():
    # The class docstring's examples are what --help shows; keep them true.
    result = doctest.testmod(importlib.import_module("strategies.qlora"), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_other_architectures_gpt2_conv1d():
    check_gpt2_conv1d("qlora")


def test_bad_values_are_reported_together():
    with pytest.raises(StrategyError) as err:
        build_strategy({"name": "qlora", "rank": 1.5, "quant_type": "int3", "compute_dtype": "float8"})
    assert all(s in str(err.value) for s in ("rank", "quant_type", "compute_dtype"))


def test_qlora_quantises_every_block_linear_and_matches_lora_counts(tiny_backbones):
    import bitsandbytes as bnb

    path = tiny_backbones["llama"]
    raw = load_backbone(path)
    linears = block_linears(raw, "llama")
    fp32_bytes = sum(raw.get_submodule(n).weight.numel() * 4 for n in linears)
    q = apply_strategy(build_strategy("qlora"), raw)
    base = q.get_base_model()
    layers = [base.get_submodule(n) for n in linears]
    assert all(isinstance(m.get_base_layer(), bnb.nn.Linear4bit) for m in layers)
    assert all(type(m).__module__ == "peft.tuners.lora.bnb" for m in layers)  # peft's 4-bit-aware layer
    q_bytes = sum(m.get_base_layer().weight.numel() for m in layers)  # uint8, two codes a byte
    assert q_bytes * 8 == fp32_bytes
    lora = apply_strategy(build_strategy("lora"), load_backbone(path))
    assert parameter_summary(q) == parameter_summary(lora)  # logical sizes: 4-bit weights unpacked


def test_qlora_full_state_dict_loads_back_strictly(tiny_backbones):
    # Lightning loads checkpoints strictly, and EmbeddingModule fills a partial checkpoint with the
    # module's own state_dict(): the 4-bit layers' extra statistics entries must load back. Loaded into
    # a model quantised from *different* base weights, the state dict must restore the saved model.
    ids, mask, _ = inputs("llama")
    model = apply_strategy(build_strategy("qlora"), load_backbone(tiny_backbones["llama"]))
    train(model, "llama")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert any(k.endswith("weight.absmax") for k in state)
    other = load_backbone(tiny_backbones["llama"])
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    again = apply_strategy(build_strategy("qlora"), other)
    assert not torch.allclose(hidden(again, ids, mask), hidden(model, ids, mask))
    again.load_state_dict(state, strict=True)
    torch.testing.assert_close(hidden(again, ids, mask), hidden(model, ids, mask), rtol=0, atol=0)


def test_qlora_trains_with_bf16_autocast_on_cpu(tiny_backbones):
    strategy = build_strategy({"name": "qlora", "compute_dtype": "bfloat16"})
    model = apply_strategy(strategy, load_backbone(tiny_backbones["gpt_neox"]))
    ids, mask, target = inputs("gpt_neox")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    ((out.float() - target) ** 2).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # B starts at zero, so only B's gradients are non-zero on the first step.
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)
