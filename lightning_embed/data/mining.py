"""Hard-negative mining: ``lightning-embed mine PAIRS --model MODEL -o OUT.jsonl --num-negatives K``.

Every query is embedded with the model's query prompt, the corpus (the pairs' distinct positives, or
``--corpus``) with its document prompt, and each query's nearest corpus documents become its hard negatives.
The search is exact and chunked: a block of queries is scored against one block of the corpus at a time and
a running top-k is merged per block, so memory holds ``query_chunk x corpus_chunk`` scores, never N x N.

Mined "negatives" that are really relevant (false negatives) hurt contrastive training, so the candidates
are filtered before the k best are kept:

- every positive of the query (all pairs with that query text) and exact duplicates of it never qualify;
- a rank window ``range_min <= rank < range_max`` (rank 0: the most similar non-positive document) skips
  the top ranks, where unlabelled positives sit, and bounds how far down negatives may come from;
- ``absolute_margin``: keep candidates scoring below ``positive_score - margin``;
- ``relative_margin``: keep candidates scoring below ``(1 - margin) * positive_score`` (NV-Retriever's
  "TopK-PercPos", 0.05 in Moreira et al., 2024).

Both margins remove a prefix of a query's ranking (everything scoring above a threshold), so one pass that
counts the removed candidates and keeps the top ``range_min + k`` of the rest gives the exact answer.
Queries left with fewer than k negatives are dropped (and counted): ``--data.num_negatives K`` needs k each.
The output rows ``{"query", "positive", "negatives": [...]}`` train as they are with
``lightning-embed fit --data.train OUT.jsonl --data.num_negatives K``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lightning_embed.errors import UserError

#: Queries and corpus documents per block of the exact search (a block of scores is 4 x the product bytes).
QUERY_CHUNK = 1024
CORPUS_CHUNK = 16384


def chunked_top_k(queries: torch.Tensor, corpus: torch.Tensor, k: int, *, exclude: Sequence[Sequence[int]] = (),
                  threshold: torch.Tensor | None = None, query_chunk: int = QUERY_CHUNK,
                  corpus_chunk: int = CORPUS_CHUNK, progress=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact top-k corpus rows per query by dot product, one block of scores at a time.

    Args:
        queries: (Q, d) query embeddings.
        corpus: (N, d) document embeddings.
        k: how many to keep per query (at most N).
        exclude: per query, corpus rows that never qualify and are not counted (its positives).
        threshold: (Q,) per-query score ceiling: rows scoring at or above it are left out and counted in
            ``above``.
        query_chunk: queries per block.
        corpus_chunk: corpus rows per block.
        progress: called with the number of queries done after each query block.

    Returns:
        ``(scores, indices, above)``: (Q, k) best scores, descending, and their corpus rows (-1 and ``-inf``
        where fewer than k rows qualify); (Q,) how many rows reached ``threshold``.
    """
    num_queries, size = queries.shape[0], corpus.shape[0]
    if not 0 < k <= size:
        raise ValueError(f"k={k} must be between 1 and the corpus size {size}")
    device = queries.device
    top_scores = torch.full((num_queries, k), float("-inf"), device=device)
    top_index = torch.full((num_queries, k), -1, dtype=torch.long, device=device)
    above = torch.zeros(num_queries, dtype=torch.long, device=device)
    for q0 in range(0, num_queries, query_chunk):
        q1 = min(q0 + query_chunk, num_queries)
        rows = [(i - q0, j) for i in range(q0, q1) for j in (exclude[i] if i < len(exclude) else ())]
        best_s, best_i = top_scores[q0:q1], top_index[q0:q1]
        for c0 in range(0, size, corpus_chunk):
            c1 = min(c0 + corpus_chunk, size)
            scores = queries[q0:q1] @ corpus[c0:c1].T
            hits = [(r, j - c0) for r, j in rows if c0 <= j < c1]
            if hits:
                r_idx, c_idx = zip(*hits)
                scores[list(r_idx), list(c_idx)] = float("-inf")
            if threshold is not None:
                over = scores >= threshold[q0:q1, None]
                above[q0:q1] += over.sum(1)
                scores = scores.masked_fill(over, float("-inf"))
            take = min(k, c1 - c0)
            block_s, block_i = torch.topk(scores, take, dim=1)
            merged_s = torch.cat([best_s, block_s], 1)
            merged_i = torch.cat([best_i, block_i + c0], 1)
            best_s, order = torch.topk(merged_s, k, dim=1)
            best_i = torch.gather(merged_i, 1, order)
        best_i = best_i.masked_fill(best_s == float("-inf"), -1)
        top_scores[q0:q1], top_index[q0:q1] = best_s, best_i
        if progress is not None:
            progress(q1)
    return top_scores, top_index, above


