"""Batching pairs: conflict-free batches (no false in-batch negatives), length grouping, DDP sharding.

Two examples conflict when they share a positive text, a query text, or one's hard negative is the
other's positive: in one batch, one would be scored as a negative of the other.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DistributedSampler

from lightning_embed.errors import UserError

if TYPE_CHECKING:
    from lightning_embed.data.batches import PairExample

# group_by_length sorts by length inside windows of this many batches: enough to find similar lengths,
# few enough that the epoch stays well mixed.
_LENGTH_WINDOW_BATCHES = 50
# With token lengths, documents are grouped in buckets of this many tokens, queries sorted within a bucket.
_LENGTH_BUCKET_TOKENS = 8


# ---------------------------------------------------------------------------------------------- batching


def _pack(order: list[int], batch_size: int, keys: tuple[list[int], list[int], list[frozenset]] | None,
          complete_only: bool) -> list[list[int]]:
    """Cuts an index order into batches in which no two examples conflict (see the module docstring).

    Greedy and deterministic: an example that conflicts with the batch being built waits in a queue and is
    offered first to the next batches, so it is delayed by a few batches, not moved to the end of the epoch.
    """
    if keys is None:
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        return [b for b in batches if len(b) == batch_size] if complete_only else batches
    query_ids, positive_ids, negative_ids = keys
    # Scanning the whole queue for every batch would be quadratic on degenerate data (every example
    # sharing one positive); a window bounds the work and still lets every waiting example in eventually.
    window = max(4 * batch_size, 64)
    waiting: deque[int] = deque()
    source = iter(order)
    batches = []
    while True:
        batch: list[int] = []
        queries: set[int] = set()
        documents: set[int] = set()
        negatives: set[int] = set()

        def offer(i: int) -> bool:
            if (query_ids[i] in queries or positive_ids[i] in documents or positive_ids[i] in negatives
                    or not documents.isdisjoint(negative_ids[i])):
                return False
            batch.append(i)
            queries.add(query_ids[i])
            documents.add(positive_ids[i])
            negatives.update(negative_ids[i])
            return True

        for _ in range(min(len(waiting), window)):
            if len(batch) == batch_size:
                break
            i = waiting.popleft()
            if not offer(i):
                waiting.append(i)
        while len(batch) < batch_size:
            i = next(source, None)
            if i is None:
                break
            if not offer(i):
                waiting.append(i)
        if not batch or (complete_only and len(batch) < batch_size):
            return batches
        batches.append(batch)


class PairBatchSampler(DistributedSampler):
    """Yields batches of example indices in which no two examples would be false negatives of each other.

    Two examples conflict when they share a positive text, a query text, or one's hard negative is the
    other's positive. The epoch's order is a permutation seeded by ``seed`` and the epoch (set by Lightning
    through :meth:`set_epoch`, also when resuming), so a run and its resumption see the same batches.

    It is a ``DistributedSampler`` so that Lightning does not wrap it in one: under DDP every rank packs
    the same global batches of ``batch_size * num_replicas`` and takes its slice of each. So the union of
    one step's batches across ranks (what a loss that gathers across devices contrasts) is conflict-free
    too, and all ranks get the same number of training batches (one more would hang the all-reduce).

    Args:
        examples: the examples of one split.
        batch_size: examples per batch of one process.
        shuffle: a new seeded order each epoch (training); otherwise the examples' order.
        drop_last: drop the final incomplete batch (training: keeps the contrastive batch constant).
        unique: keep conflicting examples apart; when False, batches are plain slices of the order.
        group_by_length: draw batches of similar length (less padding); the order of the batches is still
            shuffled. Only with ``shuffle``. Examples are sorted by length inside windows of 50 batches of a
            seeded random order, so batches stay random across the length buckets and reproducible by seed.
        lengths: each example's (query, documents) token counts (:meth:`PairCollator.token_lengths`), used
            by ``group_by_length`` to sort by the padded widths queries and documents will actually have
            (documents in buckets of 8 tokens, then queries); None: by character length of the texts.
        seed: seed of the shuffle.
        num_replicas: number of data-parallel processes.
        rank: this process's rank among them.
    """

    def __init__(self, examples: Sequence[PairExample], batch_size: int, *, shuffle: bool = False,
                 drop_last: bool = False, unique: bool = True, group_by_length: bool = False, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0, lengths: Sequence[tuple[int, int]] | None = None):
        # DistributedSampler.__init__ is not called: it needs an initialised process group and a dataset
        # to shard by index, and this class shards batches instead. The public attributes are the same.
        if batch_size < 1:
            raise UserError(f"batch_size={batch_size} must be at least 1.")
        self.num_replicas, self.rank, self.epoch, self.seed = num_replicas, rank, 0, seed
        self.shuffle, self.drop_last, self.batch_size = shuffle, drop_last, batch_size
        self.group_by_length = group_by_length and shuffle
        self._size = len(examples)
        self._keys = _conflict_keys(examples) if unique else None
        if lengths is not None and len(lengths) != len(examples):
            raise ValueError(f"{len(lengths)} lengths for {len(examples)} examples")
        self._lengths: list = []
        if self.group_by_length and lengths is not None:
            # Documents dominate the padded cost; within a document bucket, queries of similar length.
            self._lengths = [(d // _LENGTH_BUCKET_TOKENS, q) for q, d in lengths]
        elif self.group_by_length:
            self._lengths = [len(e.query) + len(e.positive) + sum(map(len, e.negatives)) for e in examples]
        self._packed: tuple[int, list[list[int]]] | None = None
        self._skip: tuple[int, int] | None = None

    def skip_once(self, epoch: int, batches: int) -> None:
        """Makes the next iteration over ``epoch`` start after its first ``batches`` batches (mid-epoch resume)."""
        self._skip = (epoch, batches)

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose order to produce."""
        self.epoch = epoch

    def _generator(self) -> torch.Generator:
        # Not seed + epoch: seed 1 at epoch 0 would replay seed 0's epoch 1.
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)

    def batches(self) -> list[list[int]]:
        """The global batches (all processes together) of the current epoch."""
        if self._packed is not None and self._packed[0] == self.epoch:
            return self._packed[1]
        generator = self._generator()
        order = torch.randperm(self._size, generator=generator).tolist() if self.shuffle else list(range(self._size))
        if self.group_by_length:
            window = self.batch_size * self.num_replicas * _LENGTH_WINDOW_BATCHES
            order = [i for s in range(0, len(order), window)
                     for i in sorted(order[s : s + window], key=self._lengths.__getitem__)]
        packed = _pack(order, self.batch_size * self.num_replicas, self._keys, complete_only=self.drop_last)
        if self.group_by_length:  # otherwise batch lengths would rise and fall in a saw-tooth over the epoch
            packed = [packed[i] for i in torch.randperm(len(packed), generator=generator).tolist()]
        self._packed = (self.epoch, packed)
        return packed

    def _mine(self) -> list[list[int]]:
        start = self.rank * self.batch_size
        # Without drop_last the final global batch may be short, leaving later ranks one batch fewer.
        return [b[start : start + self.batch_size] for b in self.batches() if len(b) > start]

    def __iter__(self) -> Iterator[list[int]]:
        mine = self._mine()
        if self._skip is not None and self._skip[0] == self.epoch:
            mine = mine[self._skip[1]:]
        self._skip = None
        return iter([list(b) for b in mine])

    def __len__(self) -> int:
        return len(self._mine())


