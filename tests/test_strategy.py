"""The plugin contract (lightning_embed/strategy.py): the registry (built-in, broken and third-party plugins),
option parsing and validation, what FLOP accounting, laws and the recipe ask of a strategy, and the built-ins'
counts on the real SmolLM2-135M (slow). Each built-in's own behaviour is tested in tests/strategies/.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from lightning_embed import strategy as registry
from lightning_embed.models.backbones import load_backbone
from lightning_embed.strategy import (
    StrategyError,
    apply_strategy,
    available_strategies,
    build_strategy,
    parameter_summary,
    strategy_class,
)

REPO = Path(__file__).resolve().parents[1]
BUILTINS = ("full", "lora", "qlora", "bias", "freeze")


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
# Refusing options that do not fit the backbone, all at once


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
    # The plugin's private folder, then this checkout (not the working directory) for lightning_embed itself.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(REPO)]), "HF_HUB_OFFLINE": "1"}
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
