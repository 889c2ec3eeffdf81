"""MTEB evaluation offline: local STS, retrieval, classification and clustering tasks through mteb 2.x,
the evaluate command's table and JSON, bad input, MTEBCallback during training, and one real model."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_embed.cli.app import main
from lightning_embed.errors import UserError
from lightning_embed.evaluation.evaluate import resolve_tasks, run_mteb
from lightning_embed.models.encoder import load, load_pretrained
from tests.evaluation.task_files import jsonl

REPO = Path(__file__).resolve().parents[2]


def test_local_tasks_evaluate_through_mteb_offline(tiny_backbones, task_files):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    specs = [f"sts:{task_files['sts']}", f"retrieval:{task_files['retrieval']}", f"beir=retrieval:{task_files['beir']}",
             f"classification:{task_files['classification']}", f"clustering:{task_files['clustering']}"]
    tasks = resolve_tasks(specs)
    assert [t.name for t in tasks] == ["sts", "pairs", "beir", "cls", "clu"]
    retrieval = tasks[1].data
    assert len(retrieval["queries"]) == 12 and len(retrieval["corpus"]) == 24  # negatives join the corpus
    scores = run_mteb(load(tiny_backbones["bert"], device="cpu"), tasks, batch_size=8)
    assert set(scores) == {"sts", "pairs", "beir", "cls", "clu"}
    assert scores["pairs"] == pytest.approx(1.0) and scores["beir"] == pytest.approx(1.0)
    assert scores["sts"] > 0.5  # identical pairs (score 5) have cosine 1, the top of the ranking
    assert 0.0 <= scores["cls"] <= 1.0 and 0.0 <= scores["clu"] <= 1.0


@pytest.fixture(scope="module")
def trained(tiny_backbones, tmp_path_factory) -> Path:
    from tests.models.checkpoints import train_checkpoint

    return train_checkpoint(tiny_backbones["gpt_neox"], tmp_path_factory.mktemp("trained"))[0]


def test_cli_evaluate_writes_main_scores_with_baseline(trained, task_files, tmp_path, capsys):
    out = tmp_path / "results.json"
    main(["evaluate", str(trained), "--tasks", f"sts:{task_files['sts']}", f"retrieval:{task_files['retrieval']}",
          "--baseline", "-o", str(out), "--batch-size", "4"])
    printed = capsys.readouterr().out
    assert "MTEB main scores" in printed and "baseline" in printed
    # stdout is not a terminal here: plain progress lines, closed by a total per model
    assert re.search(r"^evaluate \S+: [\d,]+ texts embedded · .*elapsed \d+:\d\d · done$", printed, re.M), printed
    results = json.loads(out.read_text())
    assert set(results["main_scores"]) == {"sts", "pairs"}
    assert set(results["baseline_main_scores"]) == {"sts", "pairs"}
    scores = [*results["main_scores"].values(), *results["baseline_main_scores"].values()]
    assert all(isinstance(v, float) for v in scores)
    assert results["tasks"]["pairs"]["metric"] == "ndcg_at_10"
    assert results["baseline"].endswith("gpt_neox")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _fails(capsys, args: list[str], *fragments: str) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lightning-embed: error:"), err
    for fragment in fragments:
        assert fragment in err[0], err[0]
    return err[0]


def test_bad_inputs(tiny_backbones, task_files, tmp_path, capsys):
    model = tiny_backbones["bert"]
    out = tmp_path / "results.json"
    base = ["evaluate", model, "--output", str(out), "--tasks"]
    bad_sts = jsonl(tmp_path / "bad_sts.jsonl", [{"text1": "a", "text2": "b", "score": 1},
                                                 {"text1": "a", "text2": "c", "score": 2},
                                                 {"text1": "a", "text2": "d"}])
    _fails(capsys, base + [f"sts:{bad_sts}"], "bad_sts.jsonl", "line 3", "'score'")
    (tmp_path / "bad_cls.tsv").write_text("text\tcategory\nhello\tx\n")
    _fails(capsys, base + [f"classification:{tmp_path / 'bad_cls.tsv'}"], "line 2", "'label'")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"query": "a", "positive": "b"}\n{"query": \n')
    _fails(capsys, base + [f"retrieval:{broken}"], "line 2", "not valid JSON")
    (task_files["beir"] / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\tnope\t1\n")
    _fails(capsys, base + [f"retrieval:{task_files['beir']}"], "line 3", "'nope'")
    _fails(capsys, base + [f"sts:{tmp_path / 'missing.jsonl'}"], "missing.jsonl", "does not exist")
    blank = jsonl(tmp_path / "blank.jsonl", [{"query": "a", "positive": "b"}, {"query": "  ", "positive": "c"}])
    _fails(capsys, base + [f"retrieval:{blank}"], "blank.jsonl", "line 2", "'query' must be non-empty")
    _fails(capsys, base + [f"stss:{task_files['sts']}"], "unknown kind 'stss'")
    _fails(capsys, base + ["BIOSES"], "unknown task 'BIOSES'", "BIOSSES")
    _fails(capsys, base + ["BIOSSES"], "HF_HUB_OFFLINE", "local")
    _fails(capsys, ["evaluate", str(tmp_path / "nope.ckpt"), "--tasks", f"sts:{task_files['sts']}"], "nope.ckpt")
    _fails(capsys, ["evaluate", model], "--tasks")
    assert not out.exists()
    out.write_text("{}")  # earlier results are kept unless --overwrite
    _fails(capsys, base + [f"sts:{task_files['sts']}"], "results.json exists", "--overwrite")
    assert out.read_text() == "{}"
    main(base + [f"sts:{task_files['sts']}", "--overwrite"])
    assert "sts" in json.loads(out.read_text())["main_scores"]


def test_empty_texts_from_any_task_are_named_not_embedded(tiny_backbones):
    from lightning_embed.evaluation.evaluate import mteb_encoder

    adapter = mteb_encoder(load_pretrained(tiny_backbones["bert"]), batch_size=4)
    meta = type("Meta", (), {"name": "SomeHubTask"})()
    with pytest.raises(UserError, match=r"SomeHubTask \(test, default\) query texts\[2\] is empty"):
        adapter.encode([{"text": ["one", "two"]}, {"text": [" "]}], task_metadata=meta, hf_split="test",
                       hf_subset="default")


@pytest.mark.slow
def test_real_model_export_and_evaluate(tmp_path):
    """all-MiniLM-L6-v2, briefly tuned on stdlib-code: export round trip and a local retrieval task."""
    from sentence_transformers import SentenceTransformer

    from lightning_embed.data.datamodule import PairDataModule
    from lightning_embed.models.export import export_checkpoint
    from lightning_embed.training.module import EmbeddingModule

    L.seed_everything(0)
    module = EmbeddingModule(backbone="all-minilm-l6-v2", learning_rate=2e-5, query_max_length=32,
                             document_max_length=64)
    data = PairDataModule(train="builtin:stdlib-code", batch_size=16, max_train_examples=64)
    trainer = L.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    out = export_checkpoint(tmp_path / "model.ckpt", tmp_path / "export")
    texts = ["Return the number of items.", "def f(x):\n    return len(x)"]
    st = torch.as_tensor(SentenceTransformer(str(out), device="cpu").encode(texts))
    ours = load(tmp_path / "model.ckpt", device="cpu").encode(texts)
    assert torch.nn.functional.cosine_similarity(st, ours).min() > 0.9999
    task = tmp_path / "code.jsonl"
    rows = [json.loads(line) for line in (REPO / "examples/tasks/stdlib-code-retrieval.jsonl").read_text().splitlines()]
    jsonl(task, rows[:48])
    main(["evaluate", str(out), "--tasks", f"retrieval:{task}", "--baseline", "--output", str(tmp_path / "r.json")])
    results = json.loads((tmp_path / "r.json").read_text())
    assert 0.3 < results["main_scores"]["code"] <= 1.0 and results["baseline_main_scores"]["code"] > 0.3
