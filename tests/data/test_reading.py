"""Reading pair files (lightning_embed/data/reading.py): every format, column renames, positive ids, nested subsets,
and the messages that name the file, the line and the columns found."""

from __future__ import annotations

import json

import pytest

from lightning_embed.data.batches import PairExample
from lightning_embed.data.datamodule import PairDataModule
from lightning_embed.data.reading import read_examples
from lightning_embed.errors import UserError
from tests.data.pair_files import ROWS, bad, write


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
    message = r"line 2: 1 hard negatives .* num_negatives=2; lower num_negatives to at most 1"
    with pytest.raises(UserError, match=message):
        read_examples(str(write(tmp_path / "few.jsonl", rows)), num_negatives=2)
    path = bad(tmp_path, "cell.csv", "query,positive,negatives\nq,p,not json\n")
    with pytest.raises(UserError, match=r"line 2: the 'negatives' cell is not a JSON list"):
        read_examples(path, num_negatives=1)
    rows = [{**ROWS[0], "negatives": [ROWS[0]["positive"]]}]
    with pytest.raises(UserError, match=r"line 1: a hard negative is identical to the positive"):
        read_examples(str(write(tmp_path / "same.jsonl", rows)), num_negatives=1)
