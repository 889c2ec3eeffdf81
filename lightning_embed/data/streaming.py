"""Streaming training pairs from ``.jsonl`` / ``.parquet`` shards without loading them into memory.

``PairDataModule(train="data/shard-*.parquet", streaming=True)`` reads the shards matched by a glob as they
are consumed (``train="hf:ORG/NAME"``: the cached Arrow files of a hub split, memory-mapped): a seeded
order of shards per epoch, rows through a shuffle buffer, then greedy packing into conflict-free global
batches (the duplicate-positive rule of :mod:`lightning_embed.data.sampling`, with a
bounded queue instead of a whole-epoch order).

How the work is split. Every global batch holds ``batch_size * world_size`` pairs; DDP rank r trains on
its r-th slice, and of the global batches, dataloader worker w of W tokenizes those with index w mod W
(the loader's round-robin over workers then yields them in order). Every worker of every rank reads the
rows of every shard, and packs them, but tokenizes only its own batches: reading and packing are cheap
next to tokenization, and agreeing on one global order is what keeps ranks in step (all get the same
number of batches, or DDP would hang), keeps the negatives gathered across ranks conflict-free, and sends
each pair to exactly one rank once per epoch. Memory is the shuffle buffer, the packing queue and one
parquet row group (or one jsonl line) per reader, whatever the size of the stream.

Resume. The stream is a function of (seed, epoch); a checkpoint records the epoch and the global batches
done, and the resumed stream re-reads and re-packs up to there without tokenizing (time linear in the
position, no memory), then goes on exactly where the run stopped.
"""

from __future__ import annotations

import glob
import hashlib
import json
import random
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lightning_embed.data.batches import PairBatch, PairExample
from lightning_embed.data.hub import hub_shards, is_hub_spec, load_hub_dataset
from lightning_embed.data.mixtures import _SourceExamples
from lightning_embed.errors import UserError

#: Shard formats a stream reads.
STREAM_FORMATS = (".jsonl", ".parquet")
# Rows decoded at a time from a parquet row group: bounds the Python objects alive per reader.
_PARQUET_CHUNK = 2048


def stream_shards(pattern: str) -> list[Path]:
    """The shards a glob (or a folder) names, sorted.

    Raises:
        UserError: no file matches, or a match is neither ``.jsonl`` nor ``.parquet``.
    """
    path = Path(pattern).expanduser()
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in STREAM_FORMATS)
    else:
        found = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    if not found:
        raise UserError(f"no shard matches {pattern!r}; give a glob of .jsonl or .parquet files "
                        "(e.g. 'data/train-*.parquet') or a folder of them.")
    wrong = [p for p in found if p.suffix.lower() not in STREAM_FORMATS]
    if wrong:
        raise UserError(f"{wrong[0]} is not a .jsonl or .parquet shard; streaming reads only those "
                        "(narrow the glob, or convert the file).")
    return found


def source_shards(source: str) -> list[Path]:
    """The shards of a stream: a glob or folder (:func:`stream_shards`), or the cached Arrow files of a hub
    split ``hf:ORG/NAME[:CONFIG][@SPLIT]`` (:func:`lightning_embed.data.hub.hub_shards`)."""
    return hub_shards(source) if is_hub_spec(source) else stream_shards(source)


def stream_fingerprint(pattern: str) -> dict:
    """``source``, ``shards``, ``bytes`` and a ``sha256`` of the shards' names and sizes (for the run record).

    Names and sizes, not contents: hashing a stream of many gigabytes would delay every run's first step. A
    hub split adds ``datasets``' own fingerprint, which follows the dataset's revision and data files.
    """
    hub = load_hub_dataset(pattern, "train") if is_hub_spec(pattern) else None
    shards = hub_shards(pattern, dataset=hub) if hub is not None else stream_shards(pattern)
    try:
        listing = [(p.name, p.stat().st_size) for p in shards]
    except OSError as err:
        raise UserError(f"cannot read the shards of {pattern!r}: {err.strerror or err}.") from None
    digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]
    found = {"source": pattern, "shards": len(shards), "bytes": sum(size for _, size in listing), "sha256": digest}
    if hub is not None:
        found["fingerprint"] = str(hub._fingerprint)
    return found


