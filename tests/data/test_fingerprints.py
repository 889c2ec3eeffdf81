"""Data fingerprints: files and folders by their bytes, builtin sources by their pairs, in every run record."""

from __future__ import annotations

import hashlib
import json

import pytest

from lightning_embed.data.fingerprints import builtin_fingerprint, file_sha256, pairs_digest, source_fingerprint
from lightning_embed.errors import UserError


def test_a_file_is_fingerprinted_by_its_bytes(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"query": "a b", "positive": "c d"}\n')
    found = source_fingerprint(str(path))
    assert found == {"source": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16],
                     "bytes": path.stat().st_size}
    path.write_text('{"query": "a b", "positive": "c e"}\n')
    assert source_fingerprint(str(path))["sha256"] != found["sha256"]


def test_a_folder_is_fingerprinted_by_its_files_names_and_bytes(tmp_path):
    folder = tmp_path / "saved"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.arrow").write_bytes(b"1234")
    (folder / "sub" / "b.json").write_bytes(b"{}")
    first = file_sha256(folder)
    assert source_fingerprint(str(folder))["bytes"] == 6
    (folder / "sub" / "b.json").rename(folder / "sub" / "c.json")
    assert file_sha256(folder) != first


def test_unreadable_sources_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="cannot read"):
        source_fingerprint(str(tmp_path / "missing.jsonl"))
    with pytest.raises(UserError, match="unknown builtin"):
        builtin_fingerprint("nope")


def test_pairs_digest_depends_on_content_and_order():
    a = {"package": "x", "module": "m", "qualname": "f", "query": "q one", "positive": "def f(): pass"}
    b = {**a, "qualname": "g", "positive": "def g(): pass"}
    assert pairs_digest([a, b]) == pairs_digest([dict(a), dict(b)])
    assert pairs_digest([a, b]) != pairs_digest([b, a]) and pairs_digest([a]) != pairs_digest([a, b])


def test_stdlib_code_is_fingerprinted_from_its_pairs(monkeypatch):
    from lightning_embed.data import stdlib_source

    pairs = [{"module": "m", "qualname": f"f{i}", "query": f"query {i}", "positive": f"code {i}",
              "split": "val" if i == 2 else "train"} for i in range(3)]
    monkeypatch.setattr(stdlib_source, "load_pairs", lambda: pairs)
    found = builtin_fingerprint("stdlib-code")
    assert found["sizes"] == {"train": 2, "val": 1} and found["train"] == pairs_digest(pairs[:2])
    assert found["val"] == pairs_digest(pairs[2:]) and "python" in found["versions"]


def test_a_fit_on_a_file_records_its_fingerprint(tiny_backbones, tmp_path):
    from lightning_embed.cli.app import main
    from lightning_embed.flops.records import read_runs

    train = tmp_path / "pairs.jsonl"
    with train.open("w") as handle:
        for i in range(16):
            handle.write(json.dumps({"query": f"word {i} query", "positive": f"the document number {i}"}) + "\n")
    root = tmp_path / "run"
    main(["fit", f"--model.backbone={tiny_backbones['bert']}", "--model.query_max_length=16",
          "--model.document_max_length=24", f"--data.train={train}", f"--data.val={train}", "--data.batch_size=8",
          f"--trainer.default_root_dir={root}", "--trainer.max_steps=1", "--trainer.logger=false",
          "--trainer.enable_progress_bar=false", "--trainer.enable_checkpointing=false",
          "--trainer.accelerator=cpu", f"--flops.runs_file={root}/runs.jsonl"])
    (record,) = read_runs(root / "runs.jsonl")
    expected = hashlib.sha256(train.read_bytes()).hexdigest()[:16]
    assert record.data["train"]["sha256"] == expected and record.data["val"]["sha256"] == expected
    assert record.data["test"] is None
