"""GTE's improved contrastive loss (lightning_embed/losses/gte.py): the paper's formula, sentence-transformers'
equivalent, across two processes and under GradCache."""

from __future__ import annotations

import json
import os
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lightning_embed.losses import GTELoss
from lightning_embed.losses.infonce import InfoNCELoss
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
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)  # skip C++ static destructors, which can race gloo's threads at exit (docs/bugs.md)


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
    from lightning_embed.testing import assert_close_relative
    from lightning_embed.training.module import EmbeddingModule

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
