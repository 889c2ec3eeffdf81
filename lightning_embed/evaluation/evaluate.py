"""``lightning-embed evaluate``: MTEB scores of a checkpoint or export, optionally beside its untrained backbone.

Tasks are standard MTEB tasks by name (their data comes from the Hugging Face hub) or local files
(:mod:`lightning_embed.evaluation.mteb_tasks`, evaluated offline). The model runs through mteb 2.x's encoder protocol
(:func:`mteb_encoder`): retrieval queries get the run's query prompt, documents its document prompt, and
symmetric tasks (STS, classification, clustering) the query prompt, as for E5-style instruction prefixes.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from lightning_embed.errors import UserError
from lightning_embed.evaluation.mteb_tasks import LOCAL_KINDS, LocalTask, is_local_spec, parse_local_task
from lightning_embed.models.encoder import Encoder, check_texts, load, load_pretrained

#: The study's 15 MTEB tasks (Ziarko et al., 2024), English subsets.
PAPER_SUITE: tuple[str, ...] = (
    "MedrxivClusteringS2S", "StackExchangeClusteringP2P", "ArguAna", "CQADupstackGisRetrieval",
    "CQADupstackAndroidRetrieval", "QuoraRetrieval", "BIOSSES", "SICK-R", "STS22", "SummEval",
    "ImdbClassification", "Banking77Classification", "AmazonReviewsClassification", "SprintDuplicateQuestions",
    "StackOverflowDupQuestions",
)
SUITES = {"paper": PAPER_SUITE}
_LOCAL_HINT = ("evaluate local files instead, e.g. --tasks sts:pairs.jsonl retrieval:examples/tasks/"
               "stdlib-code-retrieval.jsonl (kinds: " + ", ".join(LOCAL_KINDS) + ")")


def evaluate(model: str, tasks: list[str] | None = None, suite: Literal["paper"] | None = None,
             baseline: bool = False, output: str | None = None, batch_size: int = 32,
             device: str | None = None, trust_remote_code: bool = False, dims: str | list[int] | None = None,
             overwrite: bool = False) -> None:
    """Evaluate a model on MTEB tasks and print the main score of each.

    Args:
        model: a checkpoint of `lightning-embed fit` (a .ckpt file or an FSDP2 checkpoint folder), a folder
            of `lightning-embed export`, or a backbone name or folder (scores the untrained model).
        tasks: one or more tasks (also comma-separated): MTEB task names (their data needs the Hugging Face hub) or
            local files as KIND:PATH with KIND sts, retrieval, classification or clustering
            (NAME=KIND:PATH names one). File formats: see examples/tasks/README.md.
        suite: add a named set of MTEB tasks: paper (the study's 15 tasks).
        baseline: also score the untrained backbone (same pooling, prompts and length), in a column beside.
        output: write the main scores to this JSON file.
        batch_size: texts per forward pass.
        device: cpu, cuda, ...; default: the GPU when there is one.
        trust_remote_code: run code shipped with the model (custom architectures); only if you trust it.
            Never taken from the checkpoint or folder itself.
        dims: also score the first N coordinates of every embedding, for each N (e.g. 64,128,256; a model
            trained with model.matryoshka_dims): one column per dimension beside the full one. The texts are
            encoded once; each truncation is re-normalised (cosine) before scoring.
        overwrite: replace an existing --output file (without it, an existing file is refused before scoring).
    """
    from lightning_embed.cli.app import _quiet_third_party

    _quiet_third_party()  # loading bars and library warnings say nothing to the user of a command
    specs = _split_specs(tasks) + list(SUITES[suite] if suite else ())
    if not specs:
        raise UserError("name the tasks: --tasks sts:FILE retrieval:FILE_OR_FOLDER ... and/or --suite paper.")
    if batch_size < 1:
        raise UserError(f"batch_size={batch_size} must be at least 1.")
    out_path = _check_output(output, overwrite)
    dimensions = _parse_dims(dims)
    resolved = resolve_tasks(specs, english_only=set(SUITES[suite]) if suite else set())
    encoder = load(model, device=device, trust_remote_code=trust_remote_code)
    too_large = [d for d in dimensions if encoder.dimension and d > encoder.dimension]
    if too_large:
        raise UserError(f"--dims {','.join(map(str, too_large))}: larger than the embedding size {encoder.dimension}.")
    base = baseline_encoder(encoder, trust_remote_code=trust_remote_code) if baseline else None
    if baseline and base is None:
        from lightning_embed.cli.terminal import console

        console(stderr=True).print(f"note: {model} is an untrained model already; no baseline column.")
    cache: dict = {}  # full embeddings, truncated per dimension instead of encoding again
    scores = run_mteb(encoder, resolved, batch_size=batch_size, cache=cache if dimensions else None)
    base_scores = run_mteb(base, resolved, batch_size=batch_size) if base is not None else None
    results = _results(model, encoder, base, resolved, scores, base_scores)
    if dimensions:
        results["dims"] = {str(d): run_mteb(encoder, resolved, batch_size=batch_size, dimension=d, cache=cache)
                           for d in dimensions}
        results["full_dimension"] = encoder.dimension
    print_results(results)
    if out_path is not None:
        _write_json_atomic(out_path, results)


def _split_specs(tasks: str | list[str] | None) -> list[str]:
    if tasks is None:
        return []
    items = [tasks] if isinstance(tasks, str) else list(tasks)
    # "a,b" and "a b" in one argument are several tasks too (as written in a config or a quoted list).
    return [spec for item in items for spec in item.replace(",", " ").split()]


def _parse_dims(dims: str | Sequence[int] | None) -> list[int]:
    """``--dims`` as a list of distinct positive integers, largest first (``"64,128"`` or ``[64, 128]``)."""
    if dims is None:
        return []
    items = str(dims).strip("[]").replace(",", " ").split() if isinstance(dims, str) else list(dims)
    try:
        values = [int(item) for item in items]
    except (TypeError, ValueError):
        values = []
    if not values or any(v < 1 for v in values):
        raise UserError(f"--dims {dims!r}: give positive integers, e.g. --dims 64,128,256.")
    return sorted(set(values), reverse=True)


def _check_output(output: str | None, overwrite: bool) -> Path | None:
    # Before any scoring: a result that cannot be written must not cost the evaluation first.
    from lightning_embed.cli.outputs import check_output

    if output is None:
        return None
    path = Path(output).expanduser()
    if path.is_dir():
        raise UserError(f"--output {output} is a folder; give a file name such as results.json.")
    if not path.parent.exists():
        raise UserError(f"--output {output}: folder {path.parent} does not exist.")
    return check_output(path, "--output", overwrite=overwrite)


# ------------------------------------------------------------------------------------------------ tasks


def resolve_tasks(specs: Sequence[str], *, english_only: set[str] | frozenset = frozenset()) -> list[Any]:
    """Local tasks (read and checked) and standard mteb tasks (data loaded) for the given specs.

    Local files are read first, so a bad file fails before anything is downloaded or loaded.

    Raises:
        UserError: a bad local file, an unknown task name (close names suggested), a standard task while
            the hub is offline or unreachable, two tasks with one name.
    """
    local = {spec: parse_local_task(spec) for spec in specs if is_local_spec(spec)}
    standard = [spec for spec in specs if spec not in local]
    for spec in standard:
        if ":" in spec and spec.split(":", 1)[0].lower() not in LOCAL_KINDS and len(spec.split(":", 1)[0]) > 1:
            raise UserError(f"task {spec!r}: unknown kind {spec.split(':', 1)[0]!r}; local tasks are KIND:PATH with "
                            f"KIND one of {', '.join(LOCAL_KINDS)}.")
        if Path(spec).exists():
            raise UserError(f"task {spec!r} is a file; say which kind of task it holds, e.g. sts:{spec} or "
                            f"retrieval:{spec}.")
    mteb_tasks = _standard_tasks(standard, english_only) if standard else {}
    resolved = [local[s] if s in local else mteb_tasks[s] for s in specs]
    names = [task_name(t) for t in resolved]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"two tasks are named {duplicates[0]!r}; name local ones apart with NAME=KIND:PATH.")
    return resolved


def task_name(task) -> str:
    """The name of a local or mteb task."""
    return task.name if isinstance(task, LocalTask) else task.metadata.name


def _quiet_mteb():
    logging.getLogger("mteb").setLevel(logging.ERROR)
    return warnings.catch_warnings()


@lru_cache(maxsize=1)
def mteb_task_names() -> tuple[str, ...]:
    """Every task name mteb knows (superseded ones included: the study's tasks are among them)."""
    import mteb

    with _quiet_mteb():
        warnings.simplefilter("ignore")
        return tuple(sorted(t.metadata.name for t in mteb.get_tasks(exclude_superseded=False)))


def _hub_offline() -> bool:
    flags = (os.environ.get(v, "").strip().lower() for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(f in ("1", "true", "yes", "on") for f in flags)


def _standard_tasks(names: Sequence[str], english_only) -> dict[str, Any]:
    known = set(mteb_task_names())
    for name in names:
        if name not in known:
            lower = {k.lower(): k for k in known}
            close = [lower[name.lower()]] if name.lower() in lower else difflib.get_close_matches(name, known, n=3)
            hint = f" Did you mean {' or '.join(close)}?" if close else ""
            raise UserError(f"unknown task {name!r}.{hint} Local tasks are KIND:PATH with KIND one of "
                            f"{', '.join(LOCAL_KINDS)}.")
    if _hub_offline():
        raise UserError(f"{', '.join(names)}: standard MTEB tasks download their data from the Hugging Face hub, "
                        f"but HF_HUB_OFFLINE is set. Unset it on a machine with network, or {_LOCAL_HINT}.")
    import mteb

    out = {}
    for name in names:
        with _quiet_mteb():
            warnings.simplefilter("ignore")
            task = mteb.get_task(name, languages=["eng"] if name in english_only else None)
            try:
                task.load_data()
            except Exception as err:  # noqa: BLE001 - any failure to fetch data is the same user-facing problem
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise UserError(f"cannot download the data of MTEB task {name!r} from the Hugging Face hub "
                                f"({first}); without network, {_LOCAL_HINT}.") from None
        out[name] = task
    return out


# ----------------------------------------------------------------------------------------------- model


@lru_cache(maxsize=1)
def _adapter_class():
    # Built on first use: importing mteb takes seconds, which `import lightning_embed` must not pay.
    import torch
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.types import PromptType

    class LightningEmbedMTEBEncoder(AbsEncoder):
        """mteb 2.x encoder protocol over an :class:`~lightning_embed.models.encoder.Encoder`."""

        def __init__(self, encoder: Encoder, meta, batch_size: int, show_progress: bool | None,
                     dimension: int | None = None, cache: dict | None = None) -> None:
            self.model = encoder
            self.mteb_model_meta = meta
            self.batch_size = batch_size
            self.show_progress = show_progress
            self.dimension = dimension
            self.cache = cache

        def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
            texts = [text for batch in inputs for text in batch["text"]]
            prompt = "document" if prompt_type == PromptType.document else "query"
            try:
                check_texts(texts, what=f"MTEB task {task_metadata.name} ({hf_split}, {hf_subset}) {prompt} texts")
            except UserError as err:
                raise UserError(f"{err} Such a task cannot be scored as is.") from None
            from lightning_embed.losses.matryoshka import truncate

            key = (prompt, tuple(texts))
            if self.cache is not None and key in self.cache:
                return truncate(self.cache[key], self.dimension, self.model.normalize).numpy()
            heartbeat = getattr(self, "heartbeat", None)
            # Chunked so a log shows progress inside a large corpus too (one line per interval at most).
            chunked = heartbeat is not None and heartbeat.enabled
            step = max(self.batch_size, 1) * 16 if chunked else max(len(texts), 1)
            # With a cache, the full embeddings are kept and every dimension is a truncation of them.
            dimension = None if self.cache is not None else self.dimension
            chunks = []
            for start in range(0, max(len(texts), 1), step):
                part = texts[start:start + step]
                chunks.append(self.model.encode(part, batch_size=self.batch_size, prompt=prompt, dimension=dimension,
                                                show_progress=self.show_progress, convert_to_numpy=False))
                if chunked:
                    heartbeat(len(part), note=f"task {task_metadata.name}")
            full = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
            if self.cache is None:
                return full.numpy()
            self.cache[key] = full
            return truncate(full, self.dimension, self.model.normalize).numpy()

    return LightningEmbedMTEBEncoder


def mteb_encoder(encoder: Encoder, batch_size: int = 32, show_progress: bool | None = None,
                 dimension: int | None = None, cache: dict | None = None):
    """Wraps an :class:`~lightning_embed.models.encoder.Encoder` in mteb 2.x's encoder protocol.

    ``dimension`` keeps the first coordinates of each embedding (re-normalised); ``cache`` keeps the full
    embeddings of each list of texts, so several dimensions are scored from one encoding.
    """
    from mteb.models.model_meta import ModelMeta, ScoringFunction

    meta = ModelMeta.create_empty({
        "name": f"lightning-embed/{encoder.name}", "revision": "local", "framework": ["PyTorch"],
        "similarity_fn_name": ScoringFunction.COSINE if encoder.normalize else ScoringFunction.DOT_PRODUCT,
        "embed_dim": dimension or encoder.dimension or None, "max_tokens": encoder.max_length, "modalities": ["text"],
    })
    return _adapter_class()(encoder, meta, batch_size, show_progress, dimension, cache)


def baseline_encoder(encoder: Encoder, *, trust_remote_code: bool = False) -> Encoder | None:
    """The untrained backbone of a trained encoder, embedding the same way (None if it has none).

    ``trust_remote_code`` comes from the caller, never from the trained model's saved settings.
    """
    hparams = encoder.info.get("hparams")
    if not hparams:
        return None  # already an untrained model: nothing to compare against
    base = load_pretrained(hparams["backbone"], pooling=hparams.get("pooling", "mean"),
                           normalize=hparams.get("normalize", True), query_prompt=hparams.get("query_prompt", ""),
                           document_prompt=hparams.get("document_prompt", ""), max_length=encoder.max_length,
                           num_layers=hparams.get("num_layers"), device=encoder.device,
                           trust_remote_code=trust_remote_code)
    base.query_max_length, base.document_max_length = encoder.query_max_length, encoder.document_max_length
    return base


def run_mteb(encoder: Encoder, tasks: Sequence[Any], *, batch_size: int = 32, show_progress: bool | None = None,
             dimension: int | None = None, cache: dict | None = None) -> dict[str, float]:
    """Runs mteb on local (:class:`LocalTask`) and mteb tasks; returns each task's main score.

    ``dimension``: score the first coordinates only; ``cache``: see :func:`mteb_encoder`.
    """
    import datasets
    import mteb

    from lightning_embed.cli.terminal import Heartbeat

    model = mteb_encoder(encoder, batch_size, show_progress, dimension, cache)
    # Plain lines when stdout is not a terminal (a rich bar would only show its last frame in a log).
    # (none when progress is off, as for the MTEB callback inside a fit, which has its own progress lines)
    model.heartbeat = Heartbeat(f"evaluate {encoder.name}", unit="texts embedded") if show_progress is not False \
        else None
    objects = [t.to_mteb() if isinstance(t, LocalTask) else t for t in tasks]
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        with _quiet_mteb():
            warnings.simplefilter("ignore")
            result = mteb.evaluate(model, objects, cache=None, show_progress_bar=False, co2_tracker=False,
                                   encode_kwargs={"batch_size": batch_size, "show_progress_bar": False})
    finally:
        if bars:
            datasets.enable_progress_bars()
    if model.heartbeat is not None:
        model.heartbeat.done()
    return {r.task_name: float(r.get_score()) for r in result.task_results}


# --------------------------------------------------------------------------------------------- results


def _results(model: str, encoder: Encoder, base: Encoder | None, tasks, scores, base_scores) -> dict[str, Any]:
    import importlib.metadata

    detail = {}
    for task in tasks:
        name = task_name(task)
        if isinstance(task, LocalTask):
            kind, metric, source = task.kind, task.main_score, task.source
        else:
            kind, metric, source = task.metadata.type, task.metadata.main_score, "mteb"
        detail[name] = {"type": kind, "metric": metric, "main_score": scores.get(name),
                        "baseline_main_score": base_scores.get(name) if base_scores else None, "source": source}
    versions = {}
    for dist in ("lightning-embed", "mteb", "torch", "transformers"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {
        "model": model,
        "baseline": base.info.get("source") if base is not None else None,
        "main_scores": {n: d["main_score"] for n, d in detail.items()},
        "baseline_main_scores": {n: d["baseline_main_score"] for n, d in detail.items()} if base_scores else None,
        "tasks": detail,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions,
    }


def print_results(results: dict[str, Any]) -> None:
    """A table of main scores (and the baseline's, with the difference)."""
    from rich.table import Table

    from lightning_embed.cli.terminal import console

    with_base = results.get("baseline_main_scores") is not None
    dims = results.get("dims") or {}
    table = Table(title=f"MTEB main scores: {results['model']}", title_justify="left")
    score = f"score ({results['full_dimension']}d)" if dims else "score"
    numeric = (score, "baseline", "Δ", *(f"{d}d" for d in dims))
    for col in ("task", "type", "metric", score, *(("baseline", "Δ") if with_base else ()), *(f"{d}d" for d in dims)):
        table.add_column(col, justify="right" if col in numeric else "left",
                         no_wrap=col == "task")  # a task's name is its key in the JSON: show it whole
    for name, d in results["tasks"].items():
        row = [name, str(d["type"]), d["metric"], _fmt(d["main_score"])]
        if with_base:
            b, s = d["baseline_main_score"], d["main_score"]
            delta = s - b if s is not None and b is not None else None
            colour = "green" if delta is not None and delta > 0 else "red"
            row += [_fmt(b), f"[{colour}]{delta:+.4f}[/{colour}]" if delta is not None else "-"]
        row += [_fmt(scores.get(name)) for scores in dims.values()]
        table.add_row(*row)
    console().print(table)
    if with_base:
        console().print(f"baseline: untrained {results['baseline']}")


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def _write_json_atomic(path: Path, data: Any) -> None:
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}; the scores are printed above.") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
        os.replace(tmp, path)
    except OSError as err:  # a full disk: the previous file, if any, is left as it was
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {err.strerror or err}; the scores are printed above.") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = ["PAPER_SUITE", "baseline_encoder", "evaluate", "mteb_encoder", "resolve_tasks", "run_mteb"]
