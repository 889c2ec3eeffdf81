"""The loss plug-in point (model.loss) and GTE's improved contrastive loss, alone and across two processes."""

from __future__ import annotations

import json
import socket
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lightning_embed.errors import UserError
from lightning_embed.losses.infonce import InfoNCELoss
from lightning_embed.losses import GTELoss, build_loss
from lightning_embed.testing import close_mismatches


def _embeddings(b: int, k: int, h: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(b, h, generator=g), dim=-1)
    d = F.normalize(torch.randn(b * (1 + k), h, generator=g), dim=-1)
    return q, d


def _reference_gte(q, d, k, t):
    """GTE's loss written from the paper's formula, one query at a time."""
    b = q.shape[0]
    total = 0.0
    for i in range(b):
        own = {i} | {b + i * k + j for j in range(k)}
        terms = [q[i] @ d[j] / t for j in range(len(d))]
        terms += [q[i] @ q[j] / t for j in range(b) if j != i]
        terms += [q[j] @ d[i] / t for j in range(b)]
        terms += [d[j] @ d[i] / t for j in range(len(d)) if j not in own]
        total = total - (q[i] @ d[i] / t - torch.logsumexp(torch.stack(terms), 0))
    return total / b


@pytest.mark.parametrize("k", [0, 2])
def test_gte_matches_the_papers_formula(k):
    q, d = _embeddings(5, k)
    got = GTELoss(temperature=0.05)(q, d, num_negatives=k)
    want = _reference_gte(q.double(), d.double(), k, 0.05)
    assert abs(got.item() - want.item()) <= 1e-5 * abs(want.item())


@pytest.mark.parametrize("k", [0, 1])
def test_gte_equals_sentence_transformers_joint_four_direction_loss(k):
    from sentence_transformers.sentence_transformer.losses import (
        MultipleNegativesRankingLoss,
    )

    q, d = _embeddings(6, k)
    b = q.shape[0]
    st = MultipleNegativesRankingLoss(model=None, scale=1 / 0.025, partition_mode="joint",
                                      directions=("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"))
    # sentence-transformers takes one column per negative: column j holds every query's j-th negative.
    columns = [d[:b]] + [d[b:].view(b, k, -1)[:, j] for j in range(k)]
    want = st.compute_loss_from_embeddings([q, *columns], labels=None)
    got = GTELoss(temperature=0.025)(q, d, num_negatives=k)
    assert abs(got.item() - want.item()) <= 1e-5 * abs(want.item())


def test_gte_adds_same_type_negatives_to_infonce():
    q, d = _embeddings(6, 0)
    assert GTELoss(0.05)(q, d) > InfoNCELoss(0.05, symmetric=True)(q, d)
    # Queries that collapse onto each other are penalised by GTE only (query-query negatives).
    collapsed = F.normalize(q + 5 * q[:1], dim=-1)
    gap_gte = GTELoss(0.05)(collapsed, d) - GTELoss(0.05)(q, d)
    gap_infonce = InfoNCELoss(0.05)(collapsed, d) - InfoNCELoss(0.05)(q, d)
    assert gap_gte > gap_infonce


def test_build_loss_names_and_defaults():
    default = build_loss(None, temperature=0.05, symmetric=False, gather_across_devices=False)
    assert isinstance(default, InfoNCELoss) and default.temperature == 0.05 and not default.symmetric
    assert isinstance(build_loss("GTE", temperature=0.01), GTELoss)
    gte = build_loss({"name": "gte", "temperature": 0.2}, temperature=0.01)
    assert gte.temperature == 0.2  # the loss's own option wins over the module's


