"""The built-in strategies' shared checks, run by each tests/strategies/test_<name>.py on its own cases.

Expected parameter sets are written out per architecture here, independently of the strategies'
own helpers, so a wrong helper cannot make its own test pass.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_embed.models.backbones import load_backbone
from lightning_embed.strategy import (
    apply_strategy,
    build_strategy,
    parameter_summary,
    trainable_state_dict,
)
from lightning_embed.testing import FP32_REL, assert_close_relative

# last_hidden_state and so never trains).
LAYOUT = {
    "gpt_neox": {"blocks": "layers", "final": ("final_layer_norm.",), "emb": ("embed_in.",), "head": ()},
    "llama": {"blocks": "layers", "final": ("norm.",), "emb": ("embed_tokens.",), "head": ()},
    "bert": {"blocks": "encoder.layer", "final": (), "emb": ("embeddings.",), "head": ("pooler.",)},
}
INPUT_EMBEDDING = {"gpt_neox": "embed_in", "llama": "embed_tokens", "bert": "embeddings.word_embeddings"}


def block_linears(raw: nn.Module, arch: str) -> list[str]:
    prefix = LAYOUT[arch]["blocks"] + "."
    return [n for n, m in raw.named_modules() if n.startswith(prefix) and isinstance(m, nn.Linear)]


def lora_names(linears: list[str]) -> set[str]:
    return {f"base_model.model.{n}.lora_{ab}.default.weight" for n in linears for ab in "AB"}


def expected_trainable(spec, arch: str, raw: nn.Module) -> set[str]:
    """The parameter names that must (and alone may) require gradients after applying ``spec``."""
    lay = LAYOUT[arch]
    names = [n for n, _ in raw.named_parameters()]
    name = spec if isinstance(spec, str) else spec["name"]
    opts = {} if isinstance(spec, str) else {k: v for k, v in spec.items() if k != "name"}
    if name == "full":
        return set(names)
    if name == "bias":
        out = {n for n in names if n.endswith(".bias") and not n.startswith(lay["head"])}
        if not opts.get("norm_biases", True):
            out = {n for n in out if "norm" not in n.lower()}
        return out
    if name == "freeze":
        top = f"{lay['blocks']}.1."  # the tiny models have 2 blocks; the cases below train the top one
        out = {n for n in names if n.startswith(top)}
        if opts.get("train_final_norm", True):
            out |= {n for n in names if n.startswith(lay["final"])}
        if opts.get("train_embeddings", False):
            out |= {n for n in names if n.startswith(lay["emb"])}
        return out
    if name in ("lora", "qlora"):
        linears = block_linears(raw, arch)
        if "target_modules" in opts:
            linears = [n for n in linears if any(n.endswith("." + t) for t in opts["target_modules"])]
        out = lora_names(linears)
        emb = INPUT_EMBEDDING[arch]
        if opts.get("embeddings") == "lora":
            out |= {f"base_model.model.{emb}.lora_embedding_{ab}.default" for ab in "AB"}
        if opts.get("embeddings") == "train":
            out.add(f"base_model.model.{emb}.weight")
        return out
    raise AssertionError(name)


CASES = [
    "full",
    "lora",
    {"name": "lora", "rank": 4, "alpha": 8, "rslora": True, "embeddings": "lora"},
    {"name": "lora", "target_modules": "PER_ARCH", "embeddings": "train"},
    "qlora",
    {"name": "qlora", "rank": 2, "embeddings": "lora", "quant_type": "fp4", "double_quant": False},
    "bias",
    {"name": "bias", "norm_biases": False},
    {"name": "freeze", "blocks": 1},
    {"name": "freeze", "blocks": 0.5, "train_final_norm": False, "train_embeddings": True},
]


# Suffixes of block linear layers per architecture; BERT's "output.dense" matches two layers per block.
TARGETS = {"gpt_neox": ["attention.dense"], "llama": ["q_proj", "down_proj"], "bert": ["query", "output.dense"]}


def for_arch(spec, arch: str):
    if isinstance(spec, dict) and spec.get("target_modules") == "PER_ARCH":
        return {**spec, "target_modules": TARGETS[arch]}
    return spec


def case_id(spec) -> str:
    if isinstance(spec, str):
        return spec
    return spec["name"] + "(" + ",".join(f"{k}={v}" for k, v in spec.items() if k != "name") + ")"


def inputs(arch: str):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 400, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # padding, so attention masks are exercised
    target = torch.randn(3, 9, 32, generator=g)
    return ids, mask, target


def hidden(model: nn.Module, ids, mask) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state


def train(model: nn.Module, arch: str, steps: int = 2) -> None:
    # SGD over *all* parameters: one that wrongly received a gradient would move, so "changed" below
    # really tests the frozen set. Two steps: LoRA's A gets a gradient only once B is non-zero.
    ids, mask, target = inputs(arch)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    for _ in range(steps):
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        # Not mean(h**2): with a fresh final LayerNorm that is constant and sends no gradient below it.
        loss = ((out - target) ** 2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


# Every case on every architecture, except bias-only on Llama: it has no bias terms, an error by design
# (test_bias_on_llama_errors_clearly).
ARCH_CASES = [
    pytest.param(arch, spec, id=f"{arch}-{case_id(spec)}")
    for arch in LAYOUT
    for spec in CASES
    if not (arch == "llama" and (spec if isinstance(spec, str) else spec["name"]) == "bias")
]


def arch_cases(name: str) -> list:
    """The cases of one strategy, as ``pytest.param(arch, spec)``."""
    return [case for case in ARCH_CASES if _name(case.values[1]) == name]


def _name(spec) -> str:
    return spec if isinstance(spec, str) else spec["name"]


def check_trains_exactly_the_intended_parameters(arch: str, spec, tiny_backbones: dict[str, str]) -> None:
    """Exactly the expected parameters require gradients; two optimiser steps move all of them, nothing else."""
    spec = for_arch(spec, arch)
    # Seeded: LoRA's A moves only in the second step, by a gradient through B's first step; with some random
    # states (the suite's order decides them) one A's gradient underflows and the test failed by chance.
    torch.manual_seed(0)
    raw = load_backbone(tiny_backbones[arch])
    expected = expected_trainable(spec, arch, raw)
    strategy = build_strategy(spec)
    model = apply_strategy(strategy, raw)

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = LAYOUT[arch]["head"]
    if spec == "full":
        # Whether `full` also marks BERT's pooler trainable is full.py's choice; it never gets a gradient.
        trainable = {n for n in trainable if not n.startswith(head)}
        expected = {n for n in expected if not n.startswith(head)}
    assert trainable == expected
    assert parameter_summary(model).trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, arch)
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed == expected  # all of them moved, and nothing else


def check_restore_and_export_reproduce_the_trained_model(arch: str, spec, tiny_backbones: dict[str, str]) -> None:
    """Trainable state re-applied to a fresh base, and the plain export, reproduce the trained model."""
    spec = for_arch(spec, arch)
    name = spec if isinstance(spec, str) else spec["name"]
    ids, mask, _ = inputs(arch)
    torch.manual_seed(1)
    model = apply_strategy(build_strategy(spec), load_backbone(tiny_backbones[arch]))
    train(model, arch)
    trained = hidden(model, ids, mask)

    # A checkpoint keeps only the trainable parameters; re-applying the strategy to a freshly loaded base
    # (a different seed, so LoRA's fresh init differs) and loading them gives the same model.
    state = {k: v.clone() for k, v in trainable_state_dict(model).items()}
    torch.manual_seed(2)
    again = apply_strategy(build_strategy(spec), load_backbone(tiny_backbones[arch]))
    missing, unexpected = again.load_state_dict(state, strict=False)
    assert not unexpected
    assert not set(state) & set(missing)
    assert {n for n, p in again.named_parameters() if p.requires_grad} == set(state)
    assert_close_relative(hidden(again, ids, mask), trained, what="reloaded")

    exported = build_strategy(spec).export(model)
    raw_type = type(load_backbone(tiny_backbones[arch]))
    assert type(exported) is raw_type  # a plain Hugging Face model, no peft wrapper
    assert not any("lora" in n for n, _ in exported.named_parameters())
    assert all(type(m).__module__.split(".")[0] not in ("peft", "bitsandbytes") for m in exported.modules())
    assert all(p.dtype == torch.float32 for p in exported.parameters())
    # qlora: the trained model dequantises the same 4-bit codes in fp32 on every forward; the export
    # dequantises them once and adds B @ A * scale into the weight, so only the order of fp32 additions
    # differs (observed ~1e-6). 1e-4 leaves room for BLAS differences, and is far below the NF4
    # quantisation error itself (~1e-1 on these outputs), so a wrong dequantisation would fail. Normwise
    # (lightning_embed.testing.tolerances), since the rounding depends on the CPU's kernels.
    assert_close_relative(hidden(exported, ids, mask), trained, rel=1e-3 if name == "qlora" else FP32_REL,
                          what="exported")
    # Exporting worked on a copy: the trained model is unchanged and still usable.
    torch.testing.assert_close(hidden(model, ids, mask), trained, rtol=0, atol=0)


def check_gpt2_conv1d(name: str) -> None:
    """The strategy tunes GPT-2, whose projections are transformers' Conv1D, and exports it."""
    # GPT-2 keeps its projections in transformers' Conv1D (weight stored in x out), not nn.Linear: the
    # block inspection must still find them, and qlora must quantise them transposed.
    from transformers import AutoModel, GPT2Config

    def make():
        torch.manual_seed(0)
        config = GPT2Config(
            n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=64, bos_token_id=0, eos_token_id=0
        )
        return AutoModel.from_config(config)

    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    model = apply_strategy(build_strategy(name), make())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    projections = [f"h.{i}.{m}" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    if name in ("lora", "qlora"):
        assert trainable == lora_names(projections)
    elif name == "bias":
        assert trainable == {n for n, _ in make().named_parameters() if n.endswith(".bias")}
    else:  # top half = block h.1, plus ln_f
        assert trainable == {n for n, _ in make().named_parameters() if n.startswith(("h.1.", "ln_f."))}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(2):
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        ((out - 1) ** 2).mean().backward()
        opt.step()
        opt.zero_grad()
    exported = build_strategy(name).export(model)
    assert type(exported).__name__ == "GPT2Model"
    assert_close_relative(hidden(exported, ids, mask), hidden(model, ids, mask),
                          rel=1e-3 if name == "qlora" else FP32_REL, what="exported")
