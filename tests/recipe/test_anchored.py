"""The anchored laws (per-model, the default, and anchored): they start at L0(N), are recovered from runs of a
known law, and know how sure they are."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lightning_embed.errors import UserError
from lightning_embed.recipe import laws_baseline, laws_fit, load_laws
from lightning_embed.recipe.baseline import read_initial_losses
from tests.recipe.laws_synthetic import MODELS, SHARED, K, l0, records, true_loss, write


@pytest.fixture(scope="module")
def anchored(tmp_path_factory):
    """Runs of three methods with 1% noise, fitted once with 60 bootstrap resamples: (runs, laws)."""
    root = tmp_path_factory.mktemp("anchored")
    runs = write(root / "runs.jsonl", records(noise=0.01))
    return runs, laws_fit([runs], root / "laws.yaml", bootstrap=60, quiet=True)


def test_fit_recovers_the_known_law(anchored):
    """1% noise on ~60 runs: the shared exponent within 0.1, the floor within 5%, and the per-model data
    scales follow the true N^a (the per-model form can represent it: log S is linear in log N)."""
    _, laws = anchored
    assert {law.form for law in laws.laws} == {"per-model"}  # chosen by itself: the runs carry L0
    n = np.array([m.counts.non_embedding for m in MODELS], dtype=float)
    scale = laws.data_scale
    assert scale is not None and scale.n == pytest.approx(sorted(n)) and scale.log_scale[0] == 0.0
    assert np.allclose(scale.log_scale, SHARED["a"] * np.log(np.sort(n) / n.min()), atol=0.15)
    for law in laws.laws:
        c = law.coefficients
        assert set(c) == {"E", "k", "beta"} and abs(c["beta"] - SHARED["beta"]) < 0.1, law.label
        assert c["E"] == pytest.approx(SHARED["E"], rel=0.05)
        assert c["k"] == pytest.approx(K[law.method] * n.min() ** SHARED["a"], rel=0.35), law.label
        assert law.quality["loo_rmse_log"] < 0.02 and law.shared == ["E", "beta", "S"]
        d = np.full_like(n, 3e3)
        truth = true_loss(law.method, n, d)
        assert np.linalg.norm(law.predict(n, d) - truth) / np.linalg.norm(truth) < 0.02


def test_anchored_form_recovers_the_exponent(tmp_path):
    """--form anchored (S = N^a): the exponents within 0.1, each k within 35% (k and a trade off)."""
    runs = write(tmp_path / "runs.jsonl", records(noise=0.01, form="anchored"))
    laws = laws_fit([runs], tmp_path / "laws.yaml", form="anchored", bootstrap=0, quiet=True)
    assert laws.data_scale is None and "data_scale" not in Path(laws.path).read_text()
    for law in laws.laws:
        c = law.coefficients
        assert abs(c["a"] - SHARED["a"]) < 0.1 and abs(c["beta"] - SHARED["beta"]) < 0.1, law.label
        assert c["k"] == pytest.approx(K[law.method], rel=0.35), law.label
        assert law.shared == ["E", "a", "beta"]


def test_per_model_form_knows_only_the_measured_sizes(anchored):
    """S is interpolated between measured models and unknown outside them: the law says so."""
    _, laws = anchored
    law = laws.laws[0]
    n = sorted(laws.data_scale.n)
    assert law.extrapolation(n[0], 1e3) is None and law.extrapolation((n[0] * n[1]) ** 0.5, 1e3) is None
    assert "outside" in law.extrapolation(n[-1] * 2, 1e3)


def test_per_model_form_needs_two_runs_of_each_size(tmp_path):
    recs = records(noise=0.01)
    smallest = min(r.non_embedding_params for r in recs)
    first = next(r for r in recs if r.non_embedding_params == smallest)
    recs = [r for r in recs if r.non_embedding_params != smallest or r is first]
    runs = write(tmp_path / "runs.jsonl", recs)
    with pytest.raises(UserError, match="2 runs or more of each.*--form anchored"):
        laws_fit([runs], tmp_path / "laws.yaml", form="per-model", bootstrap=0, quiet=True)
    # Left to choose, laws fit takes the anchored form for such runs.
    assert {law.form for law in laws_fit([runs], tmp_path / "l.yaml", bootstrap=0, quiet=True).laws} == {"anchored"}


def test_law_starts_at_l0_and_never_leaves_the_band(anchored):
    _, laws = anchored
    n = np.array([m.counts.non_embedding for m in MODELS], dtype=float)
    for law in laws.laws:
        at_zero = law.predict(n, np.full_like(n, 1e-3))
        assert np.allclose(at_zero, l0(n), rtol=1e-3)  # D = 0 gives the untrained loss
        huge = law.predict(n, np.full_like(n, 1e15))
        assert np.all(huge >= law.coefficients["E"]) and np.all(huge < at_zero)
        samples = law.predict_samples(n[0], np.array([1e-3, 1e3, 1e15]))
        assert samples.shape == (60, 3)
        assert np.all(samples <= l0(n[0]) * (1 + 1e-9)) and np.all(samples >= law.coefficients["E"])


def test_bootstrap_interval_covers_the_truth(anchored):
    """The 80% interval of the resampled fits covers the true loss at most points inside the fitted range."""
    _, laws = anchored
    covered = total = 0
    for law in laws.laws:
        for m in MODELS:
            for d in (1e3, 1e4):
                n = m.counts.non_embedding
                lo, hi = np.quantile(law.predict_samples(n, d), [0.1, 0.9])
                total += 1
                covered += lo <= float(true_loss(law.method, n, d)) <= hi
    assert covered / total >= 0.6, (covered, total)


def test_samples_are_aligned_across_laws_and_round_trip(anchored, tmp_path):
    _, laws = anchored
    again = load_laws(laws.path)
    first = again.laws[0]
    assert first.samples == pytest.approx(np.asarray(laws.laws[0].samples), rel=1e-5)
    # One resample per row, shared coefficients equal in every law's row of it.
    e = np.array([[row[0] for row in law.samples] for law in again.laws])
    assert np.allclose(e, e[0], rtol=1e-5)
    assert again.initial_loss is not None and again.bootstrap == {"resamples": 60, "seed": 0, "unit": "run"}
    # The data scales of each resample travel with it: the sampled predictions survive the round trip.
    assert len(again.data_scale.samples) == 60
    n = again.data_scale.n[1]
    assert np.allclose(first.predict_samples(n, 1e3), laws.laws[0].predict_samples(n, 1e3), rtol=1e-4)


def test_initial_losses_file_stands_in_for_records_without_l0(tmp_path):
    runs = write(tmp_path / "runs.jsonl", records(noise=0.0, with_l0=False))
    rows = [{"backbone": m.backbone, "non_embedding_params": m.counts.non_embedding,
             "initial_val_loss": float(l0(m.counts.non_embedding))} for m in MODELS]
    table = tmp_path / "l0.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(read_initial_losses(table)) == len(MODELS)
    laws = laws_fit([runs], tmp_path / "laws.yaml", initial_losses=table, bootstrap=0, quiet=True)
    assert {law.form for law in laws.laws} == {"per-model"}
    assert laws.provenance["initial_losses"]["path"] == str(table)
    assert max(law.quality["rmse_log"] for law in laws.laws) < 1e-3  # exact data, exact fit
    # Without L0 the default falls back to chinchilla; asking for anchored is a clear error.
    assert {law.form for law in laws_fit([runs], tmp_path / "c.yaml", bootstrap=0, quiet=True).laws} == {"chinchilla"}
    with pytest.raises(UserError, match="needs L0.*--initial-losses"):
        laws_fit([runs], tmp_path / "a.yaml", form="anchored", bootstrap=0, quiet=True)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"backbone": "x"}\n')
    with pytest.raises(UserError, match="line 1 is not a `laws baseline` row"):
        laws_fit([runs], tmp_path / "b.yaml", initial_losses=bad, quiet=True)


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lightning_embed.cli.app", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def test_laws_file_of_another_schema_version_is_one_line_exit_2(anchored, tmp_path):
    _, laws = anchored
    old = tmp_path / "old.yaml"
    old.write_text(Path(laws.path).read_text().replace("schema_version: 2", "schema_version: 1"))
    proc = _cli("recipe", "1e15", "--laws", old, "--models", "pythia")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "schema_version 1" in line and "reads schema_version 2" in line and "laws fit" in line


def test_baseline_refuses_bad_arguments_before_measuring(tmp_path):
    out = tmp_path / "l0.jsonl"
    out.write_text("keep me\n")
    with pytest.raises(UserError, match="does not exist.*exists; pass --overwrite"):
        laws_baseline([tmp_path / "missing.yaml"], "pythia-14m", output=out)
    assert out.read_text() == "keep me\n"


def test_baseline_command_measures_l0_like_validate(tiny_backbones, tmp_path):
    """`laws baseline` end to end on a tiny model folder: one row, the loss `validate` reports."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": f"add {i} to x", "positive": f"def f(x):\n    return x + {i}"})
                             + "\n" for i in range(24)))
    config = tmp_path / "base.yaml"
    config.write_text(f"seed_everything: 0\nmodel:\n  attn_implementation: eager\ndata:\n  train: {pairs}\n"
                      f"  val: {pairs}\n  batch_size: 8\ntrainer:\n  accelerator: cpu\n  precision: 32-true\n")
    out = tmp_path / "l0.jsonl"
    proc = _cli("laws", "baseline", config, "--models", tiny_backbones["gpt_neox"], "-o", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "config.yaml").exists()  # a measurement leaves no LightningCLI config behind
    (row,) = read_initial_losses(out)
    assert row["val_examples"] == 24 and row["val_batch_size"] == 8 and row["non_embedding_params"] > 0
    validate = _cli("validate", "--config", config, "--model.backbone", tiny_backbones["gpt_neox"],
                    "--trainer.logger", "false")
    assert validate.returncode == 0, validate.stderr
    assert f"{row['initial_val_loss']:.4f}"[:5] in validate.stdout  # the same held-out loss
    again = _cli("laws", "baseline", config, "--models", tiny_backbones["gpt_neox"], "-o", out)
    assert again.returncode == 2 and "exists; pass --overwrite" in again.stderr


def test_laws_check_reports_the_interval_and_whether_runs_fall_inside(anchored, capsys):
    from lightning_embed.recipe import laws_check

    runs, laws = anchored
    report = laws_check(laws.path, [runs])
    data = report.to_dict()
    assert data["with_interval"] == len(report.checks) > 0
    assert data["inside_interval"] == sum(c.inside for c in report.checks)
    assert all(c.interval[0] <= c.interval[1] for c in report.checks)
    assert "inside the 80% interval" in capsys.readouterr().out
