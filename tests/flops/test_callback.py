"""The FlopCallback (lightning_embed/flops/callback.py): stops at the budget, counts every batch and rank, resumes,
records failed runs."""

from __future__ import annotations

import json

import pytest
import torch

from lightning_embed.errors import UserError
from lightning_embed.flops.model import FlopModel, TokenStats
from lightning_embed.models.backbones import load_backbone


def _fit(tiny_backbones, pairs_file, callback, *, ckpt_path=None, callbacks=(), module_cls=None, **trainer_kwargs):
    import lightning as L

    from lightning_embed.data.datamodule import PairDataModule
    from lightning_embed.training.module import EmbeddingModule

    L.seed_everything(0)
    # Padded batches: the counts are checked against the masks (packed counting: tests/training/test_packing.py).
    module = (module_cls or EmbeddingModule)(backbone=tiny_backbones["gpt_neox"], attn_implementation="eager",
                                             pack_sequences=False)
    data = PairDataModule(train=pairs_file, val=pairs_file, batch_size=4, max_val_examples=8)
    defaults = dict(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0)
    trainer = L.Trainer(callbacks=[callback, *callbacks], **{**defaults, **trainer_kwargs})
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return trainer


def test_fit_stops_at_the_budget_and_records_it(tiny_backbones, pairs_file, tmp_path):
    from lightning_embed.flops.callback import FlopCallback
    from lightning_embed.flops.records import read_runs

    runs = tmp_path / "runs.jsonl"
    # estimate_batches=1: the plan comes from one batch, so the real steps cost more or less than planned.
    callback = FlopCallback(max_flops=6e8, runs_file=str(runs), estimate_batches=1, log_every_n_steps=1)
    trainer = _fit(tiny_backbones, pairs_file, callback)
    total, budget = callback.counter.flops_model, callback.max_flops
    last_step = callback.last_metrics["flops/step_model"]
    assert total - last_step < budget  # it never ran a step after reaching the budget ...
    assert total >= budget or trainer.global_step == callback.planned_steps  # ... and stops at it or the plan
    assert total <= budget + last_step  # at most one step over
    assert trainer.global_step > 12  # more than one pass: the budget, not max_epochs=1, decides
    (record,) = read_runs(runs)
    assert record.status == "completed" and record.budget == budget and record.steps == trainer.global_step
    assert record.flops_model == total and record.examples == 4 * record.steps
    assert record.val_loss is not None and record.metrics_step == record.steps and "ndcg@10" in record.metrics
    assert record.tokens < record.padded_tokens and record.flops_model < record.flops_hardware


def test_counts_match_the_batches_seen_and_reach_the_loggers(tiny_backbones, pairs_file):
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.loggers import Logger

    from lightning_embed.flops.callback import FlopCallback

    class Masks(Callback):
        def __init__(self):
            self.masks = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.masks += [batch.queries["attention_mask"].clone(), batch.documents["attention_mask"].clone()]

    class Collect(Logger):
        name, version = "collect", 0
        logged: list = []

        def log_hyperparams(self, *args, **kwargs):
            pass

        def log_metrics(self, metrics, step=None):
            self.logged.append((step, dict(metrics)))

    masks, logger = Masks(), Collect()
    # No budget: counts stay on the device between log steps (every 3) and are flushed at the end (7).
    callback = FlopCallback(runs_file=None, log_every_n_steps=3)
    trainer = _fit(tiny_backbones, pairs_file, callback, callbacks=[masks], max_steps=7, logger=logger)
    flops = FlopModel.from_module(trainer.lightning_module.backbone)
    expected = sum(flops.batch(m) for m in masks.masks)
    assert callback.counter.flops_model == pytest.approx(expected.model)
    assert callback.counter.flops_hardware == pytest.approx(expected.hardware)
    assert callback.counter.tokens == sum(int(m.sum()) for m in masks.masks)
    steps = [step for step, metrics in logger.logged if "flops/total_model" in metrics]
    assert steps == [3, 6]
    last = [m for _, m in logger.logged if "flops/total_model" in m][-1]
    assert "throughput/tokens_per_sec" in last and last["flops/step_model"] > 0


