"""Data: file formats, validation messages, the collator's layout, conflict-free batching, the stdlib source."""

from __future__ import annotations

import ast
import csv
import json
import shutil
import sysconfig
import zlib
from pathlib import Path

import pytest
import torch

from lightning_embed.data import stdlib_source
from lightning_embed.data.batches import PairBatch, PairCollator, PairExample
from lightning_embed.data.datamodule import PairDataModule
from lightning_embed.data.reading import builtin_sources, read_examples
from lightning_embed.data.sampling import PairBatchSampler
from lightning_embed.errors import UserError
from lightning_embed.models.backbones import load_tokenizer

ROWS = [
    {"query": f"how do I do task {i}?", "positive": f"def task_{i}(): return {i}",
     "negatives": [f"def other_{i}_{j}(): return -{j}" for j in range(3)]}
    for i in range(12)
]


def write(path: Path, rows: list[dict] = ROWS, columns=("query", "positive", "negatives")) -> Path:
    """Writes rows in the format the suffix names (csv/tsv negatives as JSON-encoded strings)."""
    rows = [{new: row[old] for old, new in zip(("query", "positive", "negatives"), columns) if old in row}
            for row in rows]
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif path.suffix in (".csv", ".tsv"):
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t" if path.suffix == ".tsv" else ",")
            writer.writeheader()
            writer.writerows({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()} for row in rows)
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:  # a saved Hugging Face dataset folder
        import datasets

        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


@pytest.fixture(scope="session")
def tokenizer(tiny_backbones):
    return load_tokenizer(tiny_backbones["llama"])


@pytest.fixture(scope="session")
def stdlib_pairs() -> list[dict]:
    """The mined stdlib pairs, through the user's cache: mined (~2 s) only on the first run ever."""
    return stdlib_source.load_pairs()


def examples(n: int, positives: int | None = None) -> list[PairExample]:
    """n examples over `positives` distinct positive texts (all distinct when None)."""
    out = []
    for i in range(n):
        p = i if positives is None else i % positives
        out.append(PairExample(f"query {i}", f"document {p}", (), p))
    return out


# ----------------------------------------------------------------------------------------------- reading


@pytest.mark.parametrize("name", ["pairs.jsonl", "pairs.csv", "pairs.tsv", "pairs.parquet", "saved_dataset"])
def test_each_format_round_trips(tmp_path, name):
    path = write(tmp_path / name)
    got = read_examples(str(path), num_negatives=2)
    assert [e.query for e in got] == [r["query"] for r in ROWS]
    assert [e.positive for e in got] == [r["positive"] for r in ROWS]
    assert [e.negatives for e in got] == [tuple(r["negatives"][:2]) for r in ROWS]
    assert [e.positive_id for e in got] == list(range(len(ROWS)))


def test_column_renames_through_the_data_module(tmp_path):
    path = write(tmp_path / "renamed.csv", columns=("question", "answer", "hard"))
    dm = PairDataModule(train=str(path), query_column="question", positive_column="answer",
                        negatives_column="hard", num_negatives=3, batch_size=4)
    dm.setup("fit")
    assert dm.train_examples[5] == PairExample(ROWS[5]["query"], ROWS[5]["positive"], tuple(ROWS[5]["negatives"]), 5)
    assert dm.val_examples is None  # a file source has no held-out split of its own


def test_negatives_column_is_not_needed_without_negatives(tmp_path):
    path = write(tmp_path / "plain.jsonl", [{"query": r["query"], "positive": r["positive"]} for r in ROWS])
    assert all(e.negatives == () for e in read_examples(str(path)))


def test_positive_ids_are_equal_exactly_for_equal_texts(tmp_path):
    rows = [{"query": f"q{i}", "positive": ["alpha", "beta", "alpha", "gamma", "beta"][i]} for i in range(5)]
    got = read_examples(str(write(tmp_path / "dups.jsonl", rows)))
    assert [e.positive_id for e in got] == [0, 1, 0, 2, 1]


