"""The loss before training (L0) in every run record: one validation pass before the first step."""

from __future__ import annotations

import json

import pytest

WORDS = "parse read write sort merge split join load save open close send fetch build check".split()


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    with path.open("w") as f:
        for i in range(40):
            query = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(1 + i % 4)) + f" {i}"
            f.write(json.dumps({"query": query, "positive": f"def f{i}(x):\n    return x * {i}"}) + "\n")
    return str(path)


def _module(tiny_backbones):
    import lightning as L

    from lightning_embed.training.module import EmbeddingModule

    L.seed_everything(0)
    return EmbeddingModule(backbone=tiny_backbones["gpt_neox"], attn_implementation="eager", pack_sequences=False,
                           learning_rate=1e-2)


def _trainer(callbacks, **kwargs):
    import lightning as L

    return L.Trainer(callbacks=callbacks, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, **kwargs)


def test_record_carries_the_loss_of_the_untrained_module(tiny_backbones, pairs_file, tmp_path):
    from lightning_embed.data.datamodule import PairDataModule
    from lightning_embed.flops.callback import FlopCallback
    from lightning_embed.flops.records import read_runs

    def data():
        return PairDataModule(train=pairs_file, val=pairs_file, batch_size=4, max_val_examples=12)

    untrained = _trainer([]).validate(_module(tiny_backbones), datamodule=data(), verbose=False)[0]["val/loss"]
    runs = tmp_path / "runs.jsonl"
    _trainer([FlopCallback(runs_file=str(runs))], max_epochs=1).fit(_module(tiny_backbones), data())
    (record,) = read_runs(runs)
    assert record.val_examples == 12
    assert record.initial_val_loss == pytest.approx(float(untrained), rel=1e-4)
    # It is the start, not the end: ten steps at a high learning rate moved the held-out loss.
    assert abs(record.val_loss - record.initial_val_loss) > 1e-3 * record.initial_val_loss
    assert record.steps == 10  # the extra pass took no training step (40 pairs, batch 4, one epoch)


def test_no_validation_set_and_opting_out_leave_it_empty(tiny_backbones, pairs_file, tmp_path):
    from lightning_embed.data.datamodule import PairDataModule
    from lightning_embed.flops.callback import FlopCallback
    from lightning_embed.flops.records import read_runs

    runs = tmp_path / "runs.jsonl"
    data = PairDataModule(train=pairs_file, batch_size=4)  # a file source has no validation split
    _trainer([FlopCallback(runs_file=str(runs))], max_steps=2).fit(_module(tiny_backbones), data)
    with_val = PairDataModule(train=pairs_file, val=pairs_file, batch_size=4, max_val_examples=8)
    _trainer([FlopCallback(runs_file=str(runs), initial_validation=False)], max_epochs=1).fit(
        _module(tiny_backbones), with_val)
    first, second = read_runs(runs)
    assert first.initial_val_loss is None and first.val_examples is None
    assert second.initial_val_loss is None and second.val_loss is not None
