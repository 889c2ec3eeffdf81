"""``hf:ORG/NAME[:CONFIG][@SPLIT]`` sources through ``datasets.load_dataset``, offline, on a local dataset
repository folder (data files + a card with ``configs:``): the loader treats it exactly as a hub repository."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_embed.cli.app import main
from lightning_embed.data.datamodule import PairDataModule
from lightning_embed.data.fingerprints import source_fingerprint
from lightning_embed.data.hub import HubSpec, parse_hub_spec
from lightning_embed.data.reading import read_examples
from lightning_embed.data.streaming import StreamLoader, stream_fingerprint
from lightning_embed.errors import UserError

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november".split()

CARD = """---
configs:
- config_name: triplet
  default: true
  data_files:
  - split: train
    path: data/train.jsonl
  - split: dev
    path: data/dev.jsonl
- config_name: tiny
  data_files:
  - split: train
    path: data/dev.jsonl
---
# A tiny pair dataset in the hub's repository layout
"""


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """datasets caches what it prepares; keep it out of the user's cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def _rows(split: str, n: int) -> list[dict]:
    return [{"anchor": f"{WORDS[i % 14]} {WORDS[(i * 5 + 3) % 14]} {split} {i}",
             "pos": f"the {WORDS[i % 14]} and the {WORDS[(i * 5 + 3) % 14]} number {i}",
             "hard": [f"other {WORDS[(i + 1) % 14]} {i}", f"another {WORDS[(i + 2) % 14]} {i}"],
             "negative": f"unrelated {WORDS[(i + 4) % 14]} {i}"}
            for i in range(n)]


@pytest.fixture()
def repo(tmp_path) -> Path:
    folder = tmp_path / "pairs-repo"
    (folder / "data").mkdir(parents=True)
    for split, n in (("train", 32), ("dev", 8)):
        (folder / "data" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(split, n)))
    (folder / "README.md").write_text(CARD)
    return folder


def test_parse_spec():
    assert parse_hub_spec("hf:sentence-transformers/all-nli:pair@train") == HubSpec(
        "sentence-transformers/all-nli", "pair", "train")
    assert parse_hub_spec("hf:org/name") == HubSpec("org/name")
    assert parse_hub_spec("hf:org/name@dev") == HubSpec("org/name", None, "dev")
    assert parse_hub_spec("hf:/data/mirror/ms-marco:v1.1") == HubSpec("/data/mirror/ms-marco", "v1.1")
    assert str(parse_hub_spec("hf:org/name:c@s")) == "hf:org/name:c@s"
    for bad in ("hf:", "hf:org/name@", "hf:org/name:"):
        with pytest.raises(UserError):
            parse_hub_spec(bad)


def test_columns_negatives_configs_and_splits(repo):
    columns = {"query_column": "anchor", "positive_column": "pos", "negatives_column": "hard"}
    train = read_examples(f"hf:{repo}", num_negatives=2, **columns)
    expected = _rows("train", 32)
    assert [(e.query, e.positive, list(e.negatives)) for e in train] == \
        [(r["anchor"], r["pos"], r["hard"]) for r in expected]
    one = read_examples(f"hf:{repo}", num_negatives=1, **columns)
    assert one[0].negatives == (expected[0]["hard"][0],)
    triplet = read_examples(f"hf:{repo}", num_negatives=1, **{**columns, "negatives_column": "negative"})
    assert [e.negatives for e in triplet] == [(r["negative"],) for r in expected]  # one text: one negative
    # No split named: a held-out role reads validation/dev/test; a named split and config are read as given.
    assert [e.query for e in read_examples(f"hf:{repo}", split="val", **columns)] == \
        [r["anchor"] for r in _rows("dev", 8)]
    assert len(read_examples(f"hf:{repo}:triplet@dev", **columns)) == 8
    assert len(read_examples(f"hf:{repo}:tiny", **columns)) == 8  # its only split is train, the dev rows
    record = source_fingerprint(f"hf:{repo}@train")
    assert record["pairs"] == 32 and record["split"] == "train" and len(record["sha256"]) == 16
    assert source_fingerprint(f"hf:{repo}@train")["sha256"] == record["sha256"]
    assert source_fingerprint(f"hf:{repo}@dev")["sha256"] != record["sha256"]


def test_bad_sources_are_one_line(repo):
    cases = {
        f"hf:{repo}@nope": ["no split 'nope'", "train, dev"],
        f"hf:{repo}:nope": ["no config 'nope'", "triplet, tiny"],
        "hf:someone/not-downloaded": ["'someone/not-downloaded'", "unreachable", "HF_HUB_OFFLINE",
                                      "datasets.load_dataset('someone/not-downloaded')"],
        f"hf:{repo.parent / 'missing'}": ["does not exist"],
    }
    for spec, fragments in cases.items():
        with pytest.raises(UserError) as err:
            read_examples(spec, query_column="anchor", positive_column="pos")
        message = str(err.value)
        assert "\n" not in message and all(f in message for f in fragments), message
    with pytest.raises(UserError, match="no column 'query'"):
        read_examples(f"hf:{repo}")  # the same column check as files


