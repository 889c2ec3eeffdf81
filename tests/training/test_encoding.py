"""The encoding path: one object per module, chosen once, that encodes a batch and reports what it computed."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from lightning_embed.data.batches import PairExample
from lightning_embed.data.datamodule import PairDataModule
from lightning_embed.flops.callback import FlopCallback
from lightning_embed.flops.contract import CostedModule, EncodingReport
from lightning_embed.testing import assert_close_relative
from lightning_embed.training.encoding import PackedEncoding
from lightning_embed.training.module import EmbeddingModule

OPTIONS = {
    "packed": {"pack_sequences": True},
    "padded": {"pack_sequences": False},
    "gradcache": {"pack_sequences": "auto", "gradcache_chunk_size": 3},
    "split": {"pack_sequences": "auto", "split_by_length": True},
}


def _examples(n: int = 8) -> list[PairExample]:
    return [PairExample(" ".join(["word"] * (1 + (i * 5) % 9)) + f" q{i}",
                        " ".join(["tok"] * (2 + (i * 13) % 30)) + f" d{i}", (), i) for i in range(n)]


def _module(backbone: str, kind: str) -> EmbeddingModule:
    torch.manual_seed(0)
    return EmbeddingModule(backbone=backbone, query_max_length=16, document_max_length=40,
                           attn_implementation="eager", **OPTIONS[kind])


def test_each_option_set_chooses_its_path_once_and_all_paths_embed_alike(tiny_backbones):
    modules = {kind: _module(tiny_backbones["llama"], kind) for kind in OPTIONS}
    batch = modules["padded"].make_collator()(_examples())
    reference = modules["padded"].encode_pair_batch(batch)
    for kind, module in modules.items():
        path = module.encoding
        assert path.kind == kind and module.encoding is path  # chosen once, then kept
        assert isinstance(module, CostedModule) and isinstance(path, EncodingReport)
        module.eval()
        with torch.no_grad():
            queries, documents = path.encode(batch)
        assert_close_relative(queries, reference[0], what=f"{kind} queries")
        assert_close_relative(documents, reference[1], what=f"{kind} documents")
        assert path.computed == path.plan(batch)  # what it ran is what it planned


def test_reported_positions_are_what_each_path_computes(tiny_backbones, monkeypatch):
    monkeypatch.setattr("lightning_embed.training.encoding.default_overhead", lambda device: 4)  # split eagerly
    modules = {kind: _module(tiny_backbones["llama"], kind) for kind in ("padded", "split", "packed")}
    batch = modules["padded"].make_collator()(_examples())
    padded = [enc["attention_mask"].numel() for enc in (batch.queries, batch.documents)]
    real = sum(int(enc["attention_mask"].sum()) for enc in (batch.queries, batch.documents))
    for module in modules.values():
        module.encode_pair_batch(batch)
    assert modules["padded"].encoding.computed == [None, None]  # costed as the padded masks
    split = modules["split"].encoding.computed
    assert all(c is not None for c in split) and sum(c[0] for c in split) < sum(padded)
    (positions, _), rest = modules["packed"].encoding.computed
    assert rest == (0, 0) and real <= positions < sum(padded)  # one packed forward, reported on the queries


def test_the_flop_callback_counts_the_positions_the_path_reports(tiny_backbones, tmp_path, monkeypatch):
    """The callback costs what the encoding path ran; it never re-plans a batch."""
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"query": e.query, "positive": e.positive}) + "\n" for e in _examples(16)))
    reported: list = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            reported.append(list(pl_module.encoding.computed))

    def no_replanning(self, batch):
        raise AssertionError("a batch was re-planned instead of read from encoding.computed")

    monkeypatch.setattr(PackedEncoding, "plan", no_replanning)
    module = _module(tiny_backbones["llama"], "packed")
    L.seed_everything(0)
    callback = FlopCallback(runs_file=None, log_every_n_steps=1)
    trainer = L.Trainer(callbacks=[Record(), callback], max_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, PairDataModule(train=str(path), batch_size=4))
    assert module.encoding.kind == "packed" and len(reported) == 3
    assert callback.counter.padded_tokens == sum(queries[0] + documents[0] for queries, documents in reported)
    assert callback.counter.tokens < callback.counter.padded_tokens


@pytest.mark.parametrize("kind", ["padded", "packed"])
def test_the_path_is_chosen_at_fit_start_with_the_training_attention(tiny_backbones, kind):
    module = EmbeddingModule(backbone=tiny_backbones["llama"], **OPTIONS[kind])
    assert module._encoding is None  # nothing chosen before it is needed
    assert module.packing_enabled() is (kind == "packed")
