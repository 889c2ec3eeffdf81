"""Tuning strategies: which parameters train, what one optimiser step changes, restore, export, errors,
the registry (broken and third-party plugins), and the real SmolLM2-135M (slow).

Expected parameter sets are written out per architecture here, independently of the strategies'
own helpers, so a wrong helper cannot make its own test pass.
"""

from __future__ import annotations

import copy
import doctest
import importlib
import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lightning_embed import strategy as registry
from lightning_embed.models.backbones import load_backbone
from lightning_embed.strategy import (
    StrategyError,
    apply_strategy,
    available_strategies,
    build_strategy,
    parameter_summary,
    strategy_class,
    trainable_state_dict,
)
from lightning_embed.testing import FP32_REL, assert_close_relative

REPO = Path(__file__).resolve().parents[1]
BUILTINS = ("full", "lora", "qlora", "bias", "freeze")

# Where each tiny architecture keeps its parts (BERT: post-LN, so no final norm; its pooler does not feed
# last_hidden_state and so never trains).
LAYOUT = {
    "gpt_neox": {"blocks": "layers", "final": ("final_layer_norm.",), "emb": ("embed_in.",), "head": ()},
    "llama": {"blocks": "layers", "final": ("norm.",), "emb": ("embed_tokens.",), "head": ()},
    "bert": {"blocks": "encoder.layer", "final": (), "emb": ("embeddings.",), "head": ("pooler.",)},
}
INPUT_EMBEDDING = {"gpt_neox": "embed_in", "llama": "embed_tokens", "bert": "embeddings.word_embeddings"}


def _linears(raw: nn.Module, arch: str) -> list[str]:
    prefix = LAYOUT[arch]["blocks"] + "."
    return [n for n, m in raw.named_modules() if n.startswith(prefix) and isinstance(m, nn.Linear)]


def _lora_names(linears: list[str]) -> set[str]:
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
        linears = _linears(raw, arch)
        if "target_modules" in opts:
            linears = [n for n in linears if any(n.endswith("." + t) for t in opts["target_modules"])]
        out = _lora_names(linears)
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


def _for_arch(spec, arch: str):
    if isinstance(spec, dict) and spec.get("target_modules") == "PER_ARCH":
        return {**spec, "target_modules": TARGETS[arch]}
    return spec


def _case_id(spec) -> str:
    if isinstance(spec, str):
        return spec
    return spec["name"] + "(" + ",".join(f"{k}={v}" for k, v in spec.items() if k != "name") + ")"


def _inputs(arch: str):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 400, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # padding, so attention masks are exercised
    target = torch.randn(3, 9, 32, generator=g)
    return ids, mask, target


def _hidden(model: nn.Module, ids, mask) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state


def _train(model: nn.Module, arch: str, steps: int = 2) -> None:
    # SGD over *all* parameters: one that wrongly received a gradient would move, so "changed" below
    # really tests the frozen set. Two steps: LoRA's A gets a gradient only once B is non-zero.
    ids, mask, target = _inputs(arch)
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
    pytest.param(arch, spec, id=f"{arch}-{_case_id(spec)}")
    for arch in LAYOUT
    for spec in CASES
    if not (arch == "llama" and (spec if isinstance(spec, str) else spec["name"]) == "bias")
]


# ---------------------------------------------------------------------------------------------------------
# Registry


def test_builtins_are_registered_and_load():
    entries = available_strategies()
    for name in BUILTINS:
        assert entries[name].cls is not None, entries[name].error
        assert entries[name].package == "lightning-embed"
        assert strategy_class(name).name == name


def test_unknown_name_lists_available():
    with pytest.raises(StrategyError) as err:
        build_strategy("lorra")
    msg = str(err.value)
    assert "Did you mean 'lora'" in msg
    for name in BUILTINS:
        assert name in msg