def test_max_examples_is_a_fixed_nested_subset(tmp_path):
    path = str(write(tmp_path / "pairs.jsonl"))
    small, large = read_examples(path, max_examples=4), read_examples(path, max_examples=8)
    assert len(small) == 4 and len(large) == 8
    assert {e.query for e in small} <= {e.query for e in large}
    assert small == read_examples(path, max_examples=4)
    assert [e.positive_id for e in small] == [0, 1, 2, 3]  # ids stay dense within the split


# ------------------------------------------------------------------------------------------ bad input


def bad(tmp_path, name: str, content: str) -> str:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return str(path)


def test_missing_file_and_unsupported_extension(tmp_path):
    with pytest.raises(UserError, match=r"'nope\.jsonl' does not exist.*\.jsonl, \.csv"):
        read_examples("nope.jsonl")
    with pytest.raises(UserError, match=r"unsupported data file .*pairs\.txt.*'\.txt'.*\.parquet"):
        read_examples(bad(tmp_path, "pairs.txt", "hello"))


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = bad(tmp_path, "broken.jsonl", json.dumps(ROWS[0]) + "\n\n" + '{"query": "x", \n')
    with pytest.raises(UserError, match=r"broken\.jsonl: line 3 is not valid JSON"):
        read_examples(path)
    with pytest.raises(UserError, match=r"line 1 is a JSON array, not an object"):
        read_examples(bad(tmp_path, "list.jsonl", "[1, 2]\n"))


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_missing_column_lists_the_columns_found(tmp_path, suffix):
    path = write(tmp_path / f"cols{suffix}", columns=("question", "positive", "negatives"))
    with pytest.raises(UserError, match=r"no column 'query' \(columns found: question, positive, negatives\); "
                                        r"set query_column"):
        read_examples(str(path))
    with pytest.raises(UserError, match=r"no column 'hard'.*set negatives_column.*num_negatives=0"):
        read_examples(str(path), query_column="question", negatives_column="hard", num_negatives=1)


def test_empty_or_non_text_fields_name_the_line(tmp_path):
    rows = [ROWS[0], {"query": "  ", "positive": "x"}]
    with pytest.raises(UserError, match=r"empty\.jsonl: line 2: empty query text \(column 'query'\)"):
        read_examples(str(write(tmp_path / "empty.jsonl", rows)))
    rows = [ROWS[0], ROWS[1], {"query": "q", "positive": ""}]
    with pytest.raises(UserError, match=r"line 4: empty positive text"):  # line 1 is the csv header
        read_examples(str(write(tmp_path / "empty.csv", rows)))
    with pytest.raises(UserError, match=r"row 0: positive \(column 'positive'\) must be text, got int"):
        read_examples(str(write(tmp_path / "typed.parquet", [{"query": "a", "positive": 1}] * 2)))


def test_negatives_errors(tmp_path):
    rows = [ROWS[0], {**ROWS[1], "negatives": ["only one"]}]
    with pytest.raises(UserError, match=r"line 2: 1 hard negatives .* num_negatives=2; lower num_negatives to at most 1"):
        read_examples(str(write(tmp_path / "few.jsonl", rows)), num_negatives=2)
    path = bad(tmp_path, "cell.csv", "query,positive,negatives\nq,p,not json\n")
    with pytest.raises(UserError, match=r"line 2: the 'negatives' cell is not a JSON list"):
        read_examples(path, num_negatives=1)
    rows = [{**ROWS[0], "negatives": [ROWS[0]["positive"]]}]
    with pytest.raises(UserError, match=r"line 1: a hard negative is identical to the positive"):
        read_examples(str(write(tmp_path / "same.jsonl", rows)), num_negatives=1)


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
    with pytest.raises(UserError, match=r"unknown builtin data source 'builtin:nope'; known: builtin:python-code, builtin:stdlib-code"):
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


# ------------------------------------------------------------------------------------------- collator


