"""Gradient caching: the loss and every gradient of the uncached batch, in mini-batches (one process).

Under two processes (DDP, FSDP, FSDP2) see tests/training/test_distributed.py.
"""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from lightning_embed.data.batches import PairExample
from lightning_embed.data.datamodule import PairDataModule
from lightning_embed.errors import UserError
from lightning_embed.testing import FP32_REL, assert_close_relative, close_mismatches
from lightning_embed.training.gradcache import cached_encode, split_encoding
from lightning_embed.training.module import EmbeddingModule

LORA = {"name": "lora", "rank": 4}


def examples(n: int, k: int) -> list[PairExample]:
    return [PairExample(f"query {i} " + "word " * (i % 3), f"document {i} about " + "topic " * (1 + i % 4),
                        tuple(f"negative {i} {j} " + "x " * j for j in range(k)), i) for i in range(n)]


def make_module(backbone: str, tuning="full", **kw) -> EmbeddingModule:
    torch.manual_seed(0)
    kw.setdefault("pack_sequences", False)  # compared with GradCache, which encodes padded mini-batches
    module = EmbeddingModule(backbone=backbone, tuning=tuning, query_max_length=16, document_max_length=24, **kw)
    for name, p in module.named_parameters():
        if "lora_" in name:  # peft starts B at zero: perturb so every adapter weight gets a gradient
            p.data.normal_(0, 0.05)
    return module