def test_broken_plugin_names_itself_and_others_still_work(monkeypatch):
    real = registry.entry_points

    def fake_load_error():
        return importlib.import_module("no_such_module_for_lightning_embed_tests")

    broken = SimpleNamespace(
        name="broken", value="no_such_module_for_lightning_embed_tests:Thing",
        dist=SimpleNamespace(name="broken-plugin-dist"), load=fake_load_error,
    )
    wrong_type = SimpleNamespace(
        name="wrongtype", value="os.path:join", dist=SimpleNamespace(name="wrong-dist"),
        load=lambda: __import__("os").path.join,
    )

    def fake_entry_points(group):
        return [*real(group=group), broken, wrong_type]

    monkeypatch.setattr(registry, "entry_points", fake_entry_points)
    registry.refresh_strategies()
    try:
        with pytest.raises(StrategyError) as err:
            build_strategy({"name": "broken"})
        msg = str(err.value)
        assert "'broken'" in msg and "broken-plugin-dist" in msg and "no_such_module_for_lightning_embed_tests" in msg
        assert "failed to import" in msg
        with pytest.raises(StrategyError, match="not a TuningStrategy subclass"):
            strategy_class("wrongtype")
        # Everything else is untouched.
        for name in BUILTINS:
            assert strategy_class(name).name == name
        assert type(build_strategy({"name": "lora", "rank": 2})).__name__ == "LoRATuning"
    finally:
        monkeypatch.undo()
        registry.refresh_strategies()


def test_unknown_option_lists_valid_options():
    with pytest.raises(StrategyError, match=r"no option\(s\) rnk.*rank, alpha, dropout"):
        build_strategy({"name": "lora", "rnk": 4})


def test_docstring_examples_run():
    # The class docstrings' examples are what --help shows; keep them true.
    mods = ["strategies.full", "strategies.lora", "strategies.qlora", "strategies.bias", "strategies.freeze"]
    for name in mods:
        result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, name
        assert result.attempted > 0, name


def test_options_parse_with_jsonargparse():
    # LightningCLI reads the typed __init__ parameters through jsonargparse: the types must be usable.
    from jsonargparse import ArgumentParser

    from strategies.freeze import FreezeTuning
    from strategies.lora import LoRATuning
    from strategies.qlora import QLoRATuning

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(LoRATuning, "lora")
    parser.add_class_arguments(FreezeTuning, "freeze")
    parser.add_class_arguments(QLoRATuning, "qlora")
    cfg = parser.parse_args(
        ["--lora.rank=4", "--lora.embeddings=lora", "--lora.target_modules=[q_proj, v_proj]",
         "--freeze.blocks=0.25", "--qlora.compute_dtype=bfloat16"]
    )
    assert cfg.lora.rank == 4 and cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.freeze.blocks == 0.25 and isinstance(cfg.freeze.blocks, float)
    assert parser.parse_args(["--freeze.blocks=3"]).freeze.blocks == 3
    assert isinstance(parser.parse_args(["--freeze.blocks=3"]).freeze.blocks, int)
    with pytest.raises(Exception):
        parser.parse_args(["--lora.embeddings=sometimes"])
    with pytest.raises(Exception):
        parser.parse_args(["--qlora.quant_type=int3"])


# ---------------------------------------------------------------------------------------------------------
# Built-ins on the tiny GPT-NeoX, Llama and BERT


@pytest.mark.parametrize(("arch", "spec"), ARCH_CASES)
def test_trains_exactly_the_intended_parameters(arch, spec, tiny_backbones):
    spec = _for_arch(spec, arch)
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
    _train(model, arch)
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed == expected  # all of them moved, and nothing else


