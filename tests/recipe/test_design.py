"""Sweep design (``lightning_embed/recipe/design.py`` through ``sweep plan``): settings from the strategies,
focus on the predicted iso-FLOP minimum, repeated seeds; and a third-party strategy (examples/norm-tuning's
``norm``) costed by ``sweep plan``, fitted by ``laws fit`` and recommended by ``recipe`` with no core edit.

No training anywhere: plans are checked on disk, laws are fitted to synthetic run records.
"""

from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from lightning_embed.errors import UserError
from lightning_embed.flops.records import RunRecord
from lightning_embed.recipe import laws_fit, recipe, solve
from lightning_embed.recipe.catalogue import load_shipped_family, meta_model, resolve_models
from lightning_embed.recipe.laws import Law, LawsFile, save_laws
from lightning_embed.recipe.sweep import load_manifest, run_sweep, sweep_plan
from lightning_embed.strategy import build_strategy, refresh_strategies, strategy_class

REPO = Path(__file__).resolve().parents[2]
TOKENS = 78  # 14 query + 64 document tokens per example, the plan's default
SMOLLM2 = "smollm2-135m-truncated"


# ---- the third-party strategy, registered as an installed plugin would be ------------------------------


@pytest.fixture
def norm_plugin(monkeypatch):
    """examples/norm-tuning's ``norm`` under the entry-point group, whether or not it is pip-installed here."""
    from lightning_embed import strategy as registry

    monkeypatch.syspath_prepend(str(REPO / "examples" / "norm-tuning" / "src"))
    real = registry.entry_points
    plugin = SimpleNamespace(
        name="norm", value="lightning_embed_norm:NormTuning", dist=SimpleNamespace(name="lightning-embed-norm-tuning"),
        load=lambda: importlib.import_module("lightning_embed_norm").NormTuning,
    )
    monkeypatch.setattr(registry, "entry_points",
                        lambda group: [*(ep for ep in real(group=group) if ep.name != "norm"), plugin])
    refresh_strategies()
    yield strategy_class("norm")
    monkeypatch.undo()
    refresh_strategies()


def _norm_trainable(model) -> int:
    """N_t of norm tuning on a catalogue model, counted on the tuned meta model (independent of the core)."""
    tuned = build_strategy("norm").apply(meta_model(model.config))
    return sum(p.numel() for n, p in tuned.named_parameters() if p.requires_grad and "emb" not in n)


