"""Laws and laws files (lightning_embed/recipe/laws.py): predictions, extrapolation flags, round trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_embed.recipe import load_laws
from lightning_embed.recipe.laws import Law, LawsFile, save_laws


def test_laws_file_round_trip_and_provenance(fitted, tmp_path):
    runs, laws = fitted
    again = load_laws(laws.path)
    assert [law.to_dict() for law in again.laws] == [law.to_dict() for law in laws.laws]
    prov = again.provenance
    assert prov["runs_files"][0]["path"] == str(runs) and len(prov["runs_files"][0]["sha256"]) == 64
    assert prov["accounting"] == ["paper"] and prov["tokens_per_example"] == 78.0
    assert again.laws[0].hparams == {"batch_size": 32, "learning_rate": 1e-4, "temperature": 0.025}
    text = Path(laws.path).read_text()
    assert text.startswith("# lightning-embed scaling laws") and "schema_version: 2" in text


def test_laws_objects_predict_and_flag_extrapolation(tmp_path):
    law = Law("full", {}, "chinchilla", {"E": 0.5, "A": 10.0, "alpha": 0.5, "B": 10.0, "beta": 0.5},
              range={"N": [1e6, 1e8], "D": [1e4, 1e6]})
    assert law.predict(1e6, 1e4) == pytest.approx(0.5 + 0.01 + 0.1)
    assert law.extrapolation(2e8, 1e5) is None  # within the factor of 4
    assert "N=1e+09 is outside the fitted N range" in law.extrapolation(1e9, 1e5)
    path = save_laws(LawsFile([law]), tmp_path / "l.yaml")
    assert load_laws(path).laws[0].coefficients == law.coefficients