def _arrow_reader(path: Path):
    """A reader of an Arrow file (the IPC stream format ``datasets`` caches in), memory-mapped."""
    import pyarrow

    try:
        return pyarrow.ipc.open_stream(pyarrow.memory_map(str(path)))
    except (pyarrow.ArrowException, OSError) as err:
        raise UserError(f"{path} is not a readable Arrow stream file: {err}") from None


def _arrow_batches(path: Path) -> Iterator:
    """The record batches of an Arrow file, one at a time."""
    import pyarrow

    try:
        yield from _arrow_reader(path)
    except (pyarrow.ArrowException, OSError) as err:
        raise UserError(f"{path} is not a readable Arrow stream file: {err}") from None


def shard_columns(path: Path) -> list[str] | None:
    """The column names of a parquet or Arrow shard (None for jsonl, whose rows are checked one by one)."""
    if path.suffix.lower() == ".parquet":
        return _parquet_file(path).schema_arrow.names
    if path.suffix.lower() == ".arrow":
        return _arrow_reader(path).schema.names
    return None


def _parquet_file(path: Path):
    import pyarrow
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pyarrow.ArrowException, OSError) as err:
        raise UserError(f"{path} is not a readable parquet file: {err}") from None


def count_rows(shards: list[Path]) -> int:
    """Rows in all shards: parquet from its metadata, Arrow from its batch headers, jsonl by counting non-blank
    lines (one fast pass)."""
    total = 0
    for shard in shards:
        if shard.suffix.lower() == ".parquet":
            total += _parquet_file(shard).metadata.num_rows
        elif shard.suffix.lower() == ".arrow":
            total += sum(batch.num_rows for batch in _arrow_batches(shard))
        else:
            try:
                with shard.open("rb") as handle:
                    total += sum(1 for line in handle if line.strip())
            except OSError as err:
                raise UserError(f"cannot read shard {shard}: {err.strerror or err}.") from None
    return total


def positive_id(text: str) -> int:
    """A stable id of a positive text (equal texts, equal ids; distinct texts collide with odds 2**-32)."""
    # Equal ids for equal texts without a table of every positive seen (which would grow with the stream).
    return zlib.crc32(text.encode("utf-8"))


