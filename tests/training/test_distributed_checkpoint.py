"""Distributed checkpoint folders read as one checkpoint, in one process (the multi-process runs that write
them are in test_distributed_workflow.py)."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.distributed.checkpoint as dcp

from lightning_embed.errors import UserError
from lightning_embed.models.encoder import load, read_checkpoint
from lightning_embed.training.distributed_checkpoint import (
    consolidate_checkpoint,
    is_complete,
    read_distributed_checkpoint,
    remove_partial_checkpoints,
)
from lightning_embed.training.module import EmbeddingModule

TEXTS = ["how do I sort a list", "sorted(items) returns a new list", "open a file"]


def _folder_like_lightning(module: EmbeddingModule, folder, key: str = "state_dict"):
    """A distributed checkpoint folder as ModelParallelStrategy ("state_dict") or FSDPStrategy ("model")
    writes it: tensors through torch.distributed.checkpoint, the rest in meta.pt."""
    state = {key: {k: v.clone() for k, v in module.state_dict().items()},
             "optimizer_0": {"state": {"step": torch.tensor(3.0)}}}
    dcp.save(state, checkpoint_id=str(folder), no_dist=True)
    meta = {"hyper_parameters": dict(module.hparams), "global_step": 7, "epoch": 0, "callbacks": {}}
    torch.save(meta, folder / "meta.pt")
    return folder


@pytest.fixture
def trained(tiny_backbones):
    torch.manual_seed(0)
    module = EmbeddingModule(backbone=tiny_backbones["llama"], query_max_length=16, document_max_length=24)
    with torch.no_grad():
        for p in module.backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))  # not the backbone on disk: loading must take these weights
    return module


@pytest.mark.parametrize("key", ["state_dict", "model"])
def test_folder_loads_like_a_single_file_checkpoint(trained, tmp_path, key):
    folder = _folder_like_lightning(trained, tmp_path / "step=7.ckpt", key)
    torch.save({"state_dict": trained.state_dict(), "hyper_parameters": dict(trained.hparams), "global_step": 7},
               tmp_path / "single.ckpt")
    ckpt = read_checkpoint(folder)
    assert "optimizer_0" not in ckpt and ckpt["global_step"] == 7  # weights and run state only
    from_folder = torch.as_tensor(load(folder, device="cpu").encode(TEXTS))
    from_file = torch.as_tensor(load(tmp_path / "single.ckpt", device="cpu").encode(TEXTS))
    assert float((from_folder - from_file).norm() / from_file.norm()) < 1e-6
    full = read_distributed_checkpoint(folder, weights_only_state=False)
    assert float(full["optimizer_0"]["state"]["step"]) == 3.0


def test_consolidate_writes_one_file_atomically(trained, tmp_path):
    folder = _folder_like_lightning(trained, tmp_path / "step=7.ckpt")
    out = consolidate_checkpoint(folder, tmp_path / "model.ckpt")
    assert read_checkpoint(out)["state_dict"].keys() == trained.state_dict().keys()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(UserError, match="exists"):
        consolidate_checkpoint(folder, out)


def test_partial_shard_set_is_refused_and_removed(trained, tmp_path):
    complete = _folder_like_lightning(trained, tmp_path / "step=1.ckpt")
    partial = _folder_like_lightning(trained, tmp_path / "step=2.ckpt")
    (partial / ".metadata").unlink()  # a rank died before the index was written
    no_meta = _folder_like_lightning(trained, tmp_path / "step=3.ckpt")
    (no_meta / "meta.pt").unlink()  # rank zero died before Lightning's meta.pt
    with pytest.raises(UserError, match=r"partial checkpoint \(no \.metadata"):
        read_checkpoint(partial)
    with pytest.raises(UserError, match=r"partial checkpoint \(no meta\.pt"):
        load(no_meta, device="cpu")
    assert remove_partial_checkpoints(tmp_path) == [partial, no_meta]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step=1.ckpt"] and is_complete(complete)


class _Payload:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_index_with_code_is_refused(trained, tmp_path, capsys):
    folder = _folder_like_lightning(trained, tmp_path / "step=7.ckpt")
    (folder / ".metadata").write_bytes(pickle.dumps({"index": _Payload()}))
    with pytest.raises(UserError, match="loads safely.*builtins.print"):
        read_checkpoint(folder)
    assert "code ran" not in capsys.readouterr().out
