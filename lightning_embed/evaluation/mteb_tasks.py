"""MTEB tasks from local files: STS, retrieval, classification and clustering, evaluated offline.

A task is named on the command line as ``KIND:PATH`` or ``NAME=KIND:PATH`` (the name defaults to the
file or folder name). Files are JSON lines (``.jsonl``) or tables with a header row (``.tsv``, ``.csv``):

- ``sts``: ``text1``, ``text2``, ``score`` (``sentence1``/``sentence2`` also accepted). Main score: Spearman
  correlation of cosine similarities with the scores.
- ``retrieval``: one file of ``query`` + ``positive`` (or a list ``positives``, plus optional ``negatives``
  that join the corpus), the training-pair format; or a BEIR folder with ``queries.jsonl`` and
  ``corpus.jsonl`` (``_id``/``id``, ``text``, optional ``title``) and ``qrels.tsv`` or ``qrels/test.tsv``
  (``query-id``, ``corpus-id``, ``score``). Main score: nDCG@10.
- ``classification``: ``text``, ``label``, optional ``split`` (``train``/``test``; without it, half of each
  label's rows train the logistic-regression probe). Main score: accuracy.
- ``clustering``: ``text``, ``label``. Main score: V-measure of k-means clusters against the labels.

Reading a file needs no mteb (so a bad file fails before anything loads); :meth:`LocalTask.to_mteb` builds
the mteb 2.x task (an ``AbsTask*`` subclass holding the data in memory).
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_embed.data.reading import jsonl_rows
from lightning_embed.errors import UserError

LOCAL_KINDS: tuple[str, ...] = ("sts", "retrieval", "classification", "clustering")
#: The mteb task type and main score of each kind.
KIND_META: dict[str, tuple[str, str]] = {
    "sts": ("STS", "cosine_spearman"),
    "retrieval": ("Retrieval", "ndcg_at_10"),
    "classification": ("Classification", "accuracy"),
    "clustering": ("Clustering", "v_measure"),
}
_FIELDS = {
    "sts": "text1, text2 and score",
    "retrieval": "query and positive (or positives)",
    "classification": "text and label",
    "clustering": "text and label",
    "beir": "_id (or id) and text",
}


@dataclass
class LocalTask:
    """A task read from local files.

    Attributes:
        name: the task's name in tables, JSON results and logged metrics (``mteb/<name>``).
        kind: ``sts``, ``retrieval``, ``classification`` or ``clustering``.
        source: the spec it came from (``KIND:PATH``).
        data: the rows, by kind (see :func:`read_local_task`).
    """

    name: str
    kind: str
    source: str
    data: dict[str, Any] = field(repr=False)

    @property
    def main_score(self) -> str:
        """The mteb metric reported as this task's score."""
        return KIND_META[self.kind][1]

    def to_mteb(self):
        """The mteb task holding this data (imports mteb)."""
        return _build_mteb_task(self)


def is_local_spec(spec: str) -> bool:
    """Whether a task spec names a local file (``KIND:PATH`` or ``NAME=KIND:PATH``)."""
    body = spec.split("=", 1)[1] if "=" in spec.split(":", 1)[0] else spec
    return body.split(":", 1)[0].lower() in LOCAL_KINDS and ":" in body


def parse_local_task(spec: str) -> LocalTask:
    """Reads and validates the task named by ``KIND:PATH`` or ``NAME=KIND:PATH``.

    Raises:
        UserError: an unknown kind, a missing file, a row without a needed field (file and line named).
    """
    name = None
    body = spec
    if "=" in spec.split(":", 1)[0]:
        name, body = spec.split("=", 1)
    kind, _, path_text = body.partition(":")
    kind = kind.lower()
    if kind not in LOCAL_KINDS or not path_text:
        raise UserError(f"task {spec!r}: a local task is KIND:PATH with KIND one of {', '.join(LOCAL_KINDS)}.")
    path = Path(path_text).expanduser()
    if not path.exists():
        raise UserError(f"task {spec!r}: {path_text} does not exist.")
    reader = {"sts": _read_sts, "retrieval": _read_retrieval, "classification": _read_classification,
              "clustering": _read_clustering}[kind]
    data = reader(path)
    return LocalTask(name=name or (path.stem if path.is_file() else path.name), kind=kind, source=spec, data=data)