def test_sweep_plan_costs_a_third_party_strategy_through_the_strategy(norm_plugin, tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNING_EMBED_CACHE", str(tmp_path / "cache"))
    points = sweep_plan(tmp_path / "s", budgets=[1e13, 1e14], models=SMOLLM2, methods=["norm", "full"])
    norm = [p for p in points if p.method == "norm"]
    assert {p.model for p in norm} >= {"smollm2-135m-l4", "smollm2-135m-l30"} and all(p.setting == {} for p in norm)
    for p in norm:
        (model,) = resolve_models(p.model)
        n = model.counts.non_embedding
        n_t = _norm_trainable(model)
        assert 0 < n_t < n / 100  # norms only
        # The plugin declares no formula: derived from what trains (norms in every block: the backward runs
        # through the whole network), 4N + 2N_t as for adapters.
        assert p.examples == int(p.budget // ((4 * n + 2 * n_t) * TOKENS))
        config = yaml.safe_load((tmp_path / "s" / p.config).read_text())
        assert config["model"]["tuning"] == {"name": "norm"}
    # A method nobody installed is refused up front, naming the installed ones.
    with pytest.raises(UserError, match="unknown tuning strategy 'nrom'.*Did you mean 'norm'"):
        sweep_plan(tmp_path / "t", budgets=[1e14], models=SMOLLM2, methods=["nrom"])


def _norm_truth(n: float, d: float) -> float:
    return 0.8 + 25.0 / n ** 0.3 + 40.0 / d ** 0.32


def test_laws_fit_and_recipe_take_a_third_party_strategy(norm_plugin, tmp_path, monkeypatch):
    """Runs tuned with ``norm`` are grouped into one law, and ``recipe`` ranks its candidates by it."""
    from lightning_embed.recipe.costs import paper_costs

    monkeypatch.setenv("LIGHTNING_EMBED_CACHE", str(tmp_path / "cache"))
    models = load_shipped_family("pythia").models[:6]
    per_example = paper_costs([(m, "norm", {}) for m in models], TOKENS)
    rng = np.random.default_rng(0)
    lines = []
    for budget in np.logspace(15, 17, 5):
        for m, cost in zip(models, per_example):
            examples = int(budget // cost)
            if examples < 32:
                continue
            loss = _norm_truth(m.counts.non_embedding, examples) * math.exp(rng.normal(0, 0.003))
            lines.append(RunRecord(
                backbone=m.backbone, tuning="norm", tuning_args={"final_norm": True, "embedding_norm": True},
                non_embedding_params=m.counts.non_embedding, total_params=m.counts.total,
                trainable_params=_norm_trainable(m), num_blocks=m.counts.num_blocks, examples=examples,
                tokens=examples * TOKENS, batch_size=32, steps=examples // 32, flops_model=float(examples * cost),
                accounting="paper", budget=float(budget), val_loss=float(loss),
            ).to_json())
    runs = tmp_path / "runs.jsonl"
    runs.write_text("\n".join(lines) + "\n")
    laws = laws_fit([runs], tmp_path / "laws.yaml", quiet=True)
    (law,) = laws.laws
    assert (law.method, law.setting) == ("norm", {})  # the plugin's default options: one setting, one law
    budget = 3e16
    result = solve(budget, laws, list(models))
    truth = {m.name: _norm_truth(m.counts.non_embedding, int(budget // cost)) for m, cost in zip(models, per_example)}
    best = min(truth, key=truth.get)
    assert result.winner.law.method == "norm" and result.winner.model.name == best
    assert result.winner.loss == pytest.approx(truth[best], rel=0.01)
    assert result.winner.trainable == _norm_trainable(result.winner.model)  # measured, not guessed
    # The command: the config it writes trains with the plugin.
    recipe(budget, laws=laws.path, models=",".join(m.name for m in models), write_config=tmp_path / "fit.yaml")
    assert yaml.safe_load((tmp_path / "fit.yaml").read_text())["model"]["tuning"] == {"name": "norm"}


# ---- settings -------------------------------------------------------------------------------------------


def test_settings_come_from_each_strategys_keys(tmp_path):
    points = sweep_plan(tmp_path, budgets=[1e14], models=SMOLLM2, methods=["full", "lora", "freeze"],
                        settings=["rank=4,8", "share=0.5"], min_steps=1)
    assert {(p.method, tuple(p.setting.items())) for p in points} == {
        ("full", ()), ("lora", (("rank", 4),)), ("lora", (("rank", 8),)), ("freeze", (("share", 0.5),))}
    p = next(p for p in points if p.method == "freeze")
    assert yaml.safe_load((tmp_path / p.config).read_text())["model"]["tuning"] == {"name": "freeze", "blocks": 0.5}
    with pytest.raises(UserError) as err:
        sweep_plan(tmp_path / "b", budgets=[1e14], models=SMOLLM2, methods=["full", "lora"],
                   settings=["rnak=4", "rank=0", "oops"])
    msg = str(err.value)
    # Every problem at once: a key no method has, a value the strategy rejects, a malformed item.
    assert "'oops' is not KEY=VALUE" in msg
    with pytest.raises(UserError) as err:
        sweep_plan(tmp_path / "c", budgets=[1e14], models=SMOLLM2, methods=["full", "lora"],
                   settings=["rnak=4", "rank=0"])
    msg = str(err.value)
    assert "rnak" in msg and "lora: rank" in msg and "lora(rank=0)" in msg and "rank must be a positive integer" in msg


# ---- seeds ----------------------------------------------------------------------------------------------


def test_seeds_repeat_chosen_points_spread_over_budgets_and_methods(tmp_path):
    budgets = [1e13, 1e14, 3e14]
    points = sweep_plan(tmp_path, budgets=budgets, models=SMOLLM2, methods=["full", "lora", "freeze"],
                        seeds=[0, 1, 2], seed_points=3)
    base = [p for p in points if p.seed == 0]
    extra = [p for p in points if p.seed != 0]
    assert len(extra) == 2 * 3 and {p.seed for p in extra} == {1, 2}
    # Every grid point once with the first seed, first in the manifest (a half-run sweep covers the grid).
    assert points[:len(base)] == base and all(p.name.endswith("_seed0") for p in base)
    repeated = {(p.budget, p.model, p.method) for p in extra}
    assert len(repeated) == 3 and {b for b, _, _ in repeated} == set(budgets)
    assert len({m for _, _, m in repeated}) == 3  # three budgets and three methods, not one method thrice
    # Without laws the middle size is repeated: 1e13 buys too few steps on l30, so l8 of (l4, l8, l15).
    assert all(model == "smollm2-135m-l8" for _, model, _ in repeated)
    for p in extra:
        twin = next(q for q in base if (q.budget, q.model, q.method, q.setting) == (p.budget, p.model, p.method,
                                                                                      p.setting))
        assert p.name == twin.name[: -len("_seed0")] + f"_seed{p.seed}" and p.examples == twin.examples
        config = yaml.safe_load((tmp_path / p.config).read_text())
        # A seed changes the initialisation of what trains and the data order.
        assert config["seed_everything"] == config["data"]["seed"] == p.seed
        assert config["trainer"]["default_root_dir"] == f"runs/{p.name}"
    assert load_manifest(tmp_path) == points
    manifest = yaml.safe_load((tmp_path / "sweep.yaml").read_text())
    assert manifest["design"]["seeds"] == [0, 1, 2] and manifest["design"]["seed_points"] == 3
    # Without --seed-points every point runs with every seed.
    all_seeds = sweep_plan(tmp_path / "all", budgets=[1e14], models=SMOLLM2, methods=["full"], seeds=[3, 4])
    assert sorted((p.model, p.seed) for p in all_seeds) == sorted((p.model, s) for p in all_seeds[:4] for s in (3, 4))
    # The dry run lists every seeded point.
    outcome = run_sweep(tmp_path, dry_run=True)
    assert outcome["pending"] == [p.name for p in points]


def test_plans_without_seeds_keep_their_names_and_seed(tmp_path):
    (p, *_) = sweep_plan(tmp_path, budgets=[1e14], models=SMOLLM2, methods=["full"])
    assert p.seed is None and "seed" not in p.name
    config = yaml.safe_load((tmp_path / p.config).read_text())
    assert config["seed_everything"] == 0 and "seed" not in config["data"]


@pytest.mark.parametrize("kwargs, needle", [
    ({"seeds": [0, 0]}, "distinct"),
    ({"seeds": [0], "seed_points": 2}, "two or more --seeds"),
    ({"seeds": [0, 1], "seed_points": 0}, "two or more --seeds and a count of 1"),
    ({"focus": 1}, "focus needs a laws file"),
])
def test_bad_design_options_are_one_clear_error(tmp_path, kwargs, needle):
    with pytest.raises(UserError, match=needle):
        sweep_plan(tmp_path, budgets=[1e14], models=SMOLLM2, methods=["full"], **kwargs)
    assert not (tmp_path / "sweep.yaml").exists()


# ---- focus ----------------------------------------------------------------------------------------------


def _bowl_laws(path: Path) -> LawsFile:
    """A law whose iso-FLOP minimum sits on a middle size: A/N^a + B/D^b with comparable terms."""
    law = Law("full", {}, "chinchilla", {"E": 1.0, "A": 400.0, "alpha": 0.34, "B": 25.0, "beta": 0.34},
              range={"N": [1e6, 1e8], "D": [1e2, 1e6], "flops": [1e12, 1e15]})
    laws = LawsFile([law], provenance={"tokens_per_example": TOKENS})
    save_laws(laws, path)
    return laws


def test_focus_keeps_the_sizes_around_each_budgets_predicted_optimum(tmp_path):
    laws = _bowl_laws(tmp_path / "laws.yaml")
    models = resolve_models(SMOLLM2)
    budgets = [3e13, 1e14, 3e14]
    full = sweep_plan(tmp_path / "all", budgets=budgets, models=SMOLLM2, methods=["full", "lora"], min_steps=1)
    points = sweep_plan(tmp_path / "f", budgets=budgets, models=SMOLLM2, methods=["full", "lora"], min_steps=1,
                        laws=tmp_path / "laws.yaml", focus=0, seeds=[0, 1], seed_points=len(budgets))
    order = [m.name for m in sorted(models, key=lambda m: m.counts.non_embedding)]
    for budget in budgets:
        candidates = [p for p in full if p.budget == budget and p.method == "full"]
        predicted = {p.model: laws.laws[0].predict(next(m for m in models if m.name == p.model).counts.non_embedding,
                                                   p.examples) for p in candidates}
        best = min(predicted, key=predicted.get)
        kept = [p.model for p in points if p.budget == budget and p.method == "full" and p.seed == 0]
        assert kept == [best]  # focus 0: the optimum alone
        # The repeated seeds go to the predicted optima.
        assert [p.model for p in points if p.budget == budget and p.method == "full" and p.seed == 1] in ([best], [])
        # LoRA has no law in the file: every size kept.
        assert sorted(p.model for p in points if p.budget == budget and p.method == "lora" and p.seed == 0) == sorted(
            p.model for p in full if p.budget == budget and p.method == "lora")
    assert len([p for p in points if p.seed == 1]) == len(budgets)
    manifest = yaml.safe_load((tmp_path / "f" / "sweep.yaml").read_text())
    assert any("from the predicted optimum" in s for s in manifest["skipped"])
    # focus 1: the optimum and one size on each side.
    wider = sweep_plan(tmp_path / "w", budgets=[1e14], models=SMOLLM2, methods=["full"], min_steps=1,
                       laws=tmp_path / "laws.yaml", focus=1)
    best = next(p.model for p in points if p.budget == 1e14 and p.method == "full")
    i = order.index(best)
    assert sorted(p.model for p in wider) == sorted(order[max(0, i - 1):i + 2])


def test_sweep_plan_help_documents_the_design_options(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "lightning_embed.cli", "sweep", "plan", "--help"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    for flag in ("--seeds", "--seed-points", "--laws", "--focus", "--settings", "iso-FLOP minimum"):
        assert flag in text
    bad = subprocess.run([sys.executable, "-m", "lightning_embed.cli.app", "sweep", "plan", str(tmp_path / "x"),
                          "--budgets", "1e14", "--seeds", "1", "1"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    assert "distinct" in bad.stderr and not (tmp_path / "x").exists()


def test_a_failed_overwrite_keeps_the_old_plan(tmp_path):
    points = sweep_plan(tmp_path, budgets=[1e14], models=SMOLLM2, methods=["full"])
    with pytest.raises(UserError, match="no grid point buys enough steps"):
        sweep_plan(tmp_path, budgets=[1e9], models=SMOLLM2, methods=["full"], overwrite=True)
    assert load_manifest(tmp_path) == points and all((tmp_path / p.config).is_file() for p in points)