def test_collator_prompts_truncation_and_dynamic_padding(tokenizer):
    collate = PairCollator(tokenizer, query_max_length=12, document_max_length=40, query_prompt="query: ",
                           document_prompt="doc: ")
    batch = collate([PairExample("short", "def f(): pass"), PairExample("a much longer query " * 5, "x", (), 1)])
    queries = tokenizer.batch_decode(batch.queries["input_ids"], skip_special_tokens=True)
    assert queries[0] == "query: short"
    assert queries[1].startswith("query: a") and batch.queries["input_ids"].shape[1] == 12
    short = len(tokenizer("doc: def f(): pass")["input_ids"])
    assert batch.documents["input_ids"].shape == (2, short)  # padded to the longest, not to 40
    assert tokenizer.decode(batch.documents["input_ids"][1], skip_special_tokens=True) == "doc: x"
    assert batch.positive_ids.tolist() == [0, 1] and batch.positive_ids.dtype == torch.long
    assert set(batch.queries) == {"input_ids", "attention_mask"} and len(batch) == 2
    padded = PairCollator(tokenizer, pad_to_multiple_of=8)([PairExample("abc", "d")])
    assert padded.queries["input_ids"].shape[1] % 8 == 0


@pytest.mark.parametrize("arch,side", [("llama", "left"), ("llama", "right"), ("bert", "right"), ("bert", "left")])
def test_collator_respects_padding_side(tiny_backbones, arch, side):
    tok = load_tokenizer(tiny_backbones[arch])
    tok.padding_side = side
    batch = PairCollator(tok)([PairExample("a", "b"), PairExample("a longer query here", "c", (), 1)])
    mask, ids = batch.queries["attention_mask"], batch.queries["input_ids"]
    pad_at = 0 if side == "left" else -1
    assert mask[0, pad_at] == 0 and ids[0, pad_at] == tok.pad_token_id and mask[1].all()
    assert tok.decode(ids[0][mask[0].bool()], skip_special_tokens=True) == "a"


def test_negatives_layout(tokenizer):
    k = 3
    batch_examples = [PairExample(r["query"], r["positive"], tuple(r["negatives"]), i) for i, r in enumerate(ROWS[:4])]
    batch = PairCollator(tokenizer)(batch_examples)
    B = len(batch_examples)
    assert batch.num_negatives == k and batch.documents["input_ids"].shape[0] == B * (1 + k)

    def text(row: int) -> str:
        ids = batch.documents["input_ids"][row][batch.documents["attention_mask"][row].bool()]
        return tokenizer.decode(ids, skip_special_tokens=True)

    assert [text(i) for i in range(B)] == [e.positive for e in batch_examples]
    for i, e in enumerate(batch_examples):
        assert [text(B + i * k + j) for j in range(k)] == list(e.negatives)


def test_collator_rejects_bad_setups(tokenizer):
    with pytest.raises(UserError, match=r"different numbers of hard negatives"):
        PairCollator(tokenizer)([PairExample("a", "b", ("c",)), PairExample("d", "e")])
    with pytest.raises(UserError, match=r"query prompt .* alone takes \d+ tokens.*raise query_max_length"):
        PairCollator(tokenizer, query_max_length=3, query_prompt="Represent this query for retrieval: ")


# ------------------------------------------------------------------------------------------- batching


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
    spread = lambda batches: sum(max(len(data[i].positive) for i in b) - min(len(data[i].positive) for i in b)
                                 for b in batches)
    grouped = list(PairBatchSampler(data, 8, shuffle=True, drop_last=True, group_by_length=True))
    mixed = list(PairBatchSampler(data, 8, shuffle=True, drop_last=True))
    assert spread(grouped) * 5 < spread(mixed)
    means = [sum(len(data[i].positive) for i in b) / len(b) for b in grouped]
    assert means != sorted(means)  # batches are visited in random order, not shortest first
    assert_conflict_free(grouped, data)


# -------------------------------------------------------------------------------------- stdlib source


