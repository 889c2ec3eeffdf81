"""The loss plug-in point, ``model.loss`` (lightning_embed/losses/__init__.py): names, class paths, bad input,
checkpoints that never import the loss for inference, batches without in-batch negatives."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lightning_embed.errors import UserError
from lightning_embed.losses import GTELoss, build_loss
from lightning_embed.losses.infonce import InfoNCELoss


def _embeddings(b: int, k: int, h: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(b, h, generator=g), dim=-1)
    d = F.normalize(torch.randn(b * (1 + k), h, generator=g), dim=-1)
    return q, d


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
    proc = subprocess.run([sys.executable, "-m", "lightning_embed.cli.app", "fit", "--model.backbone",
                           tiny_backbones["llama"], "--model.loss", "triplet", "--trainer.max_steps", "1"],
                          check=False, capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert "unknown loss 'triplet'" in lines[-1] and "Traceback" not in proc.stderr


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
