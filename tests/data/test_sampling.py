"""Batch sampling (lightning_embed/data/sampling.py): conflict-free batches, disjoint equal-size shards per
process, held-out batches that cover every example once, and length grouping."""

from __future__ import annotations

import pytest

from lightning_embed.data.batches import PairCollator, PairExample
from lightning_embed.data.sampling import PairBatchSampler, held_out_sampler
from lightning_embed.errors import UserError
from lightning_embed.models.backbones import load_tokenizer
from tests.data.pair_files import real_token_share, varied_length_examples


def examples(n: int, positives: int | None = None) -> list[PairExample]:
    """n examples over `positives` distinct positive texts (all distinct when None)."""
    out = []
    for i in range(n):
        p = i if positives is None else i % positives
        out.append(PairExample(f"query {i}", f"document {p}", (), p))
    return out


def conflicting_examples() -> list[PairExample]:
    """Repeated positives and queries, and hard negatives that are other examples' positives."""
    out = []
    for i in range(60):
        positive = f"doc {i % 20}"
        out.append(PairExample(f"query {i % 45}", positive, (f"doc {(i + 1) % 20}",), i % 20))
    return out


def assert_conflict_free(batches, data):
    for batch in batches:
        items = [data[i] for i in batch]
        positives = {e.positive for e in items}
        assert len(positives) == len(items), "duplicate positive in a batch"
        assert len({e.query for e in items}) == len(items), "duplicate query in a batch"
        assert not positives & {n for e in items for n in e.negatives}, "a negative is another's positive"


def test_training_batches_are_full_conflict_free_and_reproducible():
    data = conflicting_examples()
    sampler = PairBatchSampler(data, 6, shuffle=True, drop_last=True, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) >= 6 and all(len(b) == 6 for b in batches)
    assert_conflict_free(batches, data)
    assert batches == list(PairBatchSampler(data, 6, shuffle=True, drop_last=True, seed=3))
    assert batches != list(PairBatchSampler(data, 6, shuffle=True, drop_last=True, seed=4))
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != batches
    resumed = PairBatchSampler(data, 6, shuffle=True, drop_last=True, seed=3)
    resumed.set_epoch(1)
    assert list(resumed) == epoch1


def test_evaluation_batches_cover_every_example_once_without_conflicts():
    data = conflicting_examples()
    batches = list(PairBatchSampler(data, 8))
    assert sorted(i for b in batches for i in b) == list(range(len(data)))
    assert_conflict_free(batches, data)
    plain = list(PairBatchSampler(data, 8, unique=False))
    assert plain[0] == list(range(8)) and len(plain[-1]) == 60 % 8


def test_degenerate_data_still_terminates():
    data = [PairExample(f"q{i}", "same document") for i in range(500)]
    batches = list(PairBatchSampler(data, 4))
    assert len(batches) == 500 and all(len(b) == 1 for b in batches)
    assert list(PairBatchSampler(data, 4, shuffle=True, drop_last=True)) == []