@pytest.mark.parametrize(("arch", "spec"), ARCH_CASES)
def test_restore_and_export_reproduce_the_trained_model(arch, spec, tiny_backbones):
    spec = _for_arch(spec, arch)
    name = spec if isinstance(spec, str) else spec["name"]
    ids, mask, _ = _inputs(arch)
    torch.manual_seed(1)
    model = apply_strategy(build_strategy(spec), load_backbone(tiny_backbones[arch]))
    _train(model, arch)
    trained = _hidden(model, ids, mask)

    # A checkpoint keeps only the trainable parameters; re-applying the strategy to a freshly loaded base
    # (a different seed, so LoRA's fresh init differs) and loading them gives the same model.
    state = {k: v.clone() for k, v in trainable_state_dict(model).items()}
    torch.manual_seed(2)
    again = apply_strategy(build_strategy(spec), load_backbone(tiny_backbones[arch]))
    missing, unexpected = again.load_state_dict(state, strict=False)
    assert not unexpected
    assert not set(state) & set(missing)
    assert {n for n, p in again.named_parameters() if p.requires_grad} == set(state)
    assert_close_relative(_hidden(again, ids, mask), trained, what="reloaded")

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
    assert_close_relative(_hidden(exported, ids, mask), trained, rel=1e-3 if name == "qlora" else FP32_REL,
                          what="exported")
    # Exporting worked on a copy: the trained model is unchanged and still usable.
    torch.testing.assert_close(_hidden(model, ids, mask), trained, rtol=0, atol=0)


def test_qlora_quantises_every_block_linear_and_matches_lora_counts(tiny_backbones):
    import bitsandbytes as bnb

    path = tiny_backbones["llama"]
    raw = load_backbone(path)
    linears = _linears(raw, "llama")
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
    ids, mask, _ = _inputs("llama")
    model = apply_strategy(build_strategy("qlora"), load_backbone(tiny_backbones["llama"]))
    _train(model, "llama")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert any(k.endswith("weight.absmax") for k in state)
    other = load_backbone(tiny_backbones["llama"])
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    again = apply_strategy(build_strategy("qlora"), other)
    assert not torch.allclose(_hidden(again, ids, mask), _hidden(model, ids, mask))
    again.load_state_dict(state, strict=True)
    torch.testing.assert_close(_hidden(again, ids, mask), _hidden(model, ids, mask), rtol=0, atol=0)


def test_qlora_trains_with_bf16_autocast_on_cpu(tiny_backbones):
    strategy = build_strategy({"name": "qlora", "compute_dtype": "bfloat16"})
    model = apply_strategy(strategy, load_backbone(tiny_backbones["gpt_neox"]))
    ids, mask, target = _inputs("gpt_neox")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    ((out.float() - target) ** 2).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # B starts at zero, so only B's gradients are non-zero on the first step.
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)


@pytest.mark.parametrize("name", ["lora", "qlora", "bias", "freeze"])
def test_other_architectures_gpt2_conv1d(name):
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
        assert trainable == _lora_names(projections)
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
    assert_close_relative(_hidden(exported, ids, mask), _hidden(model, ids, mask),
                          rel=1e-3 if name == "qlora" else FP32_REL, what="exported")


# ---------------------------------------------------------------------------------------------------------
# Refusing bad options, all at once


def test_bad_values_are_reported_together():
    with pytest.raises(StrategyError) as err:
        build_strategy({"name": "lora", "rank": 0, "alpha": -1, "dropout": -0.1, "embeddings": "sometimes"})
    msg = str(err.value)
    assert msg.startswith("tuning strategy 'lora': ")
    for part in ("rank must be a positive integer, got 0", "alpha", "dropout must be in [0, 1), got -0.1"):
        assert part in msg
    assert "embeddings must be 'frozen', 'lora' or 'train', got 'sometimes'" in msg
    assert msg.count("tuning strategy") == 1  # not wrapped twice by the registry

    with pytest.raises(StrategyError) as err:
        build_strategy({"name": "qlora", "rank": 1.5, "quant_type": "int3", "compute_dtype": "float8"})
    assert all(s in str(err.value) for s in ("rank", "quant_type", "compute_dtype"))

    for blocks in (1.5, -1, True, "two", 0.0):
        with pytest.raises(StrategyError, match="blocks"):
            build_strategy({"name": "freeze", "blocks": blocks})
    with pytest.raises(StrategyError, match="trains nothing"):
        build_strategy({"name": "freeze", "blocks": 0, "train_final_norm": False})
    with pytest.raises(StrategyError, match="target_modules"):
        build_strategy({"name": "lora", "target_modules": []})
    with pytest.raises(StrategyError, match="norm_biases"):
        build_strategy({"name": "bias", "norm_biases": "yes"})