class _FixedShapePairs:
    """Batches with the same token stats in every step (padding included), in any order: a resumed run
    must then count exactly what an uninterrupted one does, whatever the data order after resuming."""

    @staticmethod
    def make(batches: int = 6):
        import lightning as L

        from lightning_embed.data.batches import PairBatch

        def batch(seed: int) -> PairBatch:
            g = torch.Generator().manual_seed(seed)
            q_mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3, [1] * 3 + [0] * 5, [1] * 8])
            d_mask = torch.tensor([[1] * 12, [1] * 7 + [0] * 5, [1] * 12, [1] * 4 + [0] * 8])
            return PairBatch({"input_ids": torch.randint(5, 300, (4, 8), generator=g), "attention_mask": q_mask},
                             {"input_ids": torch.randint(5, 300, (4, 12), generator=g), "attention_mask": d_mask},
                             0, torch.arange(4))

        class Data(L.LightningDataModule):
            def train_dataloader(self):
                return torch.utils.data.DataLoader([batch(i) for i in range(batches)], batch_size=None, shuffle=True)

        return Data()


def test_resumed_run_counts_like_an_uninterrupted_one(tiny_backbones, tmp_path):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_embed.flops.callback import FlopCallback
    from lightning_embed.flops.records import read_runs
    from lightning_embed.training.module import EmbeddingModule

    # Every step has the same stats, so the budget can be sized to buy exactly 10 steps (> one epoch of 6).
    batch = _FixedShapePairs.make().train_dataloader().dataset[0]
    per_step = FlopModel.from_module(load_backbone(tiny_backbones["gpt_neox"])).count(
        TokenStats.from_mask(batch.queries["attention_mask"]) + TokenStats.from_mask(batch.documents["attention_mask"]))
    budget, runs = 10.5 * per_step.model, tmp_path / "runs.jsonl"

    def fit(callback, callbacks=(), ckpt_path=None):
        L.seed_everything(0)
        module = EmbeddingModule(backbone=tiny_backbones["gpt_neox"], attn_implementation="eager")
        trainer = L.Trainer(callbacks=[callback, *callbacks], logger=False, enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=bool(callbacks), max_epochs=1)
        trainer.fit(module, _FixedShapePairs.make(), ckpt_path=ckpt_path)
        return trainer

    whole_cb = FlopCallback(max_flops=budget, runs_file=str(runs))
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    whole = fit(whole_cb, [saver])
    assert whole.global_step == whole_cb.planned_steps == 10
    mid_epoch = tmp_path / "ckpt" / "epoch=0-step=4.ckpt"
    resumed_cb = FlopCallback(max_flops=budget, runs_file=str(runs))
    resumed = fit(resumed_cb, ckpt_path=str(mid_epoch))
    assert resumed.global_step == whole.global_step
    for field in ("flops_model", "flops_hardware", "examples", "tokens", "padded_tokens"):
        assert getattr(resumed_cb.counter, field) == getattr(whole_cb.counter, field), field
    first, second = read_runs(runs)  # one valid line per run
    assert first.run_id == second.run_id and (first.flops_model, first.steps) == (second.flops_model, second.steps)