class PairStream(IterableDataset):
    """Tokenized training batches streamed from shards (see the module docstring for the split and resume).

    Args:
        shards: the files, in a fixed order (:func:`stream_shards`).
        parse: turns ``(where, row)`` into a :class:`~lightning_embed.data.batches.PairExample`, validating it
            (``where`` names the file and line/row for errors).
        columns: the columns a parquet shard must provide (read only those).
        batch_size: pairs per batch of one process.
        rows: rows in all shards (:func:`count_rows`); the epoch length, ``len()``, is an upper bound from it.
        num_replicas: data-parallel processes.
        rank: this process's rank.
        seed: seed of the shard order and the shuffle buffer (with the epoch).
        shuffle_buffer: rows held for shuffling; 0 or 1: the shards' order as it is.
        unique: keep conflicting pairs (shared positive or query, a negative equal to another's positive)
            out of one global batch.
        collator: tokenizes a list of examples; set before iterating.
    """

    def __init__(self, shards: list[Path], parse: Callable[[str, dict], PairExample], columns: list[str], *,
                 batch_size: int, rows: int, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle_buffer: int = 10_000, unique: bool = True, collator: Callable | None = None):
        self.shards, self.parse, self.columns = list(shards), parse, list(columns)
        self.batch_size, self.rows, self.num_replicas, self.rank = batch_size, rows, num_replicas, rank
        self.seed, self.shuffle_buffer, self.unique, self.collator = seed, shuffle_buffer, unique, collator
        self.epoch = 0
        self._skip: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose order to produce."""
        self.epoch = epoch

    def skip_once(self, epoch: int, batches: int) -> None:
        """Makes the next iteration over ``epoch`` start after its first ``batches`` global batches."""
        self._skip = (epoch, batches)

    def __len__(self) -> int:
        # An upper bound: pairs kept apart by the duplicate-positive rule may leave the last batches short.
        return self.rows // (self.batch_size * self.num_replicas)

    # -- reading ----------------------------------------------------------------------------------------

    def _shard_rows(self, shard: Path) -> Iterator[tuple[str, dict]]:
        try:
            if shard.suffix.lower() == ".parquet":
                index = 0
                for record_batch in _parquet_file(shard).iter_batches(batch_size=_PARQUET_CHUNK,
                                                                      columns=self.columns):
                    for row in record_batch.to_pylist():
                        yield f"{shard}: row {index}", row
                        index += 1
                return
            if shard.suffix.lower() == ".arrow":
                index = 0
                for record_batch in _arrow_batches(shard):
                    record_batch = record_batch.select(self.columns)
                    for start in range(0, record_batch.num_rows, _PARQUET_CHUNK):
                        for row in record_batch.slice(start, _PARQUET_CHUNK).to_pylist():
                            yield f"{shard}: row {index}", row
                            index += 1
                return
            from lightning_embed.data.reading import (
                jsonl_rows,  # here: data imports this module
            )

            for where, row in jsonl_rows(shard):  # read lazily, a line at a time
                yield f"{shard}: {where}", row
        except UnicodeDecodeError:
            raise UserError(f"{shard} is not UTF-8 text; re-save it as UTF-8.") from None
        except OSError as err:
            raise UserError(f"cannot read shard {shard}: {err.strerror or err}.") from None

    def examples(self, epoch: int) -> Iterator[PairExample]:
        """The epoch's pairs: shards in a seeded order, rows through the seeded shuffle buffer."""
        rng = random.Random(self.seed * 1_000_003 + epoch)
        order = list(self.shards)
        rng.shuffle(order)
        buffer: list[PairExample] = []
        for shard in order:
            for where, row in self._shard_rows(shard):
                example = self.parse(where, row)
                if self.shuffle_buffer <= 1:
                    yield example
                elif len(buffer) < self.shuffle_buffer:
                    buffer.append(example)
                else:
                    j = rng.randrange(len(buffer))
                    yield buffer[j]
                    buffer[j] = example
        rng.shuffle(buffer)
        yield from buffer

    def global_batches(self, epoch: int) -> Iterator[list[PairExample]]:
        """Complete, conflict-free global batches (``batch_size * num_replicas`` pairs) of an epoch.

        Greedy as :func:`lightning_embed.data.sampling._pack`: a pair that conflicts with the batch being
        built waits in a queue and is offered first to the next batches; at the end of the stream, pairs
        that still cannot form a complete batch are dropped (as ``drop_last``).
        """
        size = self.batch_size * self.num_replicas
        source = self.examples(epoch)
        if not self.unique:
            batch: list[PairExample] = []
            for example in source:
                batch.append(example)
                if len(batch) == size:
                    yield batch
                    batch = []
            return
        window = max(4 * size, 64)
        waiting: deque[PairExample] = deque()
        exhausted = False
        while True:
            batch, queries, documents, negatives = [], set(), set(), set()

            def offer(e: PairExample) -> bool:
                if (e.query in queries or e.positive in documents or e.positive in negatives
                        or not documents.isdisjoint(e.negatives)):
                    return False
                batch.append(e)
                queries.add(e.query)
                documents.add(e.positive)
                negatives.update(e.negatives)
                return True

            for _ in range(min(len(waiting), window)):
                if len(batch) == size:
                    break
                e = waiting.popleft()
                if not offer(e):
                    waiting.append(e)
            while len(batch) < size and not exhausted:
                e = next(source, None)
                if e is None:
                    exhausted = True
                elif not offer(e):
                    waiting.append(e)
            if len(batch) < size:
                return
            yield batch

    def __iter__(self) -> Iterator[PairBatch]:
        # The epoch and skip are read now (the loader pickles this object into its workers right after).
        epoch, skip = self.epoch, (self._skip[1] if self._skip is not None and self._skip[0] == self.epoch else 0)
        return self._batches(epoch, skip)

    def sequence(self, epoch: int) -> Iterator[tuple[int, list[PairExample]]]:
        """(source, global batch) pairs of an epoch; one stream is source 0."""
        return ((0, batch) for batch in self.global_batches(epoch))

    def _collate(self, source: int, examples: list[PairExample], global_size: int) -> PairBatch:
        return self.collator(examples)

    def _batches(self, epoch: int, skip: int) -> Iterator[PairBatch]:
        if self.collator is None:
            raise UserError("the stream has no collator to tokenize batches: train it with an EmbeddingModule.")
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        start = self.rank * self.batch_size
        for index, (source, batch) in enumerate(self.sequence(epoch)):
            if index < skip or (index - skip) % workers != worker:
                continue
            yield self._collate(source, batch[start : start + self.batch_size], len(batch))