def test_cli_fit_on_hub_source(repo, tiny_backbones, tmp_path, capsys):
    root = tmp_path / "run"
    main(["fit", f"--model.backbone={tiny_backbones['bert']}", "--model.query_max_length=16",
          "--model.document_max_length=24", f"--data.train=hf:{repo}", f"--data.val=hf:{repo}",
          "--data.query_column=anchor", "--data.positive_column=pos", "--data.negatives_column=hard",
          "--data.num_negatives=2", "--data.batch_size=8", f"--trainer.default_root_dir={root}",
          "--trainer.max_steps=2", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
          "--trainer.accelerator=cpu", f"--flops.runs_file={root}/runs.jsonl"])
    record = json.loads((root / "runs.jsonl").read_text().splitlines()[-1])
    text = json.dumps(record)
    assert f"hf:{repo}" in text and '"pairs": 32' in text and '"split": "dev"' in text
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", f"--model.backbone={tiny_backbones['bert']}", f"--data.train=hf:{repo}@test",
              "--data.query_column=anchor", "--data.positive_column=pos", f"--trainer.default_root_dir={root}2",
              "--trainer.max_steps=1", "--trainer.logger=false", "--trainer.accelerator=cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no split 'test'" in err[0] and "train, dev" in err[0], err


def test_data_module_reads_hub_source(repo):
    module = PairDataModule(train=f"hf:{repo}", val=f"hf:{repo}@dev", query_column="anchor", positive_column="pos",
                            batch_size=4)
    module.setup("fit")
    assert len(module.train_examples) == 32 and len(module.val_examples) == 8


def test_prepare_data_downloads_hub_splits_once_per_machine(repo, tmp_path):
    # Lightning calls prepare_data on one process per machine: the splits must be in the datasets cache
    # after it, so the other processes only read them.
    module = PairDataModule(train=f"hf:{repo}", val=f"hf:{repo}@dev", query_column="anchor", positive_column="pos",
                            batch_size=4)
    assert not list((tmp_path / "hf-cache").rglob("*.arrow"))
    module.prepare_data()
    arrow = sorted(p.name for p in (tmp_path / "hf-cache").rglob("*.arrow"))
    assert any("-train" in name for name in arrow) and any("-dev" in name for name in arrow), arrow
    assert module.train_examples is None  # reading stays in setup, on every process


def test_streamed_hub_source_gives_each_pair_once_with_its_negatives(repo):
    # streaming: true reads the split's cached Arrow files, memory-mapped, with the same columns and the
    # triplet rule (one negative as text) as the in-memory path.
    def stream(**kw) -> list:
        module = PairDataModule(train=f"hf:{repo}", query_column="anchor", positive_column="pos", batch_size=4,
                                streaming=True, shuffle_buffer=5, **kw)
        module.collator = list
        return [e for batch in StreamLoader(module._make_stream(), None, 0) for e in batch]

    listed = stream(negatives_column="hard", num_negatives=2)
    assert sorted(e.query for e in listed) == sorted(r["anchor"] for r in _rows("train", 32))
    assert all(len(e.negatives) == 2 and e.negatives[0].startswith("other") for e in listed)
    single = stream(negatives_column="negative", num_negatives=1)
    assert len(single) == 32 and all(e.negatives[0].startswith("unrelated") for e in single)
    fingerprint = stream_fingerprint(f"hf:{repo}")
    assert fingerprint["shards"] >= 1 and fingerprint["bytes"] > 0 and fingerprint["fingerprint"]
    for spec, message in ((f"hf:{repo}", "no column 'query'"), ("hf:someone/not-downloaded", "unreachable")):
        module = PairDataModule(train=spec, streaming=True, batch_size=4)
        module.collator = list
        with pytest.raises(UserError, match=message):
            module._make_stream()


def test_cli_fit_streams_a_hub_source(repo, tiny_backbones, tmp_path):
    root = tmp_path / "run"
    main(["fit", f"--model.backbone={tiny_backbones['bert']}", "--model.query_max_length=16",
          "--model.document_max_length=24", f"--data.train=hf:{repo}", "--data.streaming=true",
          "--data.query_column=anchor", "--data.positive_column=pos", "--data.batch_size=8",
          f"--trainer.default_root_dir={root}", "--trainer.max_steps=3", "--trainer.logger=false",
          "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu", f"--flops.runs_file={root}/runs.jsonl"])
    record = json.loads((root / "runs.jsonl").read_text().splitlines()[-1])
    assert record["steps"] == 3 and record["examples"] == 24
    assert record["data"]["train"]["source"] == f"hf:{repo}" and record["data"]["train"]["fingerprint"]
