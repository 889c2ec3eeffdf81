"""The Lightning data module of a fit: pairs read once per process, batched, tokenized, resumable.

Sources are read by :mod:`lightning_embed.data.reading` (every row validated when the module is set up, so a
bad file fails before training starts), streamed by :mod:`lightning_embed.data.streaming`, or mixed by
:mod:`lightning_embed.data.mixtures`.

In-batch contrastive training treats every other document of a batch as a negative of a query, so two
examples that share a positive, a query, or whose hard negative is the other's positive would teach the
model to push apart texts that match. :class:`~lightning_embed.data.sampling.PairBatchSampler` keeps such
examples in different batches.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Literal

import lightning
import torch
from torch.utils.data import DataLoader

from lightning_embed.data import mixtures, streaming
from lightning_embed.data.batches import PairCollator, PairExample
from lightning_embed.data.hub import is_hub_spec
from lightning_embed.data.mixtures import MixtureName, MixtureSource
from lightning_embed.data.reading import (
    BUILTIN_PREFIX,
    _builtin,
    _check_columns,
    _Columns,
    _negatives,
    _text,
    read_examples,
)
from lightning_embed.data.sampling import PairBatchSampler, held_out_sampler
from lightning_embed.errors import UserError


def _stream_example(columns: _Columns, where: str, row: dict) -> PairExample:
    """One validated example of a streamed row (a module-level function: workers may unpickle it)."""
    _check_columns(where, list(row), columns)
    if columns.num_negatives and isinstance(row.get(columns.negatives), str):
        # Triplet data (anchor, positive, negative) holds one negative as text, not a list (as hub_rows).
        row = {**row, columns.negatives: [row[columns.negatives]]}
    positive = _text(where, row, columns.positive, "positive")
    return PairExample(_text(where, row, columns.query, "query"), positive, _negatives(where, row, columns, positive),
                       streaming.positive_id(positive))


def _check_streaming(data: PairDataModule) -> None:
    if any(spec.startswith(BUILTIN_PREFIX) for spec in data._train_specs()):
        raise UserError("streaming reads globs or folders of .jsonl/.parquet shards or hf: datasets; builtin sources "
                        "are read into memory: give shard globs, or set streaming: false.")
    if data.sources is not None and not data.same_source_batches:
        raise UserError("a streamed mixture draws every batch from one source; set same_source_batches: true "
                        "(or streaming: false to shuffle the sources together).")
    if data.group_by_length:
        raise UserError("group_by_length sorts a whole epoch by length, which a stream cannot; set "
                        "group_by_length: false with streaming: true.")
    if data.max_train_examples is not None:
        raise UserError("max_train_examples draws a subset of data in memory; with streaming: true, bound training "
                        "with trainer.max_steps instead (or leave max_train_examples unset).")
    if data.shuffle_buffer < 0:
        raise UserError(f"shuffle_buffer={data.shuffle_buffer} must be 0 (no shuffling) or more.")


class _TrainLoader(DataLoader):
    # Stateful in Lightning's sense (state_dict/load_state_dict), so Lightning knows the loader resumes
    # mid-epoch and does not warn of "unreliable results". The position is restored through the data
    # module's own checkpoint state, which Lightning loads before any loader is built (docs/bugs.md:
    # the loader state comes back too late), so loading the loader's copy has nothing left to do.
    def state_dict(self) -> dict[str, int]:
        owner = getattr(self, "owner", None)
        return owner.state_dict() if owner is not None else {}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        return None


class _BatchView(torch.utils.data.Dataset):
    # The sampler yields whole batches (lists of indices), so the loader indexes with a list.
    def __init__(self, examples: list[PairExample]):
        self.examples = examples

    def __getitem__(self, indices: list[int]) -> list[PairExample]:
        return [self.examples[i] for i in indices]

    def __len__(self) -> int:
        return len(self.examples)


# ---------------------------------------------------------------------------------------------- the module


class PairDataModule(lightning.LightningDataModule):
    """Query/positive pairs (and optional hard negatives) for contrastive fine-tuning.

    The collator (tokenizer, max lengths, prompts) comes from the model: at setup the data module takes
    ``trainer.lightning_module.make_collator()`` unless ``collator`` was set by hand
    (``datamodule.collator = PairCollator(tokenizer)``). All sources are read and validated at setup.

    Args:
        train: training pairs: a ``.jsonl``, ``.csv``, ``.tsv`` or ``.parquet`` file, a saved Hugging Face
            dataset folder, a hub dataset ``hf:ORG/NAME[:CONFIG][@SPLIT]`` (default split ``train``; loaded
            through ``datasets.load_dataset`` and its cache), or ``builtin:NAME`` (``builtin:stdlib-code``:
            Python docstrings -> code;
            ``builtin:python-code``: the same from the standard library and the installed dependencies).
            Or a mapping of named sources (:class:`~lightning_embed.data.mixtures.MixtureSource`: path, columns,
            prompts, weight, in_batch_negatives), mixed as ``mixture`` says.
        val: validation pairs, same kinds (``hf:`` without a split reads ``validation``, ``dev`` or ``test``);
            None: a builtin ``train`` source's held-out split, else none.
        test: test pairs, same kinds (a builtin source gives its held-out split); None: no test set.
        query_column: column (jsonl key) holding the query text.
        positive_column: column holding the positive (relevant) document.
        negatives_column: column holding a list of hard-negative documents (in csv/tsv a JSON-encoded
            list); only read when ``num_negatives > 0``.
        num_negatives: hard negatives per query (each example keeps its first this many; an example with
            fewer is an error). 0: only the other documents of the batch act as negatives.
        batch_size: training pairs per batch (per process); a query's in-batch negatives are the other
            documents of its batch.
        val_batch_size: validation/test pairs per batch; None: ``batch_size``.
        max_train_examples: train on a fixed random subset of this many pairs (None: all); a larger
            subset contains a smaller one, whatever the seed. For a mixture: per source.
        max_val_examples: validate on a fixed random subset of this many pairs (None: all).
        unique_positives_per_batch: keep pairs that share a positive or a query, or whose hard negative
            is another's positive, out of one training batch (they would be false in-batch negatives).
            Validation batches always do this.
        num_workers: DataLoader worker processes for tokenization (0: in the training process).
        seed: seed of the training order; each epoch gets its own reproducible order.
        group_by_length: build training batches from pairs of similar token length (less padding);
            batches are still visited in a random, seeded order. It changes which pairs share a batch (and so
            the in-batch negatives), hence it is an option. Sequence packing (``model.pack_sequences``, on by
            default where the backbone allows it) removes padding without changing the batches.
        mixture: with a mapping of sources: ``proportional`` (every batch of every source once per epoch),
            ``round_robin`` (sources in turn, as many batches each) or ``weighted`` (by the sources' weights).
        same_source_batches: with a mapping of sources, draw every batch from one source (also across DDP
            ranks); None: true. False shuffles the sources together (``proportional`` only).
        streaming: read ``train`` (a glob or folder of ``.jsonl``/``.parquet`` shards, or a hub dataset, read
            from its cached Arrow files) as it is consumed instead of into memory
            (:mod:`lightning_embed.data.streaming`): tokenization in the loader's workers, each pair once per
            epoch on one rank, exact resume. ``len()`` of an epoch is an upper bound.
        shuffle_buffer: with ``streaming``, rows held to shuffle the stream (0: the shards' order).
    """

    def __init__(self, train: str | dict[str, MixtureSource] = "builtin:stdlib-code", val: str | None = None,
                 test: str | None = None,
                 query_column: str = "query", positive_column: str = "positive",
                 negatives_column: str = "negatives", num_negatives: int = 0, batch_size: int = 32,
                 val_batch_size: int | None = None, max_train_examples: int | None = None,
                 max_val_examples: int | None = None, unique_positives_per_batch: bool = True,
                 num_workers: int = 0, seed: int = 0, group_by_length: bool = False,
                 mixture: MixtureName = "proportional", same_source_batches: bool | None = None,
                 streaming: bool = False, shuffle_buffer: int = 10_000):
        super().__init__()
        if num_negatives < 0:
            raise UserError(f"num_negatives={num_negatives} must be 0 or more.")
        if batch_size < 1 or (val_batch_size is not None and val_batch_size < 1):
            raise UserError(f"batch sizes must be at least 1 (batch_size={batch_size}, "
                            f"val_batch_size={val_batch_size}).")
        if batch_size < 2 and num_negatives == 0:
            raise UserError(f"batch_size={batch_size} with num_negatives=0 leaves a query no negative to contrast "
                            "with; raise batch_size to 2 or more, or add hard negatives (num_negatives > 0).")
        for name, value in (("max_train_examples", max_train_examples), ("max_val_examples", max_val_examples)):
            if value is not None and value < 1:
                raise UserError(f"{name}={value} must be at least 1, or None for all examples.")
        if num_workers < 0:
            raise UserError(f"num_workers={num_workers} must be 0 or more.")
        #: The named sources of a mixture (None: ``train`` is one source).
        self.sources = mixtures.mixture_sources(train, num_negatives) if isinstance(train, Mapping) else None
        self.mixture, self.same_source_batches = mixture, same_source_batches is not False
        self._offsets: list[int] = []
        self.train, self.val, self.test = train, val, test
        for spec in (*self._train_specs(), val, test):
            if spec is not None and spec.startswith(BUILTIN_PREFIX):
                _builtin(spec)  # an unknown name fails now, not at setup
        self.query_column, self.positive_column, self.negatives_column = query_column, positive_column, negatives_column
        self.num_negatives, self.batch_size = num_negatives, batch_size
        self.val_batch_size = val_batch_size if val_batch_size is not None else batch_size
        self.max_train_examples, self.max_val_examples = max_train_examples, max_val_examples
        self.unique_positives_per_batch, self.num_workers = unique_positives_per_batch, num_workers
        self.seed, self.group_by_length = seed, group_by_length
        self.streaming, self.shuffle_buffer = streaming, shuffle_buffer
        if streaming:
            _check_streaming(self)
        #: Tokenizes batches; taken from the model at setup when left None.
        self.collator: PairCollator | None = None
        self._collator_from_model = False
        self.train_examples: list[PairExample] | None = None
        self.val_examples: list[PairExample] | None = None
        self.test_examples: list[PairExample] | None = None
        self._train_sampler: PairBatchSampler | None = None
        self._resume_position: tuple[int, int] | None = None
        self._token_lengths: tuple[object, list, list[tuple[int, int]]] | None = None

    @property
    def val_source(self) -> str | None:
        """The validation source actually used: ``val``, or a builtin ``train`` source's held-out split."""
        if self.val is None and self.sources is None and self.train.startswith(BUILTIN_PREFIX):
            return self.train
        return self.val

    def prepare_data(self) -> None:
        """Mines and caches builtin sources and downloads ``hf:`` ones (once, on one process per machine).

        The other processes wait at Lightning's barrier and then read the datasets cache, instead of each
        downloading the same files behind ``datasets``' file lock.
        """
        roles = {(spec, "train") for spec in self._train_specs()}
        roles |= {(spec, "val") for spec in (self.val_source, self.test) if spec is not None}
        for spec, role in sorted(roles):
            if spec.startswith(BUILTIN_PREFIX):
                _builtin(spec).prepare()
            elif is_hub_spec(spec):
                from lightning_embed.data.hub import load_hub_dataset

                load_hub_dataset(spec, role)

    def _train_specs(self) -> list[str]:
        return [s.path for s in self.sources.values()] if self.sources is not None else [self.train]

    def _read(self, spec: str, split: Literal["train", "val"], max_examples: int | None) -> list[PairExample]:
        return read_examples(spec, query_column=self.query_column, positive_column=self.positive_column,
                             negatives_column=self.negatives_column, num_negatives=self.num_negatives,
                             split=split, max_examples=max_examples)

    def setup(self, stage: str | None = None) -> None:
        """Reads and validates the splits the stage needs, and takes the collator from the model.

        Args:
            stage: ``"fit"``, ``"validate"``, ``"test"``, or None for all.
        """
        # A collator the model made is remade for each model: a data module reused across backbones (a
        # sweep) must not tokenize for the previous one. A collator set by hand is kept.
        if (self.collator is None or self._collator_from_model) and self.trainer is not None:
            make = getattr(self.trainer.lightning_module, "make_collator", None)
            if callable(make):
                self.collator, self._collator_from_model = make(), True
        if stage in (None, "fit") and self.streaming:
            self._train_sampler = self._make_stream()  # fails now if the stream is shorter than one batch
        elif stage in (None, "fit"):
            if self.train_examples is None:
                self.train_examples = self._read_train()
            self._train_sampler = self._make_train_sampler(self.train_examples)  # fails now if no batch fits
        if stage in (None, "fit", "validate") and self.val_examples is None and self.val_source is not None:
            self.val_examples = self._read(self.val_source, "val", self.max_val_examples)
        if stage in (None, "fit", "validate") and self.val_examples is not None:
            self._eval_sampler(self.val_examples, self.val_source)  # fails now, before training, if too few
        if stage in (None, "test") and self.test_examples is None and self.test is not None:
            self.test_examples = self._read(self.test, "val", None)

    def _make_stream(self) -> streaming.PairStream:
        if self.collator is None:
            raise UserError("the data module has no collator to tokenize batches: train it with an EmbeddingModule "
                            "(which provides make_collator()), or set datamodule.collator = PairCollator(tokenizer).")
        if self.sources is None:
            return self._source_stream(self.train, None, f"the stream {self.train!r}", self.collator)
        if self.mixture not in mixtures.MIXTURES:
            raise UserError(f"unknown mixture {self.mixture!r}; use one of {', '.join(mixtures.MIXTURES)}.")
        streams = [self._source_stream(s.path, s, f"mixture source {name!r}", None) for name, s in self.sources.items()]
        return streaming.MixtureStream(streams, [s.weight for s in self.sources.values()], self.mixture,
                                       mixtures.MixtureCollator(self.collator, self.sources))

    def _source_stream(self, pattern: str, source: MixtureSource | None, where: str, collator) -> streaming.PairStream:
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        shards = streaming.source_shards(pattern)
        columns = _Columns(getattr(source, "query_column", None) or self.query_column,
                           getattr(source, "positive_column", None) or self.positive_column,
                           getattr(source, "negatives_column", None) or self.negatives_column, self.num_negatives)
        for shard in shards:
            names = streaming.shard_columns(shard)
            if names is not None:
                _check_columns(pattern if is_hub_spec(pattern) else str(shard), names, columns)
        rows = streaming.count_rows(shards)
        if rows < self.batch_size * world:
            raise UserError(f"{where} has {rows} rows, fewer than one batch (batch_size={self.batch_size} x {world} "
                            "process(es)); lower batch_size or add data.")
        return streaming.PairStream(shards, functools.partial(_stream_example, columns), columns.needed(),
                                    batch_size=self.batch_size, rows=rows, num_replicas=world, rank=rank,
                                    seed=self.seed, shuffle_buffer=self.shuffle_buffer,
                                    unique=self.unique_positives_per_batch, collator=collator)

    def _read_train(self) -> list[PairExample]:
        if self.sources is None:
            return self._read(self.train, "train", self.max_train_examples)
        examples, self._offsets = mixtures.read_mixture(self.sources, lambda s: read_examples(
            s.path, query_column=s.query_column or self.query_column, split="train",
            positive_column=s.positive_column or self.positive_column, num_negatives=self.num_negatives,
            negatives_column=s.negatives_column or self.negatives_column, max_examples=self.max_train_examples))
        return examples

    def _make_train_sampler(self, examples: list[PairExample]) -> PairBatchSampler:
        if self.sources is None:
            return self._pair_sampler(examples, self.train, self._lengths(examples))
        lengths = self._lengths(examples)
        return mixtures.mixture_sampler(
            self.sources, self._offsets, len(examples), mixture=self.mixture,
            same_source_batches=self.same_source_batches,
            make=lambda a, b, where: self._pair_sampler(examples[a:b], where, lengths and lengths[a:b]))

    def _pair_sampler(self, examples: list[PairExample], where: str, lengths: list | None) -> PairBatchSampler:
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        if len(examples) < self.batch_size * world:
            raise UserError(f"{where} has {len(examples)} training examples, fewer than one batch "
                            f"(batch_size={self.batch_size} x {world} process(es)); lower batch_size or add data.")
        sampler = PairBatchSampler(examples, self.batch_size, shuffle=True, drop_last=True, seed=self.seed,
                                   unique=self.unique_positives_per_batch, group_by_length=self.group_by_length,
                                   num_replicas=world, rank=rank, lengths=lengths)
        if len(sampler) == 0:
            distinct = len({e.positive for e in examples})
            raise UserError(f"{where} has only {distinct} distinct positives, too few for one batch of "
                            f"{self.batch_size} distinct positives per process; lower batch_size or set "
                            "unique_positives_per_batch=False.")
        return sampler

    def _lengths(self, examples: list[PairExample]) -> list[tuple[int, int]] | None:
        if not (self.group_by_length and self.collator is not None and hasattr(self.collator, "token_lengths")):
            return None
        # Token counts as this model's collator will cut them; computed once per collator.
        cached = self._token_lengths
        if cached is None or cached[0] is not self.collator or cached[1] is not examples:
            self._token_lengths = cached = (self.collator, examples, self.collator.token_lengths(examples))
        return cached[2]

    def _loader(self, examples: list[PairExample], sampler: PairBatchSampler, kind: type = DataLoader) -> DataLoader:
        if self.collator is None:
            raise UserError("the data module has no collator to tokenize batches: train it with an EmbeddingModule "
                            "(which provides make_collator()), or set datamodule.collator = PairCollator(tokenizer).")
        # A generator of its own: a loader otherwise draws its base seed from the global generator each
        # epoch, so a resumed run (which starts its loaders at other times) would draw other dropout masks.
        dataset, collate = _BatchView(examples), self.collator
        if kind is _TrainLoader and self.sources is not None:  # batches that know their source
            dataset = mixtures.MixtureView(examples, self._offsets)
            collate = mixtures.MixtureCollator(self.collator, self.sources)
        return kind(dataset, sampler=sampler, batch_size=None, collate_fn=collate,
                    num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                    pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(self.seed))

    def _eval_loader(self, examples: list[PairExample] | None, where: str | None) -> DataLoader | list:
        if examples is None:
            return []  # Lightning skips a stage whose loader is empty
        return self._loader(examples, self._eval_sampler(examples, where))

    def _eval_sampler(self, examples: list[PairExample], where: str | None) -> PairBatchSampler:
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        return held_out_sampler(examples, self.val_batch_size, world, rank, where or "the held-out set")

    def train_dataloader(self) -> DataLoader:
        """Shuffled (by seed and epoch), conflict-free, full batches."""
        if self.streaming:
            self._train_sampler = stream = self._make_stream()
            stream.set_epoch(self.trainer.current_epoch if self.trainer is not None else 0)
            self.position_sampler(stream)
            return streaming.StreamLoader(stream, self, self.num_workers)
        if self.train_examples is None:
            self.setup("fit")
        self._train_sampler = self._make_train_sampler(self.train_examples)  # for the current process layout
        self._train_sampler.set_epoch(self.trainer.current_epoch if self.trainer is not None else 0)
        self.position_sampler(self._train_sampler)
        loader = self._loader(self.train_examples, self._train_sampler, _TrainLoader)
        loader.owner = self
        return loader

    def position_sampler(self, sampler: PairBatchSampler) -> None:
        """Moves ``sampler`` to the position a checkpoint recorded (once; nothing when none was loaded)."""
        if self._resume_position is None:
            return
        epoch, done = self._resume_position
        self._resume_position = None
        if done >= len(sampler):
            # Saved at the end of an epoch: Lightning goes on with the next one, and may iterate the
            # loader before it calls set_epoch for it.
            sampler.set_epoch(epoch + 1)
        else:
            sampler.set_epoch(epoch)
            sampler.skip_once(epoch, done)

    # Lightning restores the loop counters of a mid-epoch checkpoint but restarts a plain DataLoader at the
    # epoch's first batch, which would replay batches; the data module's own checkpoint state (restored
    # before the loaders are built) records how far into the epoch training got, and the sampler skips it.
    def state_dict(self) -> dict[str, int]:
        """The position in the training epoch (saved in checkpoints for an exact mid-epoch resume)."""
        if self.trainer is None or self._train_sampler is None:
            return {}
        # `processed` counts batches whose optimisation step is done (a prefetched batch is not).
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": int(self._train_sampler.epoch), "batches_done": int(done)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Makes the next training loader resume after the batches a checkpoint had trained on."""
        if state_dict:
            self._resume_position = (int(state_dict["epoch"]), int(state_dict["batches_done"]))

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches in file order, distinct positives per batch; empty when there is no val set."""
        if self.val_examples is None and self.val_source is not None:
            self.setup("validate")
        return self._eval_loader(self.val_examples, self.val_source)

    def test_dataloader(self) -> DataLoader:
        """Test batches in file order, distinct positives per batch."""
        if self.test is None:
            raise UserError("no test data: set the data module's test option to a file or builtin:NAME.")
        if self.test_examples is None:
            self.setup("test")
        return self._eval_loader(self.test_examples, self.test)
