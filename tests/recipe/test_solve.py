"""``recipe`` (lightning_embed/recipe/solve.py): the solver picks the true optimum of synthetic laws, writes configs,
refuses bad input and far extrapolation, and answers without the training stack."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from lightning_embed.errors import UserError
from lightning_embed.recipe import ExtrapolationWarning, laws_fit, load_laws, recipe, solve
from lightning_embed.recipe.catalogue import load_shipped_family
from lightning_embed.recipe.costs import paper_flops_per_token, trainable_params
from lightning_embed.recipe.laws import save_laws
from tests.recipe.runs_synthetic import PYTHIA_TRAIN, TRUE, chinchilla_loss


def _true_optimum(budget, models):
    """The (method setting, model) the true laws prefer, by brute force, and every candidate's true loss."""
    out = {}
    for key in TRUE:
        method, setting = key[0], dict(key[1])
        for m in models:
            n_t = trainable_params(m.counts, method, setting)
            examples = int(budget // (paper_flops_per_token(method, m.counts.non_embedding, n_t) * 78))
            if examples >= 32:
                out[(method, key[1], m.name)] = chinchilla_loss(key, m.counts.non_embedding, examples)
    return min(out, key=out.get), out


@pytest.mark.parametrize("budget", [3e15, 3e16, 2e17, 1e18])
def test_recipe_picks_the_true_optimum(fitted, budget):
    _, laws = fitted
    models = load_shipped_family("pythia").models[:PYTHIA_TRAIN]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExtrapolationWarning)  # all within the fitted range
        result = solve(budget, laws, models)
    best, true = _true_optimum(budget, models)
    w = result.winner
    assert (w.law.method, tuple(sorted(w.law.setting.items())), w.model.name) == best
    assert w.loss == pytest.approx(true[best], rel=0.01)
    # The study's shape: full fine-tuning below the crossover, LoRA above.
    assert w.law.method == ("full" if budget < 1e17 else "lora")


def test_rule_paper_and_json(fitted, tmp_path, capsys, monkeypatch):
    _, laws = fitted
    monkeypatch.chdir(tmp_path)
    low = recipe(3e16, laws=laws.path, rule="paper", json=True)
    data = json.loads(capsys.readouterr().out)
    assert data["rule"]["method"] == "full" and data["rule"]["crossover_flops"] == 9.06e16
    assert data["winner"]["label"] == low.winner.law.label and data["budget"] == 3e16
    assert len(data["candidates"]) == len(low.candidates) and data["warnings"] == []
    high = recipe(5e17, laws=laws.path, rule="paper")
    out = capsys.readouterr().out
    assert high.rule_method == "lora" and high.rule.law.method == "lora" and "Algorithm 1" in out
    assert "★" in out and "pythia" in out  # the default family is the one the laws were fitted on


def test_write_config(fitted, tmp_path):
    _, laws = fitted
    out = tmp_path / "best.yaml"
    result = recipe(5e17, laws=laws.path, write_config=out)
    config = yaml.safe_load(out.read_text())
    assert out.read_text().startswith("# Budget 5e+17 FLOP")
    model = config["model"]
    assert model["backbone"] == result.winner.model.backbone and model["tuning"] == {"name": "lora", "rank": 16}
    assert model["learning_rate"] == 1e-4 and model["temperature"] == 0.025  # the law's runs' settings
    assert "callbacks" not in config["trainer"]
    assert config["flops"] == {"max_flops": 5e17, "accounting": "paper", "runs_file": "runs.jsonl"}
    assert config["data"] == {"train": "builtin:stdlib-code", "batch_size": 32}
    # Every key is an argument of what `fit` instantiates.
    import inspect

    from lightning_embed.data.datamodule import PairDataModule
    from lightning_embed.flops.callback import FlopCallback
    from lightning_embed.training.module import EmbeddingModule

    for cls, keys in ((EmbeddingModule, model), (PairDataModule, config["data"]), (FlopCallback, config["flops"])):
        assert set(keys) <= set(inspect.signature(cls.__init__).parameters), cls


def test_recipe_bad_inputs(fitted, tmp_path):
    _, laws = fitted
    with pytest.raises(UserError) as err:  # every problem at once
        recipe(-1.0, laws=tmp_path / "none.yaml", accounting="fast", query_tokens=0)
    msg = str(err.value)
    assert "--budget" in msg and "--accounting" in msg and "--query_tokens" in msg and "no laws file" in msg
    with pytest.raises(UserError, match="did you mean pythia"):
        recipe(1e17, laws=laws.path, models="pythai")
    with pytest.raises(UserError, match="less than one batch of 32 examples for every candidate"):
        recipe(1e9, laws=laws.path)
    other = tmp_path / "v3.yaml"
    other.write_text(Path(laws.path).read_text().replace("schema_version: 2", "schema_version: 3"))
    with pytest.raises(UserError, match="schema_version 3.*reads schema_version 2"):
        recipe(1e17, laws=other)