def test_build_loss_class_path(tmp_path, monkeypatch):
    (tmp_path / "my_losses.py").write_text(textwrap.dedent("""
        import torch
        import torch.nn.functional as F

        class MarginLoss(torch.nn.Module):
            def __init__(self, margin: float = 0.2, temperature: float = 0.025):
                super().__init__()
                self.margin, self.temperature = margin, temperature

            def forward(self, queries, documents, num_negatives=0):
                scores = queries @ documents.T
                b = queries.shape[0]
                scores = scores - self.margin * F.one_hot(torch.arange(b), scores.shape[1])
                return F.cross_entropy(scores / self.temperature, torch.arange(b))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    loss = build_loss({"class_path": "my_losses.MarginLoss", "init_args": {"margin": 0.1}}, temperature=0.05)
    assert (loss.margin, loss.temperature) == (0.1, 0.05)
    q, d = _embeddings(4, 0)
    assert loss(q, d).item() > 0
    with pytest.raises(UserError, match="no option"):
        build_loss({"class_path": "my_losses.MarginLoss", "init_args": {"margn": 0.1}})


@pytest.mark.parametrize("spec, message", [("triplet", "unknown loss 'triplet'"),
                                           ({"class_path": "nowhere.Loss"}, "cannot import loss class"),
                                           ({"class_path": "subprocess.Popen"}, "not a torch.nn.Module subclass"),
                                           ({"temperature": 1.0}, "needs a name")])
def test_build_loss_bad_input(spec, message):
    with pytest.raises(UserError, match=message):
        build_loss(spec)


def test_unknown_loss_is_one_line_exit_2(tiny_backbones, tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "lightning_embed.cli.main", "fit", "--model.backbone",
                           tiny_backbones["llama"], "--model.loss", "triplet", "--trainer.max_steps", "1"],
                          check=False, capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert "unknown loss 'triplet'" in lines[-1] and "Traceback" not in proc.stderr


# ---- two processes (gloo): the gathered loss equals one process on the concatenated batch -----------------

WORLD, PER_RANK = 2, 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shard(q, d, k, rank):
    b_all = q.shape[0]
    rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    negatives = d[b_all:][rank * PER_RANK * k:(rank + 1) * PER_RANK * k]
    return q[rows], torch.cat([d[:b_all][rows], negatives])


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from lightning_embed.losses.matryoshka import MatryoshkaLoss

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    results = {}
    for name, k, matryoshka in (("in-batch", 0, False), ("hard-negatives", 2, False), ("matryoshka", 1, True)):
        q, d = _embeddings(world * PER_RANK, k)
        losses = [GTELoss(0.05, gather_across_devices=g) for g in (False, True)]
        if matryoshka:
            losses = [MatryoshkaLoss(loss, [16, 8, 4]) for loss in losses]
        # Reference: one process, the concatenated batch.
        q_ref, d_ref = q.clone().requires_grad_(), d.clone().requires_grad_()
        reference = losses[0](q_ref, d_ref, k)
        reference.backward()
        want_q, want_d = _shard(q_ref.grad, d_ref.grad, k, rank)
        # This rank's shard, the other rank's embeddings gathered with gradients.
        q_local, d_local = (t.clone().requires_grad_() for t in _shard(q, d, k, rank))
        loss = losses[1](q_local, d_local, k)
        loss.backward()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        mean /= world
        # DDP averages gradients over ranks: the local gradient / world is the global batch's.
        errors = close_mismatches(mean, reference.detach(), rel=1e-5)
        errors += close_mismatches({"queries": q_local.grad / world, "documents": d_local.grad / world},
                                   {"queries": want_q, "documents": want_d}, rel=1e-5)
        results[name] = errors
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


def test_gte_two_processes_equal_one_process_on_the_concatenated_batch(tmp_path):
    """GTE (and Matryoshka over it) gathered across 2 gloo processes: loss and embedding gradients equal one
    process on the concatenated batch within 1e-5 (relative)."""
    out = tmp_path / "results.json"
    torch.multiprocessing.spawn(_worker, args=(WORLD, _free_port(), str(out)), nprocs=WORLD, join=True)
    results = json.loads(out.read_text())
    assert set(results) == {"in-batch", "hard-negatives", "matryoshka"}
    assert all(not errors for errors in results.values()), results


def test_gte_and_matryoshka_under_gradcache_equal_the_uncached_batch(tiny_backbones):
    from lightning_embed.data.batches import PairExample
    from lightning_embed.training.module import EmbeddingModule
    from lightning_embed.testing import assert_close_relative

    torch.manual_seed(0)
    module = EmbeddingModule(backbone=tiny_backbones["llama"], loss="gte", matryoshka_dims=[32, 16],
                             pack_sequences=False)
    module.backbone.eval()
    batch = module.make_collator()([PairExample(f"query {i}", f"document {i} " * (1 + i % 3), (f"other {i}",), i)
                                    for i in range(6)])
    grads = []
    for chunk in (None, 4):
        module.gradcache_chunk_size = chunk
        module.zero_grad(set_to_none=True)
        module(batch).backward()
        grads.append({n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None})
    assert grads[0] and set(grads[0]) == set(grads[1])
    assert_close_relative(grads[1], grads[0], what="GradCache vs uncached gradients")


def test_a_checkpoint_never_makes_inference_import_its_loss_class(tiny_backbones, tmp_path):
    from lightning_embed.models.encoder import load
    from lightning_embed.training.module import EmbeddingModule

    module = EmbeddingModule(backbone=tiny_backbones["llama"])
    path = tmp_path / "model.ckpt"
    hparams = {**module.hparams, "loss": {"class_path": "nowhere_to_be_found.Loss"}}
    torch.save({"hyper_parameters": hparams, "state_dict": module.state_dict()}, path)
    encoder = load(path, device="cpu")  # would raise "cannot import loss class" if the class were imported
    assert encoder.encode("a text").shape == (32,)
    assert encoder.info["hparams"]["loss"] == {"class_path": "nowhere_to_be_found.Loss"}


def test_every_shipped_loss_honours_a_batch_without_in_batch_negatives():
    """A mixture source with in_batch_negatives: false: only each query's own documents count, for every loss."""
    from lightning_embed.losses import call_loss
    from lightning_embed.losses.matryoshka import MatryoshkaLoss

    torch.manual_seed(0)
    b, k, h = 4, 2, 16
    q = F.normalize(torch.randn(b, h), dim=-1)
    d = F.normalize(torch.randn(b * (1 + k), h), dim=-1)
    own = torch.cat([d[:b, None], d[b:].view(b, k, h)], dim=1)
    expected = F.cross_entropy(torch.einsum("bh,bch->bc", q, own) / 0.05, torch.zeros(b, dtype=torch.long))
    for loss in (InfoNCELoss(0.05, gather_across_devices=False), GTELoss(0.05, gather_across_devices=False)):
        assert torch.allclose(call_loss(loss, q, d, k, in_batch_negatives=False), expected, rtol=1e-5)
        assert not torch.allclose(call_loss(loss, q, d, k), expected, rtol=1e-3)  # the in-batch loss differs
    nested = MatryoshkaLoss(GTELoss(0.05, gather_across_devices=False), [h])
    assert torch.allclose(call_loss(nested, q, d, k, in_batch_negatives=False), expected, rtol=1e-5)


def test_a_loss_without_the_keyword_is_refused_for_such_a_batch():
    from lightning_embed.losses import call_loss

    class Plain(torch.nn.Module):
        def forward(self, queries, documents, num_negatives=0):
            return (queries @ documents.T).mean()

    q, d = torch.randn(2, 4), torch.randn(4, 4)
    assert call_loss(Plain(), q, d, 1).ndim == 0
    with pytest.raises(UserError, match="takes no in_batch_negatives keyword"):
        call_loss(Plain(), q, d, 1, in_batch_negatives=False)