def grads_of(module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def loss_and_grads(module: EmbeddingModule, batch, chunk: int | None, seed: int = 0):
    module.zero_grad(set_to_none=True)
    module.gradcache_chunk_size = chunk
    torch.manual_seed(seed)
    loss = module(batch)
    loss.backward()
    return loss.detach(), grads_of(module)


def assert_same(got, want, rel: float = FP32_REL) -> None:
    """Loss and every gradient equal up to float rounding (normwise, see lightning_embed.testing.tolerances)."""
    (loss, grads), (ref_loss, ref_grads) = got, want
    assert grads and grads.keys() == ref_grads.keys()
    assert_close_relative(loss, ref_loss, rel=rel, what="loss")
    assert_close_relative(grads, ref_grads, rel=rel, what="gradients")


@pytest.mark.parametrize(("arch", "tuning", "k", "chunk"), [
    ("gpt_neox", "full", 0, 3),
    ("llama", "full", 2, 2),
    ("llama", LORA, 1, 3),
    ("bert", "full", 1, 4),
    ("gpt_neox", {"name": "freeze", "blocks": 1}, 1, 1),
    ("gpt_neox", "bias", 1, 3),
    ("llama", {"name": "qlora", "rank": 4}, 1, 3),
])
def test_gradcache_equals_uncached(tiny_backbones, arch, tuning, k, chunk):
    """Loss and every parameter gradient equal the uncached batch's within 1e-5 (fp32), for chunk sizes that
    do and do not divide the batch, with hard negatives and with frozen parameters."""
    module = make_module(tiny_backbones[arch], tuning)
    module.backbone.eval()  # dropout off: the uncached forward draws its masks in another order
    batch = module.make_collator()(examples(7, k))
    assert_same(loss_and_grads(module, batch, chunk), loss_and_grads(module, batch, None))


class _FlipGradient(torch.autograd.Function):
    """Identity forward, negated gradient: a deliberately wrong backward."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -grad


@pytest.mark.parametrize("fault", ["one chunk dropped", "one chunk's sign flipped"])
def test_the_tolerance_catches_a_wrong_gradcache_gradient(tiny_backbones, monkeypatch, fault):
    """The normwise tolerance passes GradCache's rounding but not a real error: a mini-batch that gets no
    gradient, or the wrong sign, fails the same comparison (the loss itself is unchanged by either)."""
    import lightning_embed.training.gradcache as gradcache

    module = make_module(tiny_backbones["gpt_neox"])
    module.backbone.eval()
    batch = module.make_collator()(examples(7, 1))
    want = loss_and_grads(module, batch, None)
    assert_same(loss_and_grads(module, batch, 3), want)

    real, calls = gradcache.checkpoint, []

    def faulty(fn, *args, **kwargs):
        out = real(fn, *args, **kwargs)
        calls.append(out.shape[0])
        if len(calls) == 2:  # the queries' second mini-batch
            return out.detach() if fault == "one chunk dropped" else _FlipGradient.apply(out)
        return out

    monkeypatch.setattr(gradcache, "checkpoint", faulty)
    got = loss_and_grads(module, batch, 3)
    assert len(calls) > 2
    assert_close_relative(got[0], want[0], what="loss")  # the fault is in the backward only
    problems = close_mismatches(got[1], want[1])
    assert len(problems) > len(want[1]) // 2, problems  # most gradients are visibly wrong


def test_gradcache_is_exact_in_float64(tiny_backbones):
    """Not merely close: in float64 the differences are rounding (1e-12), so the computation is the same."""
    module = make_module(tiny_backbones["llama"], LORA).double()
    module.backbone.eval()
    batch = module.make_collator()(examples(6, 1))
    assert_same(loss_and_grads(module, batch, 4), loss_and_grads(module, batch, None), rel=1e-10)


def test_gradcache_replays_dropout_masks(tiny_backbones):
    """With dropout on, the re-forward of each mini-batch draws the masks of its first forward: the gradients
    equal those of the same mini-batches run once with gradients kept (same seed)."""
    module = make_module(tiny_backbones["bert"], pooling="cls")
    assert module.backbone.config.hidden_dropout_prob > 0
    module.train()
    batch = module.make_collator()(examples(6, 1))
    chunk = 4

    def chunked_with_grad(encoding):  # the reference: mini-batches, activations kept, no recomputation
        return torch.cat([module.encode_batch(c) for c in split_encoding(encoding, chunk)])

    module.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    reference_loss = module.loss_fn(chunked_with_grad(batch.queries), chunked_with_grad(batch.documents), 1)
    reference_loss.backward()
    reference = (reference_loss.detach(), grads_of(module))
    assert_same(loss_and_grads(module, batch, chunk, seed=1), reference)
    # The masks matter: another seed gives other gradients.
    other = loss_and_grads(module, batch, chunk, seed=2)
    assert close_mismatches(other[1], reference[1])


class AutocastProbe:
    """Records, for every call of the transformer blocks, whether CPU autocast was on."""

    def __init__(self, module: EmbeddingModule):
        from lightning_embed.models.backbones import find_blocks

        self.states: list[bool] = []
        _, blocks = find_blocks(module.backbone)
        self.handles = [b.register_forward_pre_hook(lambda *_: self.states.append(torch.is_autocast_enabled("cpu")))
                        for b in blocks]
        self.blocks = len(blocks)


def test_gradcache_reforward_runs_under_the_same_autocast(tiny_backbones):
    """bf16 autocast: the re-forward (during backward, outside the autocast block) runs under autocast
    again, and the gradients equal the mini-batches run once with gradients kept under autocast."""
    module = make_module(tiny_backbones["llama"])
    module.backbone.eval()
    batch = module.make_collator()(examples(6, 1))
    chunk = 4

    def chunked_with_grad(encoding):
        return torch.cat([module.encode_batch(c) for c in split_encoding(encoding, chunk)])

    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference_loss = module._contrastive_loss(chunked_with_grad(batch.queries),
                                                  chunked_with_grad(batch.documents), 1)
    reference_loss.backward()
    reference = (reference_loss.detach(), grads_of(module))

    probe = AutocastProbe(module)
    module.zero_grad(set_to_none=True)
    module.gradcache_chunk_size = chunk
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = module(batch)
    loss.backward()
    got = (loss.detach(), grads_of(module))
    chunks = len(split_encoding(batch.queries, chunk)) + len(split_encoding(batch.documents, chunk))
    assert len(probe.states) == 2 * chunks * probe.blocks and all(probe.states)
    assert_same(got, reference)


def test_gradcache_with_gradient_checkpointing(tiny_backbones):
    """Activation checkpointing inside the blocks nests under GradCache's recomputation."""
    module = make_module(tiny_backbones["gpt_neox"], LORA, gradient_checkpointing=True)
    module.backbone.train()  # HF checkpoints only in training mode; these tiny configs have no dropout
    batch = module.make_collator()(examples(5, 1))
    assert_same(loss_and_grads(module, batch, 2), loss_and_grads(module, batch, None))


def test_cached_encode_without_gradients_is_plain_chunking():
    layer = torch.nn.Linear(3, 2)
    batch = {"x": torch.randn(7, 3)}
    with torch.no_grad():
        torch.testing.assert_close(cached_encode(lambda e: layer(e["x"]), batch, 3), layer(batch["x"]))
    with pytest.raises(ValueError, match="chunk_size"):
        split_encoding(batch, 0)


@pytest.mark.parametrize("bad", [0, -4, 2.5, True])
def test_gradcache_chunk_size_is_validated(tiny_backbones, bad):
    with pytest.raises(UserError, match="gradcache_chunk_size"):
        EmbeddingModule(backbone=tiny_backbones["llama"], gradcache_chunk_size=bad)


def test_flop_model_sees_gradcache(tiny_backbones):
    from lightning_embed.flops.budget import training_flags

    module = EmbeddingModule(backbone=tiny_backbones["llama"], gradcache_chunk_size=8)
    assert module.hparams.gradcache_chunk_size == 8
    assert training_flags(module) == {"gradcache": True, "recompute": False}


# ---------------------------------------------------------------------------------------------- Lightning


def _write_pairs(path, n: int, k: int):
    with open(path, "w") as f:
        for e in examples(n, k):
            f.write(json.dumps({"query": e.query, "positive": e.positive, "negatives": list(e.negatives)}) + "\n")
    return path


def _fit(backbone, pairs, chunk, **trainer_kw):
    L.seed_everything(0)
    module = EmbeddingModule(backbone=backbone, query_max_length=16, document_max_length=24, gradcache_chunk_size=chunk,
                             warmup_ratio=0.0, lr_schedule="constant", pack_sequences=False)
    data = PairDataModule(train=str(pairs), num_negatives=1, batch_size=4)
    grads: list[dict[str, torch.Tensor]] = []

    class Recorder(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            grads.append({n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None})

    probe = AutocastProbe(module)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False, callbacks=[Recorder()], **trainer_kw)
    trainer.fit(module, data)
    return trainer, grads, probe


def test_lightning_fit_with_gradcache_accumulation_and_clipping(tiny_backbones, tmp_path):
    """Automatic optimisation is untouched: accumulation over 2 batches and clipping work, and the first
    step's (accumulated, unclipped) gradients equal the uncached run's."""
    pairs = _write_pairs(tmp_path / "pairs.jsonl", 16, 1)
    kw = dict(max_steps=2, accumulate_grad_batches=2, gradient_clip_val=0.5, default_root_dir=tmp_path)
    cached_trainer, cached, _ = _fit(tiny_backbones["gpt_neox"], pairs, 3, **kw)
    plain_trainer, plain, _ = _fit(tiny_backbones["gpt_neox"], pairs, None, **kw)
    assert cached_trainer.global_step == plain_trainer.global_step == 2
    assert len(cached) == len(plain) == 2
    assert cached[0].keys() == plain[0].keys()
    assert_close_relative(cached[0], plain[0], what="first step's gradients")


def test_lightning_bf16_mixed_reforward_under_autocast(tiny_backbones, tmp_path):
    """Lightning's bf16-mixed precision plugin: every block call, the re-forward included, is autocast."""
    pairs = _write_pairs(tmp_path / "pairs.jsonl", 8, 1)
    trainer, grads, probe = _fit(tiny_backbones["llama"], pairs, 3, max_steps=1, precision="bf16-mixed",
                                 default_root_dir=tmp_path)
    # 4 queries (2 chunks) and 8 documents (3 chunks), each chunk forwarded twice, per block
    assert len(probe.states) == 2 * (2 + 3) * probe.blocks and all(probe.states)
    assert trainer.global_step == 1 and all(torch.isfinite(g).all() for g in grads[0].values())


def test_gradcache_keeps_no_activations_after_the_forward(tiny_backbones):
    """Between forward and backward only the embeddings (and the loss's own tensors) are held, not the
    blocks' activations: what autograd saves outside the mini-batches' recomputed regions is small."""
    module = make_module(tiny_backbones["llama"])
    batch = module.make_collator()(examples(16, 1))

    def saved_bytes(chunk):
        module.gradcache_chunk_size = chunk
        sizes = []

        def pack(t):
            sizes.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = module(batch)
        del loss
        return sum(sizes)

    embeddings = (16 + 32) * module.backbone.config.hidden_size * 4
    cached, plain = saved_bytes(2), saved_bytes(None)
    assert cached < 4 * embeddings and plain > 100 * cached, (cached, embeddings, plain)
