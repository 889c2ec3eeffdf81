"""The recipe knows what it knows: intervals, P(winner better), ties, refusal outside 4x, data repeats."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from lightning_embed.errors import UserError
from lightning_embed.recipe import laws_fit, recipe, solve
from lightning_embed.recipe.catalogue import load_shipped_family
from lightning_embed.recipe.decide import TIE_PROBABILITY
from tests.recipe.laws_synthetic import MODELS, records, write


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    runs = write(root / "runs.jsonl", records(noise=0.01))
    return laws_fit([runs], root / "laws.yaml", bootstrap=40, quiet=True)


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lightning_embed.cli.app", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def test_winner_has_an_interval_and_alternatives_a_probability(fitted):
    result = solve(1e16, fitted, list(MODELS))
    w = result.winner
    assert w.interval is not None and w.interval[0] <= w.loss <= w.interval[1]
    others = [c for c in result.candidates if c is not w and c.loss is not None]
    assert all(c.p_winner_better is not None and 0 <= c.p_winner_better <= 1 for c in others)
    # The worst candidate is surely worse than the winner.
    assert max(others, key=lambda c: c.loss).p_winner_better > 0.99
    data = result.to_dict()
    assert data["winner"]["interval"] == list(w.interval) and data["winner"]["interval_level"] == 0.8
    assert {"tie", "tied", "extrapolate", "max_passes"} <= set(data)
    assert all("p_winner_better" in c for c in data["candidates"])


def test_tie_when_the_laws_cannot_separate_the_top_options(fitted):
    law = next(x for x in fitted.laws if x.method == "lora")
    twin = yaml.safe_load(yaml.safe_dump(law.to_dict()))
    import copy

    same = copy.deepcopy(fitted)
    clone = copy.deepcopy(law)
    clone.setting = {"rank": 17}  # a second law with the same predictions: indistinguishable
    same.laws = [law, clone]
    # Rank 17 costs a little more per example, so it buys a little less data: every refit ranks it a hair
    # worse, a difference no run could measure. With the runs' seed noise known, that is a tie.
    same.provenance = {**same.provenance, "seed_noise": {"points": 6, "sd_log": 0.008}}
    result = solve(1e16, same, list(MODELS))
    assert result.tie and result.winner in result.tie and len(result.tie) >= 2
    sizes = [c.model.counts.non_embedding for c in result.tie]
    assert sizes == sorted(sizes)  # cheapest to run first
    assert all(c.p_winner_better < TIE_PROBABILITY or abs(np.log(c.loss / result.winner.loss)) < 0.008
               for c in result.tie if c is not result.winner)
    # Without a measured seed noise only the bootstrap decides: far apart sizes are not tied.
    same.provenance = {**same.provenance, "seed_noise": {"points": 0, "sd_log": None}}
    assert all(c.model.name != "pythia-1b" for c in solve(1e16, same, list(MODELS)).tie)
    assert twin["method"] == "lora"
    # Laws far apart are no tie.
    apart = copy.deepcopy(fitted)
    apart.laws = [x for x in fitted.laws if x.method in ("lora", "freeze")]
    only = [m for m in MODELS if m.name == "pythia-160m"]
    assert not solve(1e16, apart, only).tie


def test_refuses_far_outside_and_marks_with_extrapolate(fitted, tmp_path):
    big = [m for m in load_shipped_family("pythia").models if m.name == "pythia-12b"]
    refusal = r"more than 4x outside what its law was fitted on.*N range \[4\.74e\+06, 8\.06e\+08\].*--extrapolate"
    with pytest.raises(UserError, match=refusal):
        solve(1e21, fitted, big)
    result = solve(1e21, fitted, big, extrapolate=True)
    assert result.winner.extrapolation and "outside the fitted N range" in result.winner.extrapolation
    assert all(c.extrapolation for c in result.candidates if c.loss is not None)
    proc = _cli("recipe", "1e21", "--laws", fitted.path, "--models", "pythia-12b")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    config = tmp_path / "fit.yaml"
    proc = _cli("recipe", "1e21", "--laws", fitted.path, "--models", "pythia-12b", "--extrapolate",
                "--write-config", config)
    assert proc.returncode == 0, proc.stderr
    assert "★" not in proc.stdout and "extrapolated" in proc.stdout
    text = config.read_text()
    assert text.startswith("# CAVEAT: extrapolated.") and yaml.safe_load(text)["model"]["backbone"]
    # Inside the range: no refusal, no caveat, the star.
    inside = tmp_path / "in.yaml"
    names = ",".join(m.name for m in MODELS)
    proc = _cli("recipe", "1e16", "--laws", fitted.path, "--models", names, "--write-config", inside)
    assert proc.returncode == 0 and "★" in proc.stdout and "CAVEAT" not in inside.read_text()


def test_model_without_measured_l0_is_extrapolation(fitted):
    qwen = [m for m in load_shipped_family("qwen2.5").models][:1]
    with pytest.raises(UserError, match="L0 was measured on"):
        solve(1e16, fitted, qwen)


def test_candidates_that_repeat_data_rank_after_those_that_do_not(fitted):
    free = solve(1e16, fitted, list(MODELS))
    assert free.winner.repeats is None
    available = int(free.winner.examples / 2)  # the unconstrained winner would need two passes
    result = solve(1e16, fitted, list(MODELS), available_examples=available, max_passes=1.5)
    assert result.winner.repeats is None and result.winner.examples <= 1.5 * available
    ranked = [c for c in result.candidates if c.loss is not None]
    flags = [c.repeats is not None for c in ranked]
    assert any(flags) and flags == sorted(flags)  # every repeating candidate after every fresh one
    flagged = next(c for c in ranked if c.repeats)
    assert flagged.repeats == pytest.approx(flagged.examples / available)
    names = ",".join(m.name for m in MODELS)
    proc = _cli("recipe", "1e16", "--laws", fitted.path, "--models", names, "--available-examples", str(available),
                "--json")
    data = json.loads(proc.stdout)
    assert data["available_examples"] == available and any(c["repeats_data"] for c in data["candidates"])


@pytest.mark.parametrize("args, message", [
    (["--max-passes", "0"], "--max-passes must be a positive number"),
    (["--max-passes", "-1"], "--max-passes must be a positive number"),
    (["--available-examples", "0"], "--available-examples must be a positive integer"),
])
def test_bad_limits_are_one_line(fitted, args, message):
    proc = _cli("recipe", "1e16", "--laws", fitted.path, *args)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_shipped_laws_refuse_pythia_at_1e18_and_answer_with_extrapolate(tmp_path):
    proc = _cli("recipe", "1e18", "--models", "pythia", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    error = [line for line in proc.stderr.strip().splitlines() if "error" in line]
    assert len(error) == 1 and "--extrapolate" in error[0] and "fitted N range [1.42e+07, 1.06e+08]" in error[0]
    config = tmp_path / "x.yaml"
    proc = _cli("recipe", "1e18", "--models", "pythia", "--extrapolate", "--write-config", config, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "extrapolated" in proc.stdout and "repeats data" in proc.stdout
    assert config.read_text().startswith("# CAVEAT: extrapolated.")


def test_predictions_stay_between_floor_and_l0(fitted):
    result = solve(1e16, fitted, list(MODELS))
    for c in result.candidates:
        if c.loss is None:
            continue
        l0 = float(c.law.initial(c.model.counts.non_embedding))
        assert c.law.coefficients["E"] <= c.loss <= l0
        assert c.law.coefficients["E"] <= c.interval[0] <= c.interval[1] <= l0 + 1e-12
    assert np.isfinite([c.loss for c in result.candidates if c.loss is not None]).all()


def test_train_source_is_counted_for_repeats(fitted, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": f"q{i}", "positive": f"d{i}"}) + "\n" for i in range(50)))
    result = recipe(1e16, laws=fitted.path, models=",".join(m.name for m in MODELS), train=str(pairs))
    assert result.available_examples == 50 and result.winner.repeats == pytest.approx(result.winner.examples / 50)
    assert "Every candidate repeats data" in capsys.readouterr().out


def test_the_p_legend_appears_only_beside_a_p_in_the_table(fitted):
    from io import StringIO

    from rich.console import Console

    from lightning_embed.recipe.decide import CLOSE_PROBABILITY
    from lightning_embed.recipe.solve import render

    def printed(result) -> str:
        out = StringIO()
        render(result, Console(file=out, width=200))
        return out.getvalue()

    result = solve(1e16, fitted, list(MODELS))
    for c in result.candidates:  # every alternative surely worse: no P in the notes, so no legend
        if c is not result.winner:
            c.p_winner_better = 1.0
    assert "P=" not in printed(result) and "P: the share" not in printed(result)
    close = next(c for c in result.candidates if c is not result.winner)
    close.p_winner_better = CLOSE_PROBABILITY / 2
    text = printed(result)
    assert f"P={CLOSE_PROBABILITY / 2:.2f}" in text and "P: the share" in text