@dataclass
class MiningReport:
    """What a mining run did.

    Attributes:
        rows: the output rows: ``{"query", "positive", "negatives"}``, the negatives most similar first.
        pairs: pairs read.
        corpus_size: distinct corpus documents searched.
        dropped: pairs left out because fewer than ``num_negatives`` candidates passed the filters.
        seconds: wall time of embedding and search.
    """

    rows: list[dict]
    pairs: int
    corpus_size: int
    dropped: int
    seconds: float


def _status(message: str, enabled: bool) -> None:
    if enabled:
        print(f"mine: {message}", file=sys.stderr, flush=True)


def _search_progress(total: int, enabled: bool):
    """(callback, closer): a rich bar on a terminal, plain lines otherwise, nothing when disabled."""
    if not enabled:
        return None, lambda: None
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        bar = Progress(TextColumn("searching"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                       console=Console(stderr=True), transient=True)
        bar.start()
        task = bar.add_task("search", total=total)
        return (lambda done: bar.update(task, completed=done)), bar.stop
    return (lambda done: _status(f"searched {done}/{total} queries", True)), lambda: None


def _read_pairs(pairs, query_column: str, positive_column: str, max_pairs: int | None) -> list[tuple[str, str]]:
    from lightning_embed.data.batches import PairExample
    from lightning_embed.data.reading import read_examples

    if isinstance(pairs, str):
        examples = read_examples(pairs, query_column=query_column, positive_column=positive_column,
                                 max_examples=max_pairs)
        return [(e.query, e.positive) for e in examples]
    out = []
    for item in pairs:
        if isinstance(item, PairExample):
            out.append((item.query, item.positive))
        elif isinstance(item, dict):
            out.append((item[query_column], item[positive_column]))
        else:
            query, positive = item
            out.append((query, positive))
    if not out:
        raise UserError("no pairs to mine negatives for.")
    return out[:max_pairs] if max_pairs is not None else out


def _read_corpus(corpus, column: str) -> list[str]:
    from lightning_embed.data.reading import _Columns, _source_rows, _text

    if not isinstance(corpus, str):
        texts = list(corpus)
        if not all(isinstance(t, str) and t.strip() for t in texts):
            raise UserError("corpus documents must be non-empty strings.")
        return texts
    texts = [_text(f"{corpus}: {location}", row, column, "document")
             for location, row in _source_rows(corpus, _Columns(column, column, column, 0), "train")]
    if not texts:
        raise UserError(f"corpus {corpus!r} holds no documents; it needs one per line/row in column {column!r}.")
    return texts


def _check_options(num_negatives: int, range_min: int, range_max: int | None, absolute_margin: float | None,
                   relative_margin: float | None, batch_size: int) -> None:
    if num_negatives < 1:
        raise UserError(f"--num-negatives {num_negatives} must be at least 1.")
    if range_min < 0:
        raise UserError(f"--range-min {range_min} must be 0 or more (0: from the most similar document on).")
    if range_max is not None and range_max - range_min < num_negatives:
        raise UserError(f"--range-max {range_max} leaves ranks {range_min}..{range_max - 1}, fewer than "
                        f"--num-negatives {num_negatives}; raise --range-max or lower --range-min.")
    if absolute_margin is not None and absolute_margin < 0:
        raise UserError(f"--absolute-margin {absolute_margin} must be 0 or more.")
    if relative_margin is not None and not 0 <= relative_margin < 1:
        raise UserError(f"--relative-margin {relative_margin} must be in [0, 1), e.g. 0.05 keeps negatives "
                        "scoring below 95% of the positive.")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size} must be at least 1.")


def _check_target(output, overwrite: bool):
    from pathlib import Path

    from lightning_embed.cli.outputs import check_output

    return check_output(Path(output), "--output", overwrite=overwrite)