class MixtureStream(PairStream):
    """Streams of several named sources, every global batch from one source (:mod:`lightning_embed.data.mixtures`).

    The sequence of sources is a function of (seed, epoch), as for in-memory mixtures; since a stream's
    number of batches is only bounded in advance (the duplicate-positive rule may leave its last ones short),
    a source that runs out early is passed over, which every rank and worker does alike (they all read all
    sources). ``proportional``: each source's batches once, interleaved at random; ``round_robin``: in turn
    until one source runs out; ``weighted``: sources drawn by weight, a spent source starting another pass.

    Args:
        streams: one :class:`PairStream` per source, in source order (same batch size, ranks and seed).
        weights: the sources' weights (``weighted``).
        mixture: the mixing rule.
        collator: a :class:`~lightning_embed.data.mixtures.MixtureCollator` (per-source prompts, batch marks).
    """

    def __init__(self, streams: list[PairStream], weights: list[float], mixture: str, collator: Callable | None = None):
        first = streams[0]
        super().__init__([], first.parse, [], batch_size=first.batch_size, rows=sum(s.rows for s in streams),
                         num_replicas=first.num_replicas, rank=first.rank, seed=first.seed, collator=collator)
        self.streams, self.weights, self.mixture = streams, weights, mixture

    def __len__(self) -> int:
        bounds = [len(s) for s in self.streams]
        return len(bounds) * min(bounds) if self.mixture == "round_robin" else sum(bounds)

    def sequence(self, epoch: int) -> Iterator[tuple[int, list[PairExample]]]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        for stream in self.streams:  # the ranks and seed in use now (the module sets them on the mixture)
            stream.num_replicas, stream.rank, stream.seed = self.num_replicas, self.rank, self.seed
        batches = [s.global_batches(epoch) for s in self.streams]
        bounds = [len(s) for s in self.streams]
        if self.mixture == "round_robin":
            while True:  # whole rounds only, so every source gets as many batches
                round_ = [next(it, None) for it in batches]
                if any(batch is None for batch in round_):
                    return
                yield from enumerate(round_)
        if self.mixture == "proportional":
            labels = [s for s, n in enumerate(bounds) for _ in range(n)]
            rng.shuffle(labels)
        else:
            labels = rng.choices(range(len(bounds)), weights=self.weights, k=sum(bounds))
        passes = [0] * len(bounds)
        for s in labels:
            batch = next(batches[s], None)
            if batch is None and self.mixture == "weighted":
                passes[s] += 1
                batches[s] = self.streams[s].global_batches(epoch + passes[s] * 1_000_003)
                batch = next(batches[s], None)
            if batch is not None:
                yield s, batch

    def _collate(self, source: int, examples: list[PairExample], global_size: int) -> PairBatch:
        marked = _SourceExamples(examples)
        marked.sources, marked.counts = [source] * len(examples), {source: global_size}
        return self.collator(marked)


def _as_is(batch: PairBatch) -> PairBatch:
    return batch


class StreamLoader(DataLoader):
    """The training loader of a stream: sets the stream's epoch from the trainer before each pass.

    Lightning calls ``set_epoch`` on a loader's sampler, and an iterable dataset has none of its own; the
    workers are not persistent, so each pass sends them the stream with its epoch and resume position.
    """

    def __init__(self, stream: PairStream, owner, num_workers: int = 0):
        super().__init__(stream, batch_size=None, collate_fn=_as_is, num_workers=num_workers,
                         persistent_workers=False, pin_memory=torch.cuda.is_available())
        self.owner = owner

    def __iter__(self):
        trainer = getattr(self.owner, "trainer", None)
        if trainer is not None:
            epoch = trainer.fit_loop.epoch_progress.current.processed  # what Lightning gives samplers
            skip = self.dataset._skip
            if skip is not None and skip[0] != epoch:
                # Saved at the end of an epoch whose stream ran short of len(): Lightning goes on with the next.
                self.dataset._skip = None
            self.dataset.set_epoch(epoch)
        iterator = super().__iter__()
        self.dataset._skip = None  # only the first pass after a resume skips
        return iterator

    # Stateful in Lightning's sense, as the map-style training loader: the position is restored through the
    # data module's own checkpoint state.
    def state_dict(self) -> dict[str, int]:
        return self.owner.state_dict() if self.owner is not None else {}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        return None


__all__ = ["STREAM_FORMATS", "MixtureStream", "PairStream", "StreamLoader", "count_rows", "positive_id",
           "shard_columns", "source_shards", "stream_fingerprint", "stream_shards"]