def test_far_extrapolation_is_refused_or_warned_with_the_range(fitted, capsys):
    _, laws = fitted
    big = [m for m in load_shipped_family("pythia").models if m.name == "pythia-12b"]
    with pytest.raises(UserError, match=r"outside the fitted N range \[1\.19e\+06, 1\.21e\+09\]"):
        solve(1e20, laws, big)
    with pytest.warns(ExtrapolationWarning, match=r"outside the fitted N range \[1\.19e\+06, 1\.21e\+09\]"):
        result = solve(1e20, laws, big, extrapolate=True)
    assert result.warnings and result.winner.extrapolation
    recipe(1e20, laws=laws.path, models="pythia-12b", extrapolate=True)  # a warning, not an error
    assert "warning:" in capsys.readouterr().err


def test_recipe_answers_without_importing_the_training_stack(fitted, tmp_path):
    """``lightning-embed recipe``, the light command, answers on every shipped family (24 models x 4 laws) in a
    fresh process that never imports torch, lightning or transformers (seconds of start-up on their own), nor
    scipy or matplotlib."""
    _, laws = fitted
    code = (
        "import json, sys\n"
        "from lightning_embed.cli.app import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "    code = 0\n"
        "except SystemExit as exit_:\n"
        "    code = exit_.code\n"
        "heavy = [m for m in ('torch', 'lightning', 'transformers', 'scipy', 'matplotlib') if m in sys.modules]\n"
        "print('CHILD', json.dumps({'code': code, 'heavy': heavy}), file=sys.stderr)\n"
    )
    args = ["recipe", "1e17", "--laws", str(laws.path), "--models", "all", "--rule", "paper", "--json"]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    child = json.loads(proc.stderr.split("CHILD")[-1])
    assert child == {"code": 0, "heavy": []}, proc.stderr[-3000:]
    answer = json.loads(proc.stdout)
    assert answer["budget"] == 1e17 and answer["rule"]["method"] in {"full", "lora"}
    assert answer["winner"]["label"] in {law.label for law in laws.laws} and len(answer["candidates"]) > 24


def test_recipe_falls_back_to_the_shipped_laws(tmp_path, monkeypatch, capsys):
    from lightning_embed.recipe.solve import SHIPPED_LAWS_FILE

    monkeypatch.chdir(tmp_path)  # no ./laws.yaml here
    result = recipe(1e14)
    assert "using the laws shipped" in capsys.readouterr().err
    shipped = load_laws(SHIPPED_LAWS_FILE)
    assert result.winner.law.label in {law.label for law in shipped.laws}
    assert shipped.provenance["description"] and shipped.provenance["runs_files"]
    assert {law.method for law in shipped.laws} == {"full", "lora", "freeze"}
    # The shipped run records are the ones the laws were fitted on (same bytes), and refit to the same laws.
    import hashlib

    (entry,) = shipped.provenance["runs_files"]
    runs = SHIPPED_LAWS_FILE.parent / entry["path"]
    assert hashlib.sha256(runs.read_bytes()).hexdigest() == entry["sha256"]
    assert "initial_losses" not in shipped.provenance  # every shipped run records its own L0
    refit = laws_fit([runs], tmp_path / "refit.yaml", bootstrap=0, quiet=True)
    assert {law.form for law in refit.laws} == {law.form for law in shipped.laws} == {"per-model"}
    for law in shipped.laws:
        again = next(x for x in refit.laws if x.label == law.label)
        assert again.quality["runs"] == law.quality["runs"]
        assert again.quality["rmse_log"] == pytest.approx(law.quality["rmse_log"], rel=1e-3)


def test_recipe_restricted_to_methods(fitted):
    _, laws = fitted
    result = recipe(1e16, laws=laws.path, models="pythia", methods=["lora"])  # full would win here
    assert {c.law.method for c in result.candidates} == {"lora"} and result.winner.law.method == "lora"
    with pytest.raises(UserError, match="no law for method.*qlora"):
        recipe(1e16, laws=laws.path, methods=["qlora"])


def test_recipe_sizes_examples_with_the_laws_measured_tokens(fitted, tmp_path):
    _, laws = fitted
    short = load_laws(laws.path)
    short.provenance["tokens_per_example"] = 39.0  # the runs' data had half the study's 78 tokens per example
    save_laws(short, tmp_path / "short.yaml")
    base = recipe(1e16, laws=laws.path, models="pythia-70m", methods=["full"])
    halved = recipe(1e16, laws=tmp_path / "short.yaml", models="pythia-70m", methods=["full"])
    assert halved.winner.examples == pytest.approx(2 * base.winner.examples, rel=0.02)
    explicit = recipe(1e16, laws=tmp_path / "short.yaml", models="pythia-70m", methods=["full"],
                      query_tokens=14, document_tokens=64)  # given lengths win
    assert explicit.winner.examples == base.winner.examples