def test_backbone_dependent_problems_are_reported_together(tiny_backbones):
    raw = load_backbone(tiny_backbones["gpt_neox"])
    strategy = build_strategy({"name": "lora", "target_modules": ["nope", "q_proj", "dense"]})
    problems = strategy.validate(raw)
    assert len(problems) == 1
    assert "'nope', 'q_proj' match no linear layer" in problems[0]
    assert "attention.query_key_value, attention.dense, mlp.dense_h_to_4h, mlp.dense_4h_to_h" in problems[0]
    with pytest.raises(StrategyError) as err:
        apply_strategy(strategy, raw)
    assert "'nope'" in str(err.value) and "'q_proj'" in str(err.value)
    assert all(p.requires_grad for p in raw.parameters())  # refused before anything changed

    problems = build_strategy({"name": "freeze", "blocks": 5}).validate(raw)
    assert problems == [problems[0]] and "blocks=5" in problems[0] and "only 2 blocks" in problems[0]

    # blocks=0 trains only the final norm, which BERT (post-LN) does not have.
    zero = build_strategy({"name": "freeze", "blocks": 0})
    assert zero.validate(load_backbone(tiny_backbones["llama"])) == []
    assert "no final norm" in zero.validate(load_backbone(tiny_backbones["bert"]))[0]


def test_bias_on_llama_errors_clearly(tiny_backbones):
    raw = load_backbone(tiny_backbones["llama"])
    problems = build_strategy("bias").validate(raw)
    assert len(problems) == 1 and "has no bias terms" in problems[0] and "lora" in problems[0]
    with pytest.raises(StrategyError, match="no bias terms"):
        apply_strategy(build_strategy("bias"), raw)
    with pytest.raises(StrategyError, match="no bias terms"):
        build_strategy("bias").apply(load_backbone(tiny_backbones["llama"]))  # apply checks too


def test_freeze_fraction_rounds_to_blocks():
    freeze = build_strategy({"name": "freeze", "blocks": 0.25})
    assert [freeze.num_trained_blocks(d) for d in (1, 2, 6, 30)] == [1, 1, 2, 8]
    assert build_strategy({"name": "freeze", "blocks": 1.0}).num_trained_blocks(30) == 30


# ---------------------------------------------------------------------------------------------------------
# The third-party example plugin


def test_example_plugin_installs_is_listed_and_trains(tmp_path, tiny_backbones):
    # A real (non-editable) install of examples/norm-tuning into a private folder: nothing in the shared
    # environment changes, it needs no network (no build isolation: the venv's setuptools builds it), and
    # the copy keeps build artefacts out of the source tree.
    src = tmp_path / "norm-tuning"
    shutil.copytree(REPO / "examples" / "norm-tuning", src)
    target = tmp_path / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(src)]
    if importlib.util.find_spec("setuptools") is not None:
        cmd += ["--no-build-isolation", "--no-index"]  # offline; else pip fetches setuptools to build
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    script = textwrap.dedent(
        f"""
        import json, torch
        from lightning_embed.models.backbones import load_backbone
        from lightning_embed.strategy import apply_strategy, available_strategies, build_strategy
        entry = available_strategies()["norm"]
        raw = load_backbone({tiny_backbones["gpt_neox"]!r})
        model = apply_strategy(build_strategy({{"name": "norm"}}), raw)
        trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
        before = {{n: p.detach().clone() for n, p in model.named_parameters()}}
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        ids = torch.randint(5, 400, (2, 8))
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        ((out - torch.randn_like(out)) ** 2).mean().backward()
        opt.step()
        changed = sorted(n for n, p in model.named_parameters() if not torch.equal(before[n], p))
        print(json.dumps({{"package": entry.package, "error": entry.error, "trainable": trainable,
                           "changed": changed, "builtins": sorted(available_strategies()),
                           "file": __import__(entry.cls.__module__).__file__}}))
        """
    )
    env = {**__import__("os").environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, env=env)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["package"] == "lightning-embed-norm-tuning" and result["error"] is None
    # The copy just installed, even where setup.sh has also installed the example editable.
    assert Path(result["file"]).resolve().is_relative_to(target.resolve())
    norms = sorted(
        n
        for n, _ in load_backbone(tiny_backbones["gpt_neox"]).named_parameters()
        if "layernorm" in n or "layer_norm" in n
    )
    assert result["trainable"] == result["changed"] == norms
    assert set(BUILTINS) <= set(result["builtins"])