def mine_hard_negatives(pairs, model, *, num_negatives: int = 3, corpus=None, range_min: int = 0,
                        range_max: int | None = None, absolute_margin: float | None = None,
                        relative_margin: float | None = None, query_column: str = "query",
                        positive_column: str = "positive", corpus_column: str = "text", max_pairs: int | None = None,
                        batch_size: int = 32, device: str | None = None, output=None, overwrite: bool = False,
                        trust_remote_code: bool = False, show_progress: bool = False,
                        query_chunk: int = QUERY_CHUNK, corpus_chunk: int = CORPUS_CHUNK) -> MiningReport:
    """Mines hard negatives for query/positive pairs with an embedding model (exact chunked search).

    Args:
        pairs: a data source (a file, ``hf:``, ``builtin:``; as ``--data.train``), or a sequence of
            :class:`~lightning_embed.data.batches.PairExample`, ``(query, positive)`` tuples or dicts.
        model: anything ``lightning-embed evaluate`` takes (a checkpoint, an export or sentence-transformers
            folder, a backbone alias or hub id), or a loaded :class:`~lightning_embed.models.encoder.Encoder`.
        num_negatives: hard negatives per pair (pairs with fewer qualifying candidates are dropped).
        corpus: documents to draw negatives from (a data source with column ``corpus_column``, or a list of
            texts); None: the pairs' distinct positives.
        range_min: skip this many of the most similar non-positive documents (likely unlabelled positives).
        range_max: take negatives only from ranks below this (None: no limit).
        absolute_margin: keep candidates scoring below the positive's score minus this.
        relative_margin: keep candidates scoring below ``(1 - relative_margin)`` x the positive's score.
        query_column: column of the pairs' queries.
        positive_column: column of the pairs' positives.
        corpus_column: column of the corpus documents.
        max_pairs: mine for a fixed random subset of this many pairs (as ``max_train_examples``).
        batch_size: texts per forward pass.
        device: where the model runs; None: the GPU when there is one.
        output: also write the rows to this ``.jsonl`` file (atomically; checked writable before embedding).
        overwrite: replace an existing ``output``.
        trust_remote_code: run code shipped with the model; only if you trust it.
        show_progress: progress on stderr (a bar on a terminal, lines otherwise).
        query_chunk: queries per block of the search.
        corpus_chunk: corpus documents per block of the search.

    Returns:
        A :class:`MiningReport` with the rows.

    Raises:
        UserError: bad options, ``num_negatives`` beyond the corpus, an existing ``output`` without
            ``overwrite``, an unwritable ``output``, bad pairs or corpus, no pair left after filtering.
    """
    from lightning_embed.models.encoder import Encoder, load

    _check_options(num_negatives, range_min, range_max, absolute_margin, relative_margin, batch_size)
    target = _check_target(output, overwrite) if output is not None else None
    start = time.perf_counter()
    rows = _read_pairs(pairs, query_column, positive_column, max_pairs)
    corpus_texts = list(dict.fromkeys(_read_corpus(corpus, corpus_column) if corpus is not None
                                      else (p for _, p in rows)))  # exact duplicates are one document
    in_corpus = set(corpus_texts)
    needed = range_min + num_negatives + (1 if any(p in in_corpus for _, p in rows) else 0)
    if needed > len(corpus_texts):
        raise UserError(f"--num-negatives {num_negatives}"
                        + (f" after --range-min {range_min}" if range_min else "")
                        + f" needs a corpus of at least {needed} distinct documents (the positive never counts); "
                        f"the corpus has {len(corpus_texts)}. Lower --num-negatives or give a larger --corpus.")
    encoder = model if isinstance(model, Encoder) else load(model, device=device, trust_remote_code=trust_remote_code)
    queries = list(dict.fromkeys(q for q, _ in rows))
    _status(f"embedding {len(queries)} queries and {len(corpus_texts)} documents with {encoder.name}", show_progress)
    query_emb = encoder.encode(queries, batch_size=batch_size, prompt="query", show_progress=show_progress)
    corpus_emb = encoder.encode(corpus_texts, batch_size=batch_size, prompt="document", show_progress=show_progress)
    corpus_id = {text: i for i, text in enumerate(corpus_texts)}
    query_id = {text: i for i, text in enumerate(queries)}
    positives_of: dict[str, list[int]] = {}
    for q, p in rows:
        if p in corpus_id:
            positives_of.setdefault(q, []).append(corpus_id[p])
    row_queries = query_emb[torch.tensor([query_id[q] for q, _ in rows])]
    threshold = None
    if absolute_margin is not None or relative_margin is not None:
        missing = list(dict.fromkeys(p for _, p in rows if p not in corpus_id))
        extra = encoder.encode(missing, batch_size=batch_size, prompt="document") if missing else None
        extra_id = {text: i for i, text in enumerate(missing)}
        positive_emb = torch.stack([corpus_emb[corpus_id[p]] if p in corpus_id else extra[extra_id[p]]
                                    for _, p in rows])
        positive_score = (row_queries * positive_emb).sum(1)
        threshold = torch.full_like(positive_score, float("inf"))
        if absolute_margin is not None:
            threshold = torch.minimum(threshold, positive_score - absolute_margin)
        if relative_margin is not None:
            threshold = torch.minimum(threshold, (1 - relative_margin) * positive_score)
    k = min(range_min + num_negatives, len(corpus_texts))
    progress, close = _search_progress(len(rows), show_progress)
    where = encoder.device  # the search runs where the model does (a GPU scores blocks far faster)
    try:
        _, index, above = chunked_top_k(row_queries.to(where), corpus_emb.to(where), k,
                                        exclude=[positives_of.get(q, []) for q, _ in rows],
                                        threshold=threshold.to(where) if threshold is not None else None,
                                        query_chunk=query_chunk, corpus_chunk=corpus_chunk, progress=progress)
    finally:
        close()
    mined, dropped = [], 0
    for (query, positive), candidates, skipped in zip(rows, index.tolist(), above.tolist()):
        # The j-th candidate that passed the margins has rank skipped + j among the non-positive documents.
        chosen = [corpus_texts[c] for j, c in enumerate(candidates)
                  if c >= 0 and skipped + j >= range_min and (range_max is None or skipped + j < range_max)]
        if len(chosen) < num_negatives:
            dropped += 1
            continue
        mined.append({"query": query, "positive": positive, "negatives": chosen[:num_negatives]})
    if not mined:
        raise UserError(f"no pair kept {num_negatives} negatives after the filters (all {len(rows)} dropped); "
                        "loosen --range-min/--range-max or the margins, or lower --num-negatives.")
    report = MiningReport(mined, len(rows), len(corpus_texts), dropped, time.perf_counter() - start)
    if target is not None:
        from lightning_embed.cli.outputs import write_text_atomically

        write_text_atomically(target, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in mined))
    return report