_DDP_SCRIPT = """
import json, os, sys
import torch, lightning as L
from lightning_embed.data.batches import PairBatch
from lightning_embed.flops.callback import FlopCallback
from lightning_embed.flops.model import FlopModel
from lightning_embed.models.backbones import load_backbone
from lightning_embed.training.module import EmbeddingModule
from lightning_embed.flops.records import read_runs

def make_batch(i):  # every batch has its own padded width: ranks pad differently
    g = torch.Generator().manual_seed(i)
    wq, wd = 6 + 2 * i, 10 + 3 * i
    qm = torch.ones(4, wq, dtype=torch.long); qm[1, wq // 2:] = 0
    dm = torch.ones(4, wd, dtype=torch.long); dm[2, 3:] = 0
    return PairBatch({"input_ids": torch.randint(5, 300, (4, wq), generator=g), "attention_mask": qm},
                     {"input_ids": torch.randint(5, 300, (4, wd), generator=g), "attention_mask": dm}, 0,
                     torch.arange(4))

class Data(L.LightningDataModule):
    def train_dataloader(self):
        return torch.utils.data.DataLoader([make_batch(i) for i in range(4)], batch_size=None)

if __name__ == "__main__":
    backbone, runs = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[FlopCallback(runs_file=runs)])
    trainer.fit(EmbeddingModule(backbone=backbone, attn_implementation="eager", pack_sequences=False), Data())
    if not trainer.is_global_zero:
        os._exit(0)  # skip C++ static destructors racing gloo's threads (docs/bugs.md)
    (record,) = read_runs(runs)
    flops = FlopModel.from_module(load_backbone(backbone, attn_implementation="eager"))
    batches = [make_batch(i) for i in range(4)]
    expected = sum(flops.batch(b.queries["attention_mask"]) + flops.batch(b.documents["attention_mask"])
                   for b in batches)
    print("RESULT", json.dumps({"record": [record.world_size, record.steps, record.examples, record.tokens,
                                           record.flops_model, record.flops_hardware],
                                "expected": [2, 2, 16, sum(int(b.queries["attention_mask"].sum()
                                                           + b.documents["attention_mask"].sum()) for b in batches),
                                             expected.model, expected.hardware]}), flush=True)
    os._exit(0)
"""


def test_ddp_counts_every_rank_exactly(tiny_backbones, tmp_path):
    import subprocess
    import sys

    script = tmp_path / "ddp_fit.py"
    script.write_text(_DDP_SCRIPT)
    import os
    import socket

    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # torchrun, as a user launches DDP (ddp_spawn's children sometimes aborted at exit, after training).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_addr=127.0.0.1", f"--master_port={port}", str(script),
                           tiny_backbones["gpt_neox"], str(tmp_path / "runs.jsonl")],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert result["record"] == result["expected"]  # two processes, all-reduced: exact, padding included


def test_failed_fit_is_recorded_as_failed(tiny_backbones, pairs_file, tmp_path):
    from lightning_embed.flops.callback import FlopCallback
    from lightning_embed.flops.records import read_runs
    from lightning_embed.training.module import EmbeddingModule

    class Crashing(EmbeddingModule):
        def training_step(self, batch, batch_idx):
            if batch_idx == 2:
                raise RuntimeError("out of cheese")
            return super().training_step(batch, batch_idx)

    runs = tmp_path / "runs.jsonl"
    with pytest.raises(RuntimeError, match="cheese"):
        _fit(tiny_backbones, pairs_file, FlopCallback(runs_file=str(runs), accounting="paper"), module_cls=Crashing)
    (record,) = read_runs(runs)
    assert record.status == "failed" and record.error == "RuntimeError: out of cheese" and record.steps == 2
    # Paper accounting: full fine-tuning costs 6N per real token; hardware stays exact.
    assert record.accounting == "paper" and record.flops_model == 6 * record.non_embedding_params * record.tokens


def test_bad_setup_fails_before_training_without_a_record(tiny_backbones, pairs_file, tmp_path):
    from lightning_embed.flops.callback import FlopCallback

    runs = tmp_path / "runs.jsonl"
    with pytest.raises(UserError, match="does not buy one training step"):
        _fit(tiny_backbones, pairs_file, FlopCallback(max_flops=1e3, runs_file=str(runs)))
    assert runs.read_text() == ""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot append run records"):
        _fit(tiny_backbones, pairs_file, FlopCallback(runs_file=str(blocker / "runs.jsonl")))
