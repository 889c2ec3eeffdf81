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


def _per_model_file(tmp_path, **scale) -> Path:
    from lightning_embed.recipe.laws import DataScale, InitialLoss

    law = Law("lora", {"rank": 16}, "per-model", {"E": 1.0, "k": 100.0, "beta": 1.0},
              range={"N": [1e7, 1e8], "D": [1e2, 1e4]}, samples=[[1.0, 90.0, 1.0], [1.0, 110.0, 1.0]])
    laws = LawsFile([law], initial_loss=InitialLoss([1e7, 1e8, 1e9], [2.5, 3.0, 3.5]),
                    data_scale=DataScale([1e7, 1e8], [0.0, -1.0], [[0.0, -0.9], [0.0, -1.1]]))
    path = save_laws(laws, tmp_path / "l.yaml")
    if scale:
        import yaml

        data = yaml.safe_load(path.read_text())
        data["data_scale"] = {**data["data_scale"], **scale}
        path.write_text(yaml.safe_dump(data))
    return path


def test_per_model_law_interpolates_its_data_scale_like_l0(tmp_path):
    law = load_laws(_per_model_file(tmp_path)).laws[0]
    # At the larger model S = e^-1: D_c = 100 / e. Half-way from L0 = 3.0 to E = 1.0 at D = D_c.
    assert law.predict(1e8, 100.0 / 2.718281828459045) == pytest.approx(2.0, rel=1e-6)
    # Half-way in log N: log S = -0.5 and L0 = 2.75.
    assert law.predict(10**7.5, 100.0 * 2.718281828459045**-0.5) == pytest.approx(1.875, rel=1e-6)
    # Each bootstrap sample uses its own scales: sample 1 at N=1e8 has k=110, log S=-1.1.
    samples = law.predict_samples(1e8, [10.0, 1e3])
    assert samples.shape == (2, 2)
    dc = 110.0 * 2.718281828459045**-1.1
    assert samples[1, 0] == pytest.approx(1.0 + 2.0 / (1.0 + 10.0 / dc), rel=1e-6)
    # L0 is known at 3e8 (measured up to 1e9) but S is not: the law says which is missing.
    assert "outside the model sizes the per-model law was fitted on" in law.extrapolation(3e8, 1e3)


@pytest.mark.parametrize("scale, message", [
    ({"log_S": [0.0]}, "data_scale needs ascending positive N"),
    ({"N": [1e8, 1e7]}, "data_scale needs ascending positive N"),
    ({"samples": [[0.0]]}, "data_scale needs ascending positive N"),
])
def test_bad_data_scale_is_one_clear_error(tmp_path, scale, message):
    from lightning_embed.errors import UserError

    with pytest.raises(UserError, match=message):
        load_laws(_per_model_file(tmp_path, **scale))


def test_per_model_law_without_data_scale_is_refused(tmp_path):
    import yaml

    from lightning_embed.errors import UserError

    path = _per_model_file(tmp_path)
    data = yaml.safe_load(path.read_text())
    del data["data_scale"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match="per-model form needs the file's data_scale"):
        load_laws(path)