# ---------------------------------------------------------------------------------------------------------
# The real SmolLM2-135M (Llama architecture, 30 blocks, width 576, GQA 9/3 heads, FFN 1536, no biases)


@pytest.fixture(scope="module")
def smollm2():
    return load_backbone("smollm2-135m")


@pytest.mark.slow
def test_smollm2_trainable_counts(smollm2):
    cfg = smollm2.config
    d, f, depth = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    kv = cfg.num_key_value_heads * (d // cfg.num_attention_heads)
    assert (d, f, depth, kv) == (576, 1536, 30, 192)
    total = parameter_summary(smollm2).total
    assert total == 134_515_008

    # LoRA r=8 on q, k, v, o, gate, up, down: r * (in + out) each.
    per_block = 8 * ((d + d) * 2 + (d + kv) * 2 + (d + f) * 3)
    lora = apply_strategy(build_strategy("lora"), copy.deepcopy(smollm2))
    assert parameter_summary(lora).trainable == depth * per_block == 2_442_240
    assert parameter_summary(lora).total == total + 2_442_240

    qlora = apply_strategy(build_strategy("qlora"), copy.deepcopy(smollm2))
    assert parameter_summary(qlora) == parameter_summary(lora)

    block = 2 * d * d + 2 * d * kv + 3 * d * f + 2 * d  # attention, MLP, two RMSNorm gains
    freeze = apply_strategy(build_strategy("freeze"), copy.deepcopy(smollm2))  # top half + final norm
    assert parameter_summary(freeze).trainable == 15 * block + d == 53_102_016

    with pytest.raises(StrategyError, match="no bias terms"):
        apply_strategy(build_strategy("bias"), copy.deepcopy(smollm2))

    full = apply_strategy(build_strategy("full"), copy.deepcopy(smollm2))
    assert parameter_summary(full).trainable == total


# ---------------------------------------------------------------------------------------------------------
# Method knowledge: what FLOP accounting, laws, sweeps and the recipe ask of a strategy


def _meta(arch: str, layers: int = 4):
    from lightning_embed.recipe.catalogue import meta_model
    from lightning_embed.testing import tiny_config

    return meta_model(tiny_config(arch, 512, layers=layers).to_dict())


class _TopBlock(registry.TuningStrategy):
    """A strategy that declares nothing: trains the top block, or every norm with ``spread``."""

    name = "topblock"

    def __init__(self, spread: bool = False, scale: float = 1.0) -> None:
        self.spread, self.scale = spread, scale

    def apply(self, backbone):
        parts = registry.backbone_parts(backbone)
        names = set(parts.block_params[-1]) if not self.spread else {
            n for n, _ in backbone.named_parameters() if "norm" in n}
        registry.set_trainable(backbone, names)
        return backbone


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
def test_base_class_defaults_derive_the_method_from_what_trains(arch):
    from lightning_embed.flops.model import FlopModel, parameter_counts

    assert _TopBlock.paper_flops_per_token(100, 10) is None  # needs a tuned module to say
    assert _TopBlock.trainable_params(None, {}) is None  # unknown from counts: the recipe measures it
    # Setting: the scalar options that differ from their defaults; the spec builds it back.
    assert _TopBlock.law_setting({"spread": False, "scale": 1.0}) == {}
    assert _TopBlock.law_setting({"spread": True, "scale": 2.0, "names": ["x"]}) == {"scale": 2.0, "spread": True}
    assert _TopBlock.tuning_spec({"spread": True}) == {"name": "topblock", "spread": True}
    for spread, form in [(False, (2, 4)), (True, (4, 2))]:
        tuned = _TopBlock(spread).apply(_meta(arch))
        c = parameter_counts(tuned)
        n, n_t = c.non_embedding, c.trainable_non_embedding
        # Only the top block trains: the backward stops there (2N + 4N_t); norms in every block: it runs
        # through the whole network (4N + 2N_t).
        assert _TopBlock.paper_flops_per_token(n, n_t, tuned) == form[0] * n + form[1] * n_t
        flops = FlopModel.from_module(tuned, accounting="paper", method="not-registered")
        assert flops.paper_per_token == form[0] * n + form[1] * n_t
    everything = build_strategy("full").apply(_meta(arch))
    n = parameter_counts(everything).non_embedding
    assert _TopBlock.paper_flops_per_token(n, n, everything) == 6 * n


@pytest.mark.parametrize("arch", ["gpt_neox", "llama", "bert"])
def test_builtin_settings_round_trip_through_their_specs(arch):
    """A law setting -> ``model.tuning`` -> the options a run records -> the same law setting."""
    from lightning_embed.recipe.catalogue import count_model

    counts = count_model(_meta(arch))
    for method, setting in [("full", {}), ("lora", {"rank": 4}), ("qlora", {"rank": 16}), ("freeze", {"share": 0.5}),
                            ("bias", {})]:
        cls = strategy_class(method)
        options = build_strategy(cls.tuning_spec(setting)).hparams()
        assert cls.law_setting(options, {"num_blocks": counts.num_blocks}) == setting, (method, options)
        n_t = cls.trainable_params(counts, setting)
        if method == "bias" and arch == "llama":
            assert n_t is None
            continue
        n = counts.non_embedding
        expected = {"full": 6 * n, "freeze": 2 * n + 4 * n_t}.get(method, 4 * n + 2 * n_t)
        assert cls.paper_flops_per_token(n, n_t) == expected
    # A count of frozen blocks in a record becomes a share of that record's depth.
    assert strategy_class("freeze").law_setting({"blocks": 2}, {"num_blocks": 8}) == {"share": 0.25}


def test_asking_a_builtin_imports_neither_torch_nor_other_plugins():
    """The recipe consults strategies in a torch-free process: one name loads one entry point."""
    package = REPO / "lightning_embed"
    code = (
        "import sys, types\n"
        f"pkg = types.ModuleType('lightning_embed'); pkg.__path__ = [{str(package)!r}]\n"
        "sys.modules['lightning_embed'] = pkg\n"
        "from lightning_embed.strategy import strategy_class, strategy_names\n"
        "for name in ('full', 'lora', 'qlora', 'freeze', 'bias'):\n"
        "    cls = strategy_class(name); cls.paper_flops_per_token(100, 10); cls.tuning_spec({})\n"
        "print(sorted(strategy_names()), [m for m in ('torch', 'lightning_embed_norm') if m in sys.modules])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("[]"), proc.stdout


def test_paper_formula_by_name_asks_the_registry(monkeypatch):
    from lightning_embed.errors import UserError
    from lightning_embed.flops.model import paper_flops_per_token

    real = registry.entry_points
    plugin = SimpleNamespace(name="topblock", value="tests:_TopBlock", dist=SimpleNamespace(name="t"),
                             load=lambda: _TopBlock)
    monkeypatch.setattr(registry, "entry_points", lambda group: [*real(group=group), plugin])
    registry.refresh_strategies()
    try:
        assert paper_flops_per_token("freeze", 100, 10) == 240
        with pytest.raises(UserError, match="'topblock' declares no paper FLOP formula"):
            paper_flops_per_token("topblock", 100, 10)
        with pytest.raises(UserError, match="knows the methods .*topblock"):
            paper_flops_per_token("prefix", 100, 10)
    finally:
        monkeypatch.undo()
        registry.refresh_strategies()
