"""The FLOP model (lightning_embed/flops/model.py) against torch's FlopCounterMode, and the study's numbers."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lightning_embed.errors import UserError
from lightning_embed.flops.budget import dry_run
from lightning_embed.flops.model import (
    FlopCount,
    FlopModel,
    TokenStats,
    infer_paper_method,
    paper_flops_per_token,
    parameter_counts,
)
from lightning_embed.models.backbones import count_parameters, load_backbone
from tests.flops.reference import counted_flops, padded_batch, tune_by_hand


@pytest.mark.parametrize("arch", ["gpt_neox", "llama", "bert"])
@pytest.mark.parametrize("method", ["full", "lora", "bias", "freeze"])
def test_analytic_count_matches_flop_counter(tiny_backbones, arch, method):
    model = tune_by_hand(load_backbone(tiny_backbones[arch], attn_implementation="eager"), arch, method).train()
    flops = FlopModel.from_module(model)
    ids, mask = padded_batch()
    # Hardware FLOP: what the padded batch computes.
    assert flops.batch(mask).hardware == pytest.approx(counted_flops(model, ids, mask), rel=0.02)
    # Model FLOP: each row on its real tokens only.
    rows = sum(counted_flops(model, ids[i : i + 1, :n], mask[i : i + 1, :n])
               for i, n in enumerate(mask.sum(-1).tolist()))
    assert flops.batch(mask).model == pytest.approx(rows, rel=0.02)
    # Inference: forward only.
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    assert flops.batch(mask, train=False).hardware == pytest.approx(counter.get_total_flops(), rel=0.02)


@pytest.mark.parametrize("spec", ["full", "lora", "bias", {"name": "freeze", "blocks": 1}])
def test_registered_strategies_are_costed_from_the_module(tiny_backbones, spec):
    from lightning_embed.strategy import build_strategy

    model = build_strategy(spec).apply(load_backbone(tiny_backbones["gpt_neox"], attn_implementation="eager")).train()
    ids, mask = padded_batch()
    assert FlopModel.from_module(model).batch(mask).hardware == pytest.approx(counted_flops(model, ids, mask), rel=0.02)


def test_third_party_strategy_needs_no_code(tiny_backbones):
    from lightning_embed.strategy import TuningStrategy

    class NormTuning(TuningStrategy):
        name = "norm"

        def apply(self, backbone):
            for n, p in backbone.named_parameters():
                p.requires_grad_("norm" in n)
            return backbone

    model = NormTuning().apply(load_backbone(tiny_backbones["gpt_neox"], attn_implementation="eager")).train()
    ids, mask = padded_batch()
    flops = FlopModel.from_module(model)
    assert flops.batch(mask).hardware == pytest.approx(counted_flops(model, ids, mask), rel=0.02)
    assert flops.paper_method == "lora"  # backward through the whole network: 4N + 2N_t


def test_qlora_counts_the_4bit_forward_flop_counter_misses(tiny_backbones):
    from lightning_embed.strategy import build_strategy

    model = build_strategy("qlora").apply(load_backbone(tiny_backbones["llama"], attn_implementation="eager")).train()
    flops = FlopModel.from_module(model)  # 4-bit layers cannot run on meta stand-ins: real-weight probe
    ids, mask = padded_batch()
    stats = TokenStats.from_mask(mask)
    base_forward = sum(op.forward.over(stats.rows, stats.padded_tokens, stats.padded_squares)
                       for op in flops.ops if op.name.endswith("base_layer"))
    # bitsandbytes runs the 4-bit forward as a custom op torch's counter does not see; all else matches.
    assert flops.batch(mask).hardware == pytest.approx(counted_flops(model, ids, mask) + base_forward, rel=1e-9)
    assert flops.paper_method == "lora" and flops.params.non_embedding == count_parameters(
        load_backbone(tiny_backbones["llama"]))[1]


@pytest.mark.parametrize("arch", ["gpt_neox", "llama", "bert"])
@pytest.mark.parametrize("method", ["full", "freeze"])
def test_recomputation_under_checkpointing_is_hardware_only(tiny_backbones, arch, method):
    plain = tune_by_hand(load_backbone(tiny_backbones[arch], attn_implementation="eager"), arch, method)
    model = tune_by_hand(load_backbone(tiny_backbones[arch], attn_implementation="eager"), arch, method)
    # As EmbeddingModule does: frozen embeddings would otherwise leave checkpointed blocks without grad.
    model.enable_input_require_grads()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    ids, mask = padded_batch()
    flops = FlopModel.from_module(model)
    assert flops.batch(mask, recompute=True).hardware == pytest.approx(counted_flops(model, ids, mask), rel=0.02)
    # The method's own cost does not change with checkpointing.
    assert flops.batch(mask).model == FlopModel.from_module(plain).batch(mask).model


def test_gradcache_adds_one_forward_to_hardware_only(tiny_backbones):
    flops = FlopModel.from_module(load_backbone(tiny_backbones["gpt_neox"], attn_implementation="eager"))
    base, cached = flops.sequence(30), flops.sequence(30, gradcache=True)
    assert cached.model == base.model
    assert cached.hardware == base.hardware + flops.sequence(30, train=False).hardware


def test_meta_device_and_sdpa(tiny_backbones):
    from transformers import AutoModel

    from lightning_embed.testing import tiny_config

    config = tiny_config("llama", 512)
    config._attn_implementation = "eager"
    real = FlopModel.from_module(AutoModel.from_config(config))
    with torch.device("meta"):
        meta = FlopModel.from_module(AutoModel.from_config(config))
        config._attn_implementation = "sdpa"
        sdpa = FlopModel.from_module(AutoModel.from_config(config))
    assert meta.sequence(37) == real.sequence(37) and meta.params == real.params
    # SDPA counts the same attention matmuls (torch's counter sees 0 on CPU); only its fused backward
    # recomputes the scores, which is hardware.
    assert sdpa.sequence(37).model == real.sequence(37).model
    assert sdpa.sequence(37).hardware > real.sequence(37).hardware


def test_batch_is_the_sum_of_its_rows(tiny_backbones):
    flops = FlopModel.from_module(load_backbone(tiny_backbones["bert"], attn_implementation="eager"))
    _, mask = padded_batch()
    lengths = mask.sum(-1).tolist()
    assert flops.batch(mask).model == pytest.approx(sum(flops.sequence(n).model for n in lengths))
    assert flops.batch(mask).hardware == pytest.approx(3 * flops.sequence(20).hardware)
    example = flops.per_example(10, 30, num_negatives=2)
    assert example.model == pytest.approx(flops.sequence(10).model + 3 * flops.sequence(30).model)
    assert sum([FlopCount(1, 2), FlopCount(3, 4)]) == FlopCount(4, 6) and 2 * FlopCount(1, 2) == FlopCount(2, 4)


PYTHIA = {  # layers, d_model, heads, FFN, non-embedding parameters (Pythia model cards)
    "pythia-14m": (6, 128, 4, 512, 1_189_888),
    "pythia-31m": (6, 256, 8, 1024, 4_739_072),
    "pythia-70m": (6, 512, 8, 2048, 18_915_328),
    "pythia-160m": (12, 768, 12, 3072, 85_056_000),
    "pythia-410m": (24, 1024, 16, 4096, 302_311_424),
    "pythia-1b": (16, 2048, 8, 8192, 805_736_448),
    "pythia-1.4b": (24, 2048, 16, 8192, 1_208_602_624),
    "pythia-2.8b": (32, 2560, 32, 10240, 2_517_652_480),
}


def _pythia(name: str):
    from transformers import AutoModel, GPTNeoXConfig

    layers, width, heads, ffn, _ = PYTHIA[name]
    config = GPTNeoXConfig(vocab_size=50304, hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                           intermediate_size=ffn, rotary_pct=0.25, max_position_embeddings=2048)
    config._attn_implementation = "eager"
    with torch.device("meta"):
        return AutoModel.from_config(config)


@pytest.mark.parametrize("name", list(PYTHIA))
def test_pythia_parameter_counts(name):
    model = _pythia(name)
    n = PYTHIA[name][4]
    assert count_parameters(model)[1] == n
    assert parameter_counts(model).non_embedding == n


def test_paper_replays_the_study():
    flops = FlopModel.from_module(_pythia("pythia-14m"), accounting="paper")
    assert flops.paper_method == "full" and flops.params.non_embedding == 1_189_888
    per_example = flops.per_example(14, 64).model
    assert per_example == 6 * 1_189_888 * 78
    assert 1.5e15 / per_example == pytest.approx(2.69e6, rel=0.002)
    report = dry_run(_Module(_pythia("pythia-14m")), None, "1.5e15", accounting="paper", query_tokens=14,
                     document_tokens=64, batch_size=1)
    assert report.examples == math.floor(1.5e15 / per_example)
    assert paper_flops_per_token("freeze", 100, 10) == 240
    assert paper_flops_per_token("lora", 100, 10) == paper_flops_per_token("bias", 100, 10) == 420
    with pytest.raises(UserError, match="knows the methods"):
        paper_flops_per_token("prefix", 100, 10)


def test_paper_methods_are_inferred_and_adapters_left_out_of_n(tiny_backbones):
    from lightning_embed.strategy import build_strategy

    path = tiny_backbones["gpt_neox"]
    plain = load_backbone(path)
    n = count_parameters(plain)[1]
    specs = [("full", "full"), ("lora", "lora"), ("bias", "bias"), ({"name": "freeze", "blocks": 1}, "freeze")]
    for spec, method in specs:
        model = build_strategy(spec).apply(load_backbone(path))
        assert infer_paper_method(model) == method
        counts = parameter_counts(model)
        assert counts.non_embedding == n  # LoRA's adapters are N_t, not N
        assert counts.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)


class _Module:
    def __init__(self, backbone):
        self.backbone = backbone
