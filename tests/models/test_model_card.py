"""Model cards of exports: sentence-transformers-style metadata (base model by hub id, license, tags,
model-index with the held-out metrics and their size), provenance, training, hardware and versions."""

from __future__ import annotations

import yaml

from lightning_embed.models.export import export_checkpoint
from lightning_embed.models.model_card import base_model, model_card


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---", 2)[1])


def test_export_card_has_metadata_metrics_and_their_size(lora_run, tmp_path):  # noqa: F811
    import torch

    out = export_checkpoint(lora_run, tmp_path / "model")
    card = (out / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["library_name"] == "sentence-transformers" and meta["pipeline_tag"] == "sentence-similarity"
    assert {"sentence-transformers", "lightning-embed", "tuning-lora"} <= set(meta["tags"])
    assert "base_model" not in meta  # a local folder is not a hub model

    state = next(s for s in torch.load(lora_run, weights_only=True)["callbacks"].values() if "initial" in s)
    held_out = state["initial"][1]
    assert held_out == 32  # the fixture validates on its 32 training pairs
    [index] = meta["model-index"]
    assert index["name"] == "model"
    [result] = index["results"]
    assert f"({held_out} pairs)" in result["dataset"]["name"] and result["dataset"]["split"] == "validation"
    scores = {m["type"]: m["value"] for m in result["metrics"]}
    assert abs(scores["cosine_ndcg@10"] - state["val_metrics"]["val/ndcg@10"]) < 1e-4
    assert f"on {held_out} held-out pairs" in card
    assert f"| hardware | {state['hardware']} |" in card and "CPU:" in state["hardware"]
    assert "## Framework versions" in card and "- torch: " in card
    assert "training FLOP" in card and "lora (rank=4" in card


def test_bundled_aliases_name_their_hub_model_license_and_provenance():
    smol = base_model("smollm2-135m")
    assert smol["hub_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and smol["license"] == "apache-2.0"
    assert "Q4_1 GGUF" in smol["provenance"] and "dequantised" in smol["provenance"]
    assert base_model("all-minilm-l6-v2")["hub_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert base_model("BAAI/bge-small-en-v1.5")["hub_id"] == "BAAI/bge-small-en-v1.5"


def test_quickstart_style_card():
    hparams = {"backbone": "smollm2-135m", "tuning": {"name": "full"}, "query_max_length": 32,
               "document_max_length": 96, "query_prompt": "", "document_prompt": "", "pooling": "mean"}
    info = {"config": {"data": {"train": "builtin:stdlib-code", "batch_size": 16}}, "val_examples": 256,
            "metrics": {"val/loss": 0.9, "val/ndcg@10": 0.61}, "global_step": 60}
    card = model_card(hparams, info, 576, 96, name="quickstart")
    meta = _front_matter(card)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["license"] == "apache-2.0"
    assert meta["base_model_relation"] == "finetune"
    [result] = meta["model-index"][0]["results"]
    assert result["dataset"]["name"] == "builtin:stdlib-code (held-out split) (256 pairs)"
    assert [m["type"] for m in result["metrics"]] == ["cosine_ndcg@10"]  # the loss is not a retrieval metric
    assert "dequantised to fp32 from the Q4_1 GGUF" in card and "## Training data" in card
    assert "on 256 held-out pairs of builtin:stdlib-code" in card
