"""Hard-negative mining: the chunked exact search equals brute force, the false-negative filters do what
they say, the CLI writes rows that `fit --data.num_negatives K` trains on, and bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import lightning_embed
from lightning_embed.cli.app import main
from lightning_embed.data.mining import chunked_top_k, mine_hard_negatives
from lightning_embed.errors import UserError
from lightning_embed.models.encoder import Encoder

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("with_threshold", [False, True])
def test_chunked_top_k_equals_brute_force(with_threshold):
    gen = torch.Generator().manual_seed(0)
    queries, corpus = torch.randn(37, 8, generator=gen), torch.randn(53, 8, generator=gen)
    exclude = [[i % 53, (i * 7) % 53] for i in range(37)]
    full = queries @ corpus.T
    for i, rows in enumerate(exclude):
        full[i, rows] = float("-inf")
    threshold = full.max(1).values - 0.5 if with_threshold else None
    above = torch.zeros(37, dtype=torch.long)
    if threshold is not None:
        above = (full >= threshold[:, None]).sum(1)
        full = full.masked_fill(full >= threshold[:, None], float("-inf"))
    want_s, want_i = torch.topk(full, 9, dim=1)
    got_s, got_i, got_above = chunked_top_k(queries, corpus, 9, exclude=exclude, threshold=threshold,
                                            query_chunk=5, corpus_chunk=11)
    assert torch.equal(got_i, want_i) and torch.equal(got_above, above)
    assert _relative_error(got_s, want_s) < 1e-5
    assert not any(j in rows for i, rows in enumerate(exclude) for j in got_i[i].tolist())


class TableEncoder(Encoder):
    """An encoder whose embeddings are given per text: the filters are checked on known scores."""

    device = torch.device("cpu")

    def __init__(self, vectors: dict[str, list[float]]):
        self.vectors, self.name, self.normalize = vectors, "table", False

    def encode(self, texts, batch_size=32, prompt=None, normalize=None, show_progress=None, convert_to_numpy=False):
        return torch.tensor([self.vectors[t] for t in texts], dtype=torch.float32)


def _reference(pairs, corpus, vectors, k, range_min=0, range_max=None, absolute=None, relative=None):
    """The filters written out one candidate at a time."""
    out = []
    for query, positive in pairs:
        positives = {p for q, p in pairs if q == query}
        score = {d: sum(a * b for a, b in zip(vectors[query], vectors[d])) for d in corpus}
        pos_score = sum(a * b for a, b in zip(vectors[query], vectors[positive]))
        ranked = sorted((d for d in corpus if d not in positives), key=lambda d: -score[d])
        kept = [d for rank, d in enumerate(ranked)
                if rank >= range_min and (range_max is None or rank < range_max)
                and (absolute is None or score[d] < pos_score - absolute)
                and (relative is None or score[d] < (1 - relative) * pos_score)]
        if len(kept) >= k:
            out.append({"query": query, "positive": positive, "negatives": kept[:k]})
    return out


@pytest.mark.parametrize("options", [{}, {"range_min": 2}, {"range_min": 1, "range_max": 6},
                                     {"relative_margin": 0.05}, {"absolute_margin": 0.3, "range_min": 1},
                                     {"relative_margin": 0.2, "range_min": 3, "range_max": 9}])
def test_filters_match_a_plain_reference(options):
    gen = torch.Generator().manual_seed(1)
    docs = [f"doc {i}" for i in range(40)]
    queries = [f"query {i}" for i in range(25)]
    vectors = {t: torch.rand(6, generator=gen).tolist() for t in docs + queries}  # positive scores: relative margins
    pairs = [(q, docs[i]) for i, q in enumerate(queries)] + [(queries[0], docs[30])]  # a query with two positives
    report = mine_hard_negatives(pairs, TableEncoder(vectors), num_negatives=3, corpus=docs, query_chunk=4,
                                 corpus_chunk=7, **options)
    reference = _reference(pairs, docs, vectors, 3, options.get("range_min", 0), options.get("range_max"),
                           options.get("absolute_margin"), options.get("relative_margin"))
    assert report.rows == reference and report.dropped == len(pairs) - len(reference)
    assert all(docs[30] not in r["negatives"] and docs[0] not in r["negatives"] for r in report.rows
               if r["query"] == queries[0])


def test_margins_on_known_scores():
    # One query; documents at scores 0.9 (positive), 0.88, 0.86, 0.5, 0.2 and a duplicate of the positive.
    vectors = {"q": [1.0, 0.0], "pos": [0.9, 0.0], "near": [0.88, 0.0], "close": [0.86, 0.0], "mid": [0.5, 0.0],
               "far": [0.2, 0.0]}
    pairs = [("q", "pos")]
    corpus = ["pos", "near", "close", "mid", "far", "pos"]

    def mine(**options):
        return mine_hard_negatives(pairs, TableEncoder(vectors), num_negatives=2, corpus=corpus, **options)

    assert mine().rows[0]["negatives"] == ["near", "close"]
    assert mine(relative_margin=0.05).rows[0]["negatives"] == ["mid", "far"]  # 0.855 ceiling: near, close out
    assert mine(absolute_margin=0.03).rows[0]["negatives"] == ["close", "mid"]  # 0.87 ceiling: near out
    assert mine(range_min=1).rows[0]["negatives"] == ["close", "mid"]
    assert mine(range_min=1, range_max=3).rows[0]["negatives"] == ["close", "mid"]
    with pytest.raises(UserError, match="no pair kept 2 negatives"):
        mine(relative_margin=0.5)  # 0.45 ceiling: only far passes


def write_pairs(path: Path, n: int = 40) -> Path:
    with path.open("w") as f:
        for i in range(n):
            a, b = WORDS[i % 16], WORDS[(i * 5 + 3) % 16]
            f.write(json.dumps({"q": f"{a} {b} {i}", "p": f"the {a} and the {b} number {i}"}) + "\n")
    return path


def test_cli_mines_and_the_output_trains(tiny_backbones, tmp_path, capsys):
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "mined.jsonl"
    main(["mine", str(pairs), "--model", tiny_backbones["bert"], "-o", str(out), "--num-negatives", "3",
          "--query-column", "q", "--positive-column", "p", "--range-min", "1", "--batch-size", "16"])
    captured = capsys.readouterr()
    assert "wrote 40 pairs" in captured.out and "searched 40/40 queries" in captured.err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    source = [json.loads(line) for line in pairs.read_text().splitlines()]
    assert [(r["query"], r["positive"]) for r in rows] == [(s["q"], s["p"]) for s in source]
    assert all(len(r["negatives"]) == 3 == len(set(r["negatives"])) and r["positive"] not in r["negatives"]
               for r in rows)
    positives = {s["p"] for s in source}
    assert all(set(r["negatives"]) <= positives for r in rows)
    # The Python API gives the same rows (the same model, the same search).
    api = lightning_embed.mine_hard_negatives(str(pairs), tiny_backbones["bert"], num_negatives=3, range_min=1,
                                              query_column="q", positive_column="p", batch_size=16, device="cpu")
    assert api.rows == rows
    root = tmp_path / "run"
    main(["fit", f"--model.backbone={tiny_backbones['bert']}", "--model.query_max_length=16",
          "--model.document_max_length=24", f"--data.train={out}", "--data.num_negatives=3", "--data.batch_size=8",
          f"--trainer.default_root_dir={root}", "--trainer.max_steps=2", "--trainer.logger=false",
          "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu", f"--flops.runs_file={root}/runs.jsonl"])
    assert json.loads((root / "runs.jsonl").read_text().splitlines()[-1])["steps"] == 2


def _fails(capsys, args: list[str], *fragments: str) -> None:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lightning-embed: error:"), err
    assert all(f in err[0] for f in fragments), err[0]


def test_bad_inputs_are_one_line_and_keep_existing_output(tiny_backbones, tmp_path, capsys):
    pairs = write_pairs(tmp_path / "pairs.jsonl", n=6)
    out = tmp_path / "mined.jsonl"
    out.write_text("precious\n")
    base = ["mine", str(pairs), "--model", tiny_backbones["bert"], "--query-column", "q", "--positive-column", "p"]
    _fails(capsys, [*base, "-o", str(out)], "exists", "--overwrite")
    _fails(capsys, [*base, "-o", str(tmp_path / "new.jsonl"), "--num-negatives", "6"], "corpus", "6")
    _fails(capsys, [*base, "-o", str(tmp_path / "new.jsonl"), "--relative-margin", "1.5"], "--relative-margin")
    _fails(capsys, [*base, "-o", str(tmp_path / "new.jsonl"), "--range-min", "2", "--range-max", "3"], "--range-max")
    _fails(capsys, [*base, "-o", str(out / "x.jsonl")], "--output")  # a path through a file
    _fails(capsys, [*base], "-o OUT.jsonl")
    _fails(capsys, ["mine", str(pairs), "--model", tiny_backbones["bert"], "-o", str(tmp_path / "n.jsonl")], "'query'")
    assert out.read_text() == "precious\n" and sorted(p.name for p in tmp_path.iterdir()) == ["mined.jsonl",
                                                                                               "pairs.jsonl"]
    assert capsys.readouterr().out == ""  # nothing was mined
    main([*base, "-o", str(out), "--num-negatives", "5", "--overwrite"])
    assert all(len(json.loads(line)["negatives"]) == 5 for line in out.read_text().splitlines())
    # A corpus of its own (a copy of one positive among other texts): the copy never becomes a negative.
    first = json.loads(pairs.read_text().splitlines()[0])
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in [first["p"], *(f"{w} docs" for w in WORDS)]))
    main([*base, "-o", str(out), "--num-negatives", "4", "--corpus", str(corpus), "--overwrite"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and all(set(r["negatives"]) <= {f"{w} docs" for w in WORDS} | {first["p"]} for r in rows)
    assert first["p"] not in rows[0]["negatives"]