def test_stdlib_source_is_nonempty_and_split_by_module(stdlib_pairs):
    train = [p for p in stdlib_pairs if p["split"] == "train"]
    val = [p for p in stdlib_pairs if p["split"] == "val"]
    assert len(train) > 2000 and len(val) > 100
    assert not {p["module"] for p in train} & {p["module"] for p in val}
    assert all((zlib.crc32(p["module"].encode()) % 100 < 10) == (p["split"] == "val") for p in stdlib_pairs)
    assert not any(part in {"test", "idlelib", "tkinter", "lib2to3", "site-packages"}
                   for p in stdlib_pairs for part in Path(p["path"]).parts)
    assert len({p["query"] for p in stdlib_pairs}) == len({p["positive"] for p in stdlib_pairs}) == len(stdlib_pairs)
    assert all(len(p["query"].split()) >= 4 for p in stdlib_pairs)
    for pair in stdlib_pairs[::20]:  # the code stands alone (dedented) and its docstring is gone
        function = ast.parse(pair["positive"]).body[0]
        assert isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)) and ast.get_docstring(function) is None
    dumps = next(p for p in stdlib_pairs if p["module"] == "json" and p["qualname"] == "dumps")
    assert dumps["positive"].startswith("def dumps(") and "Serialize" not in dumps["positive"]


def test_stdlib_data_module_uses_the_held_out_split_with_negatives(stdlib_pairs):
    assert builtin_sources() == ["python-code", "stdlib-code"]
    dm = PairDataModule(num_negatives=2, batch_size=16, max_val_examples=50, query_column="ignored for builtins")
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.val_examples) == 50 and len(dm.train_examples) > 2000
    assert not {e.positive for e in dm.train_examples} & {e.positive for e in dm.val_examples}
    assert all(len(e.negatives) == 2 and e.positive not in e.negatives for e in dm.train_examples)
    pairs = {p["positive"]: p for p in stdlib_pairs}
    same_file = sum(pairs[e.negatives[0]]["path"] == pairs[e.positive]["path"] for e in dm.train_examples)
    assert same_file > 0.8 * len(dm.train_examples)  # hard negatives come from the same file first
    assert [e.negatives for e in dm.train_examples[:50]] == [e.negatives for e in dm._read(dm.train, "train", None)[:50]]


def test_mining_is_deterministic_and_cached_atomically(tmp_path, monkeypatch):
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    root = tmp_path / "lib"
    shutil.copytree(stdlib / "json", root / "json", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(stdlib / "textwrap.py", root / "textwrap.py")
    (root / "test").mkdir()
    shutil.copy(stdlib / "textwrap.py", root / "test" / "test_wrap.py")
    (root / "odd.py").write_text(
        "class A:\n"
        "    @staticmethod\n"
        "    def wrapped(x):\n"
        "        '''Return the value that was passed in unchanged.'''\n"
        "        text = '''\n"
        "column zero\n"
        "'''\n"
        "        return x\n"
        "    def abstract(self):\n"
        "        '''Subclasses must implement this method themselves.'''\n"
        "        raise NotImplementedError\n"
        "def one_line(): '''Docstring and body on one line here.'''; return 1\n"
    )
    first = stdlib_source.mine(root)
    assert first == stdlib_source.mine(root) and len(first) > 10
    assert {p["path"].split("/")[0] for p in first} == {"json", "odd.py", "textwrap.py"}
    odd = [p for p in first if p["path"] == "odd.py"]
    assert [p["qualname"] for p in odd] == ["A.wrapped"]
    assert odd[0]["positive"] == "@staticmethod\ndef wrapped(x):\n    text = '''\ncolumn zero\n'''\n    return x"

    monkeypatch.setenv("LIGHTNING_EMBED_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(stdlib_source, "stdlib_root", lambda: root)
    assert stdlib_source.load_pairs() == first
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [stdlib_source.cache_path().name]
    monkeypatch.setattr(stdlib_source, "mine", lambda root=None: pytest.fail("the cache was not used"))
    assert stdlib_source.load_pairs() == first


def test_summaries():
    assert stdlib_source.summarize("Return the   thing\n  asked for.\n\nMore detail.") == "Return the thing asked for."
    assert stdlib_source.summarize("f(x, y) -> int\n\nAdd the two numbers together.") == "Add the two numbers together."
    assert stdlib_source.summarize("Too short.") is None
    long = "First sentence is here. " + "word " * 80
    assert stdlib_source.summarize(long) == "First sentence is here."


# ------------------------------------------------------------------------------------------ lightning


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
