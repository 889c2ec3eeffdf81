"""Matryoshka training: the loss over leading slices, its checks, and truncated embeddings at inference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_embed.errors import UserError
from lightning_embed.losses import GTELoss
from lightning_embed.losses.infonce import InfoNCELoss
from lightning_embed.losses.matryoshka import MatryoshkaLoss, check_matryoshka, truncate


def _embeddings(b=6, k=1, h=16):
    g = torch.Generator().manual_seed(1)
    return (F.normalize(torch.randn(b, h, generator=g), dim=-1),
            F.normalize(torch.randn(b * (1 + k), h, generator=g), dim=-1))


@pytest.mark.parametrize("base", [InfoNCELoss(0.05), GTELoss(0.05)])
def test_one_full_dimension_equals_the_plain_loss(base):
    q, d = _embeddings()
    plain = base(q, d, 1)
    assert abs(MatryoshkaLoss(base, [16])(q, d, 1).item() - plain.item()) <= 1e-6 * plain.item()


def test_sum_over_renormalised_slices_with_weights():
    q, d = _embeddings()
    base = InfoNCELoss(0.05)
    want = sum(w * base(F.normalize(q[:, :n], dim=-1), F.normalize(d[:, :n], dim=-1), 1)
               for n, w in ((16, 1.0), (8, 0.5), (2, 2.0)))
    got = MatryoshkaLoss(base, [16, 8, 2], [1.0, 0.5, 2.0])(q, d, 1)
    assert abs(got.item() - want.item()) <= 1e-6 * want.item()
    # Unnormalised models are not re-normalised.
    raw = MatryoshkaLoss(base, [16, 8], normalize=False)(q, d, 1)
    assert abs(raw.item() - (base(q, d, 1) + base(q[:, :8], d[:, :8], 1)).item()) <= 1e-6 * raw.item()


@pytest.mark.parametrize("dims, weights, message", [
    ([64, 128], None, "strictly decreasing"),
    ([64, 64], None, "strictly decreasing"),
    ([1024, 64], None, "exceeds the embedding size 576"),
    ([], None, "non-empty"),
    ([64, 0], None, "positive integers"),
    ([256, 64], [1.0], "one positive weight per dimension"),
    (None, [1.0], "needs matryoshka_dims"),
])
def test_bad_dims_are_named(dims, weights, message):
    assert any(message in p for p in check_matryoshka(dims, weights, 576))


def test_module_rejects_dims_above_hidden_size(tiny_backbones):
    from lightning_embed.training.module import EmbeddingModule

    with pytest.raises(UserError, match="exceeds the embedding size 32"):
        EmbeddingModule(backbone=tiny_backbones["llama"], matryoshka_dims=[64, 16])


def test_module_loss_is_computed_once_per_batch_and_trains(tiny_backbones):
    """The module's Matryoshka loss equals the sum of the plain losses on truncated embeddings of one forward."""
    from lightning_embed.data.batches import PairExample
    from lightning_embed.training.module import EmbeddingModule

    torch.manual_seed(0)
    module = EmbeddingModule(backbone=tiny_backbones["llama"], matryoshka_dims=[32, 16, 8], loss="gte",
                             pack_sequences=False)
    module.backbone.eval()
    batch = module.make_collator()([PairExample(f"query {i}", f"document {i} " * (i + 1), (), i) for i in range(4)])
    calls = []
    module.backbone.register_forward_hook(lambda *args: calls.append(1))
    loss = module(batch)
    assert len(calls) == 2  # queries and documents, once each: the slices reuse them
    queries, documents = module.encode_pair_batch(batch)
    plain = GTELoss(module.hparams.temperature, gather_across_devices=False)
    want = sum(plain(truncate(queries, n, True), truncate(documents, n, True), 0) for n in (32, 16, 8))
    assert abs(loss.item() - want.item()) <= 1e-5 * want.item()
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.backbone.parameters())


def test_truncate():
    e = F.normalize(torch.randn(3, 8), dim=-1)
    assert torch.equal(truncate(e, None, True), e)
    t = truncate(e, 4, True)
    assert t.shape == (3, 4) and torch.allclose(t.norm(dim=-1), torch.ones(3))
    assert torch.equal(truncate(e, 4, False), e[:, :4])


def test_export_truncates_in_sentence_transformers_and_evaluate_scores_each_dimension(tiny_backbones, tmp_path,
                                                                                     capsys):
    import json

    import lightning as L
    from sentence_transformers import SentenceTransformer

    from lightning_embed.cli.app import main
    from lightning_embed.data.datamodule import PairDataModule
    from lightning_embed.evaluation.evaluate import resolve_tasks, run_mteb
    from lightning_embed.models.encoder import load
    from lightning_embed.models.export import export_checkpoint
    from lightning_embed.training.module import EmbeddingModule

    L.seed_everything(0)
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"query": f"alpha {i} bravo", "positive": f"the alpha number {i} " * (1 + i % 3)} for i in range(16)]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    module = EmbeddingModule(backbone=tiny_backbones["llama"], matryoshka_dims=[32, 16, 8], learning_rate=1e-2,
                             warmup_ratio=0.0, query_max_length=16, document_max_length=32)
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, datamodule=PairDataModule(train=str(pairs), batch_size=8))
    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    out = export_checkpoint(ckpt, tmp_path / "export")
    texts = [r["query"] for r in rows[:6]]
    encoder = load(out, device="cpu")
    for dim in (16, 8):
        st = SentenceTransformer(str(out), device="cpu", truncate_dim=dim)
        got = torch.as_tensor(st.encode(texts))
        assert got.shape == (6, dim)
        assert F.cosine_similarity(got, encoder.encode(texts, dimension=dim)).min() > 0.9999
    assert "Matryoshka dimensions | 32, 16, 8" in (out / "README.md").read_text()

    task = tmp_path / "retrieval.jsonl"
    task.write_text("".join(json.dumps({"query": r["query"], "positive": r["positive"]}) + "\n" for r in rows))
    result_file = tmp_path / "scores.json"
    main(["evaluate", str(out), "--tasks", f"retrieval:{task}", "--dims", "8,16", "--output", str(result_file)])
    table = capsys.readouterr().out
    assert "16d" in table and "8d" in table and "score (32d)" in table
    results = json.loads(result_file.read_text())
    assert set(results["dims"]) == {"16", "8"}
    # Scores from the cached full embeddings equal those of encoding again at each dimension.
    direct = run_mteb(encoder, resolve_tasks([f"retrieval:{task}"]), dimension=8)
    assert results["dims"]["8"] == pytest.approx(direct, rel=1e-4)
    for bad, message in ((["--dims", "64"], "larger than the embedding size 32"),
                         (["--dims", "0,8"], "give positive integers")):
        with pytest.raises(SystemExit) as exit_info:
            main(["evaluate", str(out), "--tasks", f"retrieval:{task}", *bad])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(err) == 1 and message in err[0], err
