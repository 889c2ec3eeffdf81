"""The data module (lightning_embed/data/datamodule.py): too little data, bad options, the collator it takes from the
model, reshuffling each epoch, length grouping by the collator's token lengths."""

from __future__ import annotations

import pytest
import torch

from lightning_embed.data.batches import PairBatch, PairCollator
from lightning_embed.data.datamodule import PairDataModule
from lightning_embed.data.reading import read_examples
from lightning_embed.errors import UserError
from lightning_embed.models.backbones import load_tokenizer
from tests.data.pair_files import ROWS, bad, real_token_share, write


def test_empty_dataset_and_fewer_than_one_batch(tmp_path):
    with pytest.raises(UserError, match=r"holds no examples"):
        read_examples(bad(tmp_path, "empty.jsonl", "\n"))
    dm = PairDataModule(train=str(write(tmp_path / "pairs.jsonl")), batch_size=16)
    with pytest.raises(UserError, match=r"12 training examples, fewer than one batch \(batch_size=16"):
        dm.setup("fit")
    rows = [{"query": f"q{i}", "positive": f"p{i % 3}"} for i in range(12)]
    dm = PairDataModule(train=str(write(tmp_path / "dups.jsonl", rows)), batch_size=4)
    with pytest.raises(UserError, match=r"only 3 distinct positives.*unique_positives_per_batch=False"):
        dm.setup("fit")


def test_bad_options(tmp_path):
    with pytest.raises(UserError, match=r"batch_size=1 with num_negatives=0.*raise batch_size.*hard negatives"):
        PairDataModule(batch_size=1)
    PairDataModule(batch_size=1, num_negatives=1)  # one query with hard negatives is a valid contrast
    known = r"unknown builtin data source 'builtin:nope'; known: builtin:python-code, builtin:stdlib-code"
    with pytest.raises(UserError, match=known):
        PairDataModule(train="builtin:nope")
    with pytest.raises(UserError, match=r"num_negatives=-1"):
        PairDataModule(num_negatives=-1)
    folder = tmp_path / "dict"
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(folder))
    with pytest.raises(UserError, match=r"holds several splits \(train\); point to one split's folder"):
        read_examples(str(folder))


def test_a_loader_needs_a_collator(tmp_path):
    dm = PairDataModule(train=str(write(tmp_path / "pairs.jsonl")), batch_size=4)
    dm.setup("fit")
    with pytest.raises(UserError, match=r"no collator.*make_collator\(\).*PairCollator\(tokenizer\)"):
        dm.train_dataloader()


def test_fit_takes_the_collator_from_the_model_and_reshuffles_each_epoch(tmp_path, tokenizer):
    import lightning
    from torch.utils.data import DistributedSampler

    seen: list[list[int]] = []

    class Stub(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(()))

        def make_collator(self):
            return PairCollator(tokenizer, query_max_length=8, document_max_length=8)

        def training_step(self, batch: PairBatch, _):
            assert isinstance(batch, PairBatch) and batch.documents["input_ids"].shape[0] == 4 * 2
            seen.append(batch.positive_ids.tolist())
            return self.weight * batch.queries["attention_mask"].sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    dm = PairDataModule(train=str(write(tmp_path / "pairs.jsonl")), num_negatives=1, batch_size=4, seed=1)
    trainer = lightning.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(Stub(), datamodule=dm)
    assert isinstance(dm.collator, PairCollator)
    assert isinstance(trainer.train_dataloader.sampler, DistributedSampler)  # so Lightning keeps ours
    assert len(seen) == 6 and seen[:3] != seen[3:]
    epochs = []
    for epoch in range(2):
        dm._train_sampler.set_epoch(epoch)
        epochs += [[dm.train_examples[i].positive_id for i in b] for b in dm._train_sampler]
    assert seen == epochs


def test_data_module_groups_by_the_collators_token_lengths(tiny_backbones):

    data = PairDataModule(train="builtin:stdlib-code", batch_size=8, group_by_length=True, max_train_examples=400)
    data.collator = PairCollator(load_tokenizer(tiny_backbones["llama"]), 256, 1024)
    data.setup("fit")
    examples = data.train_examples
    plain = PairDataModule(train="builtin:stdlib-code", batch_size=8, max_train_examples=400)
    plain.collator = data.collator
    plain.setup("fit")
    grouped = real_token_share(list(data._train_sampler), examples, data.collator)
    mixed = real_token_share(list(plain._train_sampler), examples, data.collator)
    assert isinstance(data._train_sampler._lengths[0], tuple)  # sorted by token, not character, lengths
    assert grouped > mixed + 0.1, (grouped, mixed)