def _conflict_keys(examples: Sequence[PairExample]) -> tuple[list[int], list[int], list[frozenset]]:
    # Negatives get ids in the positives' id space, so "negative of one = positive of another" is a
    # set intersection.
    # Keyed by text, not by positive_id: hand-made examples may leave every id at its default 0.
    queries: dict[str, int] = {}
    documents: dict[str, int] = {}
    positives = [documents.setdefault(e.positive, len(documents)) for e in examples]
    return ([queries.setdefault(e.query, len(queries)) for e in examples], positives,
            [frozenset(documents.setdefault(n, len(documents)) for n in e.negatives) for e in examples])


def held_out_sampler(examples: Sequence[PairExample], batch_size: int, world: int, rank: int,
                     where: str) -> PairBatchSampler:
    """Held-out batches in file order, each pair on one rank once, and at least one batch on every rank.

    Distinct positives in every batch, whatever the training setting: the in-batch validation loss would
    otherwise count a matching document as a negative. A set smaller than one global batch (``batch_size``
    x ``world``) is spread evenly in smaller batches, since a rank without a batch fails inside Lightning
    and leaves the others waiting.

    Raises:
        UserError: fewer pairs (or distinct positives) than processes.
    """
    if world > 1 and len(examples) < batch_size * world:
        batch_size = max(1, -(-len(examples) // world))
    sampler = PairBatchSampler(examples, batch_size, num_replicas=world, rank=rank)
    if world > 1 and not any(len(b) > (world - 1) * batch_size for b in sampler.batches()):
        distinct = len({e.positive for e in examples})
        pairs = f"{len(examples)} pair{'' if len(examples) == 1 else 's'}"
        count = pairs if distinct == len(examples) else f"{pairs} but only {distinct} distinct positive document(s)"
        raise UserError(f"{where} has {count}, too few to give each of the {world} processes a batch (a batch "
                        f"holds distinct positives): it needs at least {world} pairs with distinct positives; add "
                        "held-out pairs or train on fewer processes.")
    return sampler