def test_processes_get_disjoint_equal_shards_conflict_free_across_processes():
    data = conflicting_examples()
    shards = [list(PairBatchSampler(data, 3, shuffle=True, drop_last=True, num_replicas=2, rank=r)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) >= 6 and all(len(b) == 3 for s in shards for b in s)
    seen = [i for s in shards for b in s for i in b]
    assert len(seen) == len(set(seen))
    assert_conflict_free([a + b for a, b in zip(*shards)], data)  # a gathering loss sees both ranks' batches
    evaluation = [list(PairBatchSampler(data, 8, num_replicas=3, rank=r)) for r in range(3)]
    assert sorted(i for s in evaluation for b in s for i in b) == list(range(len(data)))


def test_group_by_length_makes_batches_of_similar_length():
    data = [PairExample(f"q{i}", "x" * (1 + (i * 37) % 400), (), i) for i in range(400)]
    def spread(batches):
        return sum(max(len(data[i].positive) for i in b) - min(len(data[i].positive) for i in b) for b in batches)

    grouped = list(PairBatchSampler(data, 8, shuffle=True, drop_last=True, group_by_length=True))
    mixed = list(PairBatchSampler(data, 8, shuffle=True, drop_last=True))
    assert spread(grouped) * 5 < spread(mixed)
    means = [sum(len(data[i].positive) for i in b) / len(b) for b in grouped]
    assert means != sorted(means)  # batches are visited in random order, not shortest first
    assert_conflict_free(grouped, data)


def test_group_by_length_token_lengths_cut_padding_and_are_seed_reproducible(tiny_backbones):
    examples = varied_length_examples()
    collate = PairCollator(load_tokenizer(tiny_backbones["llama"]), 16, 64)
    lengths = collate.token_lengths(examples)

    def sampler(seed, group, lens=None):
        s = PairBatchSampler(examples, 8, shuffle=True, drop_last=True, group_by_length=group, seed=seed,
                             lengths=lens)
        return list(s)

    mixed, by_chars, by_tokens = sampler(0, False), sampler(0, True), sampler(0, True, lengths)
    shares = [real_token_share(b, examples, collate) for b in (mixed, by_chars, by_tokens)]
    assert shares[0] < shares[1] < shares[2] and shares[2] > 0.85, shares
    assert by_tokens == sampler(0, True, lengths)  # reproducible by seed
    assert by_tokens != sampler(1, True, lengths)
    widths = [max(lengths[i][1] for i in b) for b in by_tokens]
    assert widths != sorted(widths) and widths != sorted(widths, reverse=True)  # buckets visited at random
    assert sorted(i for b in by_tokens for i in b) == sorted(i for b in mixed for i in b)  # same examples


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_seed_and_size_gives_conflict_free_disjoint_equal_shards(world):
    """The guarantees hold for any seed, epoch and batch size, not one lucky order."""
    data = conflicting_examples()
    for seed in range(6):
        for size in (2, 3, 5):
            shards = [PairBatchSampler(data, size, shuffle=True, drop_last=True, seed=seed, num_replicas=world,
                                       rank=r) for r in range(world)]
            for epoch in (0, 1):
                for shard in shards:
                    shard.set_epoch(epoch)
                batches = [list(shard) for shard in shards]
                assert len({len(b) for b in batches}) == 1, (seed, size, epoch)  # one more would hang DDP
                # Each positive is its neighbour's hard negative: no batch holds more than 10 of these examples,
                # and the greedy packing fills full batches reliably only up to about 6.
                assert batches[0] or size * world > 6, (seed, size, epoch)
                assert all(len(b) == size for rank in batches for b in rank)
                seen = [i for rank in batches for b in rank for i in b]
                assert len(seen) == len(set(seen))  # disjoint across ranks and steps
                steps = [sum(step, []) for step in zip(*batches)]  # what a gathering loss contrasts
                assert steps == shards[0].batches()[: len(steps)]
                assert_conflict_free(steps, data)


def test_conflicts_are_found_by_text_even_without_positive_ids():
    # Hand-made examples often leave positive_id at its default 0: conflicts must still go by the texts.
    data = [PairExample("q a", "doc 1"), PairExample("q b", "doc 1"), PairExample("q c", "doc 2", ("doc 3",)),
            PairExample("q d", "doc 3"), PairExample("q a", "doc 4"), PairExample("q e", "doc 5")]
    batches = list(PairBatchSampler(data, 3))
    assert sorted(i for b in batches for i in b) == list(range(len(data)))
    assert_conflict_free(batches, data)
    assert list(PairBatchSampler(data, 3, unique=False)) == [[0, 1, 2], [3, 4, 5]]  # plain slices otherwise


def test_a_resumed_epoch_skips_the_batches_already_trained_once():
    data = conflicting_examples()
    sampler = PairBatchSampler(data, 4, shuffle=True, drop_last=True, seed=5)
    sampler.set_epoch(2)
    full = list(sampler)
    resumed = PairBatchSampler(data, 4, shuffle=True, drop_last=True, seed=5)
    resumed.skip_once(epoch=2, batches=3)
    resumed.set_epoch(2)
    assert list(resumed) == full[3:]
    assert list(resumed) == full  # only once: the next pass over the epoch is whole again
    other = PairBatchSampler(data, 4, shuffle=True, drop_last=True, seed=5)
    other.skip_once(epoch=2, batches=3)
    other.set_epoch(3)  # a skip for another epoch does not apply
    assert len(list(other)) == len(other)


def test_held_out_batches_give_every_process_a_batch_and_each_pair_once():
    data = [PairExample(f"query {i}", f"doc {i}") for i in range(20)]
    samplers = [held_out_sampler(data, 16, world=3, rank=r, where="data.val") for r in range(3)]
    batches = [list(s) for s in samplers]
    assert all(batches) and max(map(len, batches)) == min(map(len, batches))  # smaller batches, spread evenly
    assert sorted(i for rank in batches for b in rank for i in b) == list(range(20))
    assert_conflict_free([b for rank in batches for b in rank], data)
    with pytest.raises(UserError, match=r"data.val has 2 pairs, too few to give each of the 3 processes a batch"):
        held_out_sampler(data[:2], 16, world=3, rank=0, where="data.val")
    same = [PairExample(f"q{i}", "one document") for i in range(6)]  # enough pairs, one distinct positive
    with pytest.raises(UserError, match="data.val has 6 pairs but only 1 distinct positive document"):
        held_out_sampler(same, 4, world=2, rank=0, where="data.val")


def test_bad_sampler_arguments():
    data = conflicting_examples()
    with pytest.raises(UserError, match="batch_size=0 must be at least 1"):
        PairBatchSampler(data, 0)
    with pytest.raises(ValueError, match="3 lengths for 60 examples"):
        PairBatchSampler(data, 4, shuffle=True, group_by_length=True, lengths=[(1, 1)] * 3)