def mine(pairs: str, model: str, output: str | None = None, num_negatives: int = 3, corpus: str | None = None,
         range_min: int = 0, range_max: int | None = None, absolute_margin: float | None = None,
         relative_margin: float | None = None, query_column: str = "query", positive_column: str = "positive",
         corpus_column: str = "text", max_pairs: int | None = None, batch_size: int = 32, device: str | None = None,
         overwrite: bool = False, trust_remote_code: bool = False) -> None:
    """Mine hard negatives for query/positive pairs with an embedding model; write rows that train as they are.

    Each query's most similar corpus documents (exact search, in chunks) become its negatives, after the
    false-negative filters. The output ``{"query", "positive", "negatives"}`` trains with
    ``lightning-embed fit --data.train OUT.jsonl --data.num_negatives K``.

    Args:
        pairs: the pairs: a .jsonl/.csv/.tsv/.parquet file, a saved dataset folder, hf:ORG/NAME or builtin:NAME.
        model: the retriever: a checkpoint of `lightning-embed fit`, a folder of `lightning-embed export` or
            sentence-transformers, or a backbone alias / hub id (untrained).
        output: the .jsonl file to write.
        num_negatives: hard negatives per pair (K); pairs with fewer qualifying candidates are dropped.
        corpus: documents to mine from (a file with column --corpus-column); default: the pairs' positives.
        range_min: skip the this-many most similar non-positive documents (likely unlabelled positives).
        range_max: take negatives only from ranks below this; default: no limit.
        absolute_margin: keep negatives scoring below the positive's score minus this.
        relative_margin: keep negatives scoring below (1 - this) x the positive's score (NV-Retriever: 0.05).
        query_column: column (jsonl key) of the queries.
        positive_column: column of the positives.
        corpus_column: column of the --corpus documents.
        max_pairs: mine for a fixed random subset of this many pairs.
        batch_size: texts per forward pass.
        device: cpu, cuda, ...; default: the GPU when there is one.
        overwrite: replace an existing output file.
        trust_remote_code: run code shipped with the model (custom architectures); only if you trust it.
    """
    from lightning_embed.cli.app import _quiet_third_party

    if not output:
        raise UserError("say where to write the mined pairs: lightning-embed mine PAIRS --model MODEL -o OUT.jsonl")
    _quiet_third_party()
    report = mine_hard_negatives(
        pairs, model, num_negatives=num_negatives, corpus=corpus, range_min=range_min, range_max=range_max,
        absolute_margin=absolute_margin, relative_margin=relative_margin, query_column=query_column,
        positive_column=positive_column, corpus_column=corpus_column, max_pairs=max_pairs, batch_size=batch_size,
        device=device, output=output, overwrite=overwrite, trust_remote_code=trust_remote_code, show_progress=True)
    dropped = f"; {report.dropped} dropped (too few negatives passed the filters)" if report.dropped else ""
    print(f"wrote {len(report.rows)} pairs with {num_negatives} hard negatives each to {output} "
          f"(corpus of {report.corpus_size} documents, {report.seconds:.1f} s{dropped}); "
          f"train with --data.train {output} --data.num_negatives {num_negatives}")


__all__ = ["MiningReport", "chunked_top_k", "mine", "mine_hard_negatives"]