# ------------------------------------------------------------------------------------------------ rows


def _rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, row)`` for every row of a ``.jsonl``, ``.tsv`` or ``.csv`` file (``where`` names the line)."""
    suffix = path.suffix.lower()
    if path.is_dir():
        raise UserError(f"{path} is a folder; this task kind reads one .jsonl, .tsv or .csv file.")
    try:
        if suffix in (".jsonl", ".json"):
            for where, row in jsonl_rows(path):
                yield f"{path}: {where}", row
        elif suffix in (".tsv", ".csv"):
            with path.open(encoding="utf-8", newline="") as handle:
                reader = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
                if not reader.fieldnames:
                    raise UserError(f"{path} is empty; it needs a header row and one row per example.")
                for number, row in enumerate(reader, 2):
                    yield f"{path}: line {number}", {k: v for k, v in row.items() if k is not None}
        else:
            raise UserError(f"{path}: unsupported file type {suffix or '(none)'!r}; use .jsonl, .tsv or .csv.")
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text ({err.reason}).") from None


def _field(where: str, row: dict[str, Any], names: tuple[str, ...], kind: str) -> Any:
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    also = f" (or {', '.join(names[1:])})" if len(names) > 1 else ""
    what = "BEIR queries and corpus" if kind == "beir" else kind
    raise UserError(f"{where} has no field {names[0]!r}{also}; {what} rows need {_FIELDS[kind]}.")


def _text(where: str, row: dict[str, Any], names: tuple[str, ...], kind: str) -> str:
    value = _field(where, row, names, kind)
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: field {names[0]!r} must be non-empty text, got {value!r}.")
    return value


def _texts(where: str, value: Any, name: str) -> list[str]:
    if isinstance(value, str):  # a JSON-encoded list in a table cell, or one text
        try:
            decoded = json.loads(value)
            value = decoded if isinstance(decoded, list) else [value]
        except json.JSONDecodeError:
            value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise UserError(f"{where}: field {name!r} must be a list of non-empty texts.")
    return value


def _number(where: str, row: dict[str, Any], name: str, kind: str) -> float:
    value = _field(where, row, (name,), kind)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{where}: field {name!r} must be a number, got {value!r}.") from None
    if number != number:
        raise UserError(f"{where}: field {name!r} is NaN.")
    return number


# ----------------------------------------------------------------------------------------------- kinds


def _read_sts(path: Path) -> dict[str, Any]:
    text1, text2, scores = [], [], []
    for where, row in _rows(path):
        text1.append(_text(where, row, ("text1", "sentence1"), "sts"))
        text2.append(_text(where, row, ("text2", "sentence2"), "sts"))
        scores.append(_number(where, row, "score", "sts"))
    if len(scores) < 2 or min(scores) == max(scores):
        raise UserError(f"{path}: an STS task needs at least two rows with different scores (a correlation "
                        "of constant scores is undefined).")
    return {"sentence1": text1, "sentence2": text2, "score": scores}


def _read_retrieval(path: Path) -> dict[str, Any]:
    if path.is_dir():
        return _read_beir(path)
    queries: dict[str, str] = {}  # text -> id
    corpus: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for where, row in _rows(path):
        query = _text(where, row, ("query",), "retrieval")
        if "positives" in row:
            positives = _texts(where, row["positives"], "positives")
        else:
            positives = [_text(where, row, ("positive", "positives"), "retrieval")]
        negatives = _texts(where, row["negatives"], "negatives") if row.get("negatives") else []
        qid = queries.setdefault(query, f"q{len(queries)}")
        for doc in positives + negatives:
            corpus.setdefault(doc, f"d{len(corpus)}")
        for doc in positives:
            qrels.setdefault(qid, {})[corpus[doc]] = 1
    if not queries:
        raise UserError(f"{path} holds no rows; a retrieval file has one query + positive per line.")
    return {"queries": [{"id": i, "text": t} for t, i in queries.items()],
            "corpus": [{"id": i, "text": t, "title": ""} for t, i in corpus.items()], "qrels": qrels}


def _read_beir(folder: Path) -> dict[str, Any]:
    files = {"queries": folder / "queries.jsonl", "corpus": folder / "corpus.jsonl"}
    qrels_file = next((p for p in (folder / "qrels.tsv", folder / "qrels" / "test.tsv") if p.is_file()), None)
    missing = [str(p.name) for p in files.values() if not p.is_file()] + ([] if qrels_file else ["qrels.tsv"])
    if missing:
        raise UserError(f"retrieval folder {folder} lacks {', '.join(missing)}; it needs queries.jsonl, "
                        "corpus.jsonl and qrels.tsv (or qrels/test.tsv), as in BEIR.")
    loaded: dict[str, dict[str, dict[str, str]]] = {}
    for key, file in files.items():
        rows: dict[str, dict[str, str]] = {}
        for where, row in _rows(file):
            rid = str(_field(where, row, ("_id", "id"), "beir"))
            if rid in rows:
                raise UserError(f"{where}: id {rid!r} appears twice in {file.name}.")
            text = _text(where, row, ("text",), "beir")
            rows[rid] = {"id": rid, "text": text, **({"title": str(row.get("title") or "")} if key == "corpus" else {})}
        loaded[key] = rows
    qrels: dict[str, dict[str, int]] = {}
    with qrels_file.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            parts = line.rstrip("\n").split("\t")
            if not line.strip() or (number == 1 and not _is_int(parts[-1])):
                continue  # blank line or the header (query-id, corpus-id, score)
            where = f"{qrels_file}: line {number}"
            if len(parts) not in (3, 4) or not _is_int(parts[-1]):
                raise UserError(f"{where} must be query-id<TAB>corpus-id<TAB>score (an integer).")
            qid, did, score = parts[0], parts[-2], int(parts[-1])
            if qid not in loaded["queries"]:
                raise UserError(f"{where}: query id {qid!r} is not in queries.jsonl.")
            if did not in loaded["corpus"]:
                raise UserError(f"{where}: corpus id {did!r} is not in corpus.jsonl.")
            qrels.setdefault(qid, {})[did] = score
    judged = [q for q in loaded["queries"].values() if any(s > 0 for s in qrels.get(q["id"], {}).values())]
    if not judged:
        raise UserError(f"{qrels_file} marks no document relevant (score > 0) to any query.")
    # Queries without a relevant document cannot score; BEIR drops them too.
    return {"queries": judged, "corpus": list(loaded["corpus"].values()), "qrels": qrels}


def _is_int(text: str) -> bool:
    return text.strip().lstrip("-").isdigit()


def _labeled(path: Path, kind: str) -> tuple[list[str], list[str], list[str | None]]:
    texts, labels, splits = [], [], []
    for where, row in _rows(path):
        texts.append(_text(where, row, ("text",), kind))
        label = _field(where, row, ("label",), kind)
        if isinstance(label, (dict, list)) or str(label).strip() == "":
            raise UserError(f"{where}: field 'label' must be a non-empty string or number, got {label!r}.")
        labels.append(str(label))
        split = row.get("split")
        if split not in (None, "", "train", "test"):
            raise UserError(f"{where}: field 'split' must be 'train' or 'test', got {split!r}.")
        splits.append(split or None)
    if len(set(labels)) < 2:
        raise UserError(f"{path}: a {kind} task needs at least two different labels.")
    return texts, labels, splits


def _read_classification(path: Path) -> dict[str, Any]:
    texts, labels, splits = _labeled(path, "classification")
    names = sorted(set(labels))
    ids = [names.index(label) for label in labels]
    if any(splits):
        if not all(splits):
            raise UserError(f"{path}: some rows have a 'split' and some do not; give every row one or none.")
        train = [i for i, s in enumerate(splits) if s == "train"]
        test = [i for i, s in enumerate(splits) if s == "test"]
    else:
        # Half of each label's rows (a fixed shuffle) train the probe, the rest test it.
        train, test = [], []
        for label in range(len(names)):
            rows = [i for i, y in enumerate(ids) if y == label]
            if len(rows) < 2:
                raise UserError(f"{path}: label {names[label]!r} has one row; each label needs two (one to "
                                "train the probe, one to test), or give rows a 'split'.")
            random.Random(label).shuffle(rows)
            train += rows[: len(rows) // 2]
            test += rows[len(rows) // 2:]
    if not train or not test:
        raise UserError(f"{path}: classification needs rows in both splits (train and test).")
    return {"train": {"text": [texts[i] for i in sorted(train)], "label": [ids[i] for i in sorted(train)]},
            "test": {"text": [texts[i] for i in sorted(test)], "label": [ids[i] for i in sorted(test)]},
            "label_names": names}


def _read_clustering(path: Path) -> dict[str, Any]:
    texts, labels, _ = _labeled(path, "clustering")
    names = sorted(set(labels))
    return {"sentences": texts, "labels": [names.index(label) for label in labels], "label_names": names}


# ------------------------------------------------------------------------------------------- mteb tasks


def _metadata(task: LocalTask):
    from mteb.abstasks.task_metadata import TaskMetadata

    task_type, main_score = KIND_META[task.kind]
    return TaskMetadata(
        name=task.name, type=task_type, main_score=main_score,
        description=f"Local {task.kind} task read from {task.source}.", reference=None,
        dataset={"path": f"local/{task.name}", "revision": "local"}, category="t2t", eval_splits=["test"],
        eval_langs=["eng-Latn"], date=None, dialect=None, domains=None, task_subtypes=None, license=None,
        annotations_creators=None, modalities=["text"], sample_creation=None, bibtex_citation=None,
    )


def _build_mteb_task(task: LocalTask):
    from datasets import Dataset, DatasetDict
    from mteb.abstasks.classification import AbsTaskClassification
    from mteb.abstasks.clustering import AbsTaskClustering
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
    from mteb.abstasks.sts import AbsTaskSTS

    data = task.data
    if task.kind == "sts":
        base, attrs = AbsTaskSTS, {"min_score": min(data["score"]), "max_score": max(data["score"])}

        def make():
            return DatasetDict({"test": Dataset.from_dict(data)})
    elif task.kind == "retrieval":
        base, attrs = AbsTaskRetrieval, {}

        def make():
            split = RetrievalSplitData(queries=Dataset.from_list(data["queries"]),
                                       corpus=Dataset.from_list(data["corpus"]),
                                       relevant_docs=data["qrels"], top_ranked=None)
            return {"default": {"test": split}}
    elif task.kind == "classification":
        largest = max(data["train"]["label"].count(y) for y in set(data["train"]["label"]))
        # The whole train split trains the probe once (mteb's default draws 8 per label, 10 times).
        base, attrs = AbsTaskClassification, {"samples_per_label": largest, "n_experiments": 1}

        def make():
            return DatasetDict({"train": Dataset.from_dict(data["train"]), "test": Dataset.from_dict(data["test"])})
    else:
        # Embed every text (mteb's default embeds a 4% sample, sized for its large sets).
        base, attrs = AbsTaskClustering, {"max_fraction_of_documents_to_embed": None, "max_document_to_embed": None}

        def make():
            return DatasetDict({"test": Dataset.from_dict({"sentences": data["sentences"], "labels": data["labels"]})})

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        self.dataset = make()
        self.data_loaded = True

    cls = type(f"Local{base.__name__.removeprefix('AbsTask')}Task", (base,),
               {"metadata": _metadata(task), "load_data": load_data, **attrs})
    return cls()


def write_retrieval_task(examples, path: str | Path) -> Path:
    """Writes query/positive pairs (e.g. :func:`~lightning_embed.data.reading.read_examples`) as a retrieval task."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(json.dumps({"query": example.query, "positive": example.positive}) + "\n")
    return path


__all__ = ["LOCAL_KINDS", "LocalTask", "is_local_spec", "parse_local_task", "write_retrieval_task"]
