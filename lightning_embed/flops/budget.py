"""What a FLOP budget buys: per-example and per-step cost from the data, steps and examples, no training.

Used twice: by :class:`~lightning_embed.flops.callback.FlopCallback` before training (to set the step count
the learning-rate schedule is built for) and by ``lightning-embed flops --config X --budget C`` (through
:func:`dry_run` and :func:`print_report`).

The per-step cost is measured on real batches: the first ``num_batches`` batches of the training loader
are collated (tokenised, no forward) and their token statistics averaged. With ``exact`` accounting the
attention term needs the mean *squared* length, which an average length alone would underestimate.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from lightning_embed.errors import UserError
from lightning_embed.flops.contract import CostedModule
from lightning_embed.flops.model import (
    Accounting,
    FlopCount,
    FlopModel,
    ParameterCounts,
    TokenStats,
)

#: Batches collated to estimate the per-step cost.
DEFAULT_ESTIMATE_BATCHES = 64


def parse_budget(value: Any, name: str = "max_flops") -> float | None:
    """A FLOP budget from a number or a string like ``"1.5e15"`` (YAML reads ``1.5e15`` as a string).

    Raises:
        UserError: not a number, not finite, or not positive.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise UserError(f"{name} must be a number of FLOP such as 1.5e15, not {value!r}.")
    try:
        budget = float(value.replace("_", "")) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number of FLOP such as 1.5e15, not {value!r}.") from None
    if not math.isfinite(budget) or budget <= 0:
        raise UserError(f"{name} must be a positive number of FLOP such as 1.5e15, not {value!r}.")
    return budget


# ---------------------------------------------------------------------------------------------- batches


def batch_masks(batch: Any) -> tuple[list[torch.Tensor], int]:
    """The attention masks a training batch encodes and its number of examples.

    Understands :class:`~lightning_embed.data.batches.PairBatch` (queries and documents) and, for other data,
    any mapping holding ``attention_mask`` (nested mappings, lists and tuples are searched).
    """
    queries, documents = getattr(batch, "queries", None), getattr(batch, "documents", None)
    if isinstance(queries, dict) and isinstance(documents, dict):
        masks = [queries["attention_mask"], documents["attention_mask"]]
        return masks, int(queries["attention_mask"].shape[0])
    masks: list[torch.Tensor] = []

    def visit(value: Any) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("attention_mask"), torch.Tensor):
                masks.append(value["attention_mask"])
            else:
                for v in value.values():
                    visit(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                visit(v)

    visit(batch)
    if not masks:
        raise UserError(f"cannot count the FLOP of a {type(batch).__name__} batch: it holds no attention_mask "
                        "(FlopCallback understands PairBatch and mappings with input_ids/attention_mask).")
    return masks, int(masks[0].shape[0])


def batch_stats(batch: Any) -> tuple[TokenStats, int]:
    """Token stats of every encoder input of a batch (summed) and its number of examples."""
    masks, examples = batch_masks(batch)
    return sum((TokenStats.from_mask(m) for m in masks), TokenStats()), examples


@contextlib.contextmanager
def preserved_rng():
    """Runs a block without disturbing the global random state (sampling must not change training)."""
    state = random.getstate()
    try:
        import numpy as np

        np_state = np.random.get_state()
    except ImportError:  # pragma: no cover - numpy comes with torch's usual installs
        np, np_state = None, None
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []):
        try:
            yield
        finally:
            random.setstate(state)
            if np is not None:
                np.random.set_state(np_state)


@dataclass(frozen=True)
class DataSample:
    """Token statistics of sampled training batches.

    Attributes:
        batches: how many batches were collated.
        examples: examples in them.
        queries: summed stats of the query inputs.
        documents: summed stats of the document inputs (positives and hard negatives).
        batches_per_epoch: the loader's length (per process), if it has one.
    """

    batches: int
    examples: int
    queries: TokenStats
    documents: TokenStats
    batches_per_epoch: int | None = None

    @property
    def per_batch(self) -> TokenStats:
        return (self.queries + self.documents) * (1.0 / self.batches)

    @property
    def examples_per_batch(self) -> float:
        return self.examples / self.batches


def sample_loader(loader: Iterable, num_batches: int = DEFAULT_ESTIMATE_BATCHES) -> DataSample:
    """Collates up to ``num_batches`` batches of a loader (no forward) and sums their token stats.

    Raises:
        UserError: the loader yields nothing.
    """
    queries, documents, examples, n = TokenStats(), TokenStats(), 0, 0
    with preserved_rng():
        for batch in loader:
            masks, count = batch_masks(batch)
            queries = queries + TokenStats.from_mask(masks[0])
            documents = documents + sum((TokenStats.from_mask(m) for m in masks[1:]), TokenStats())
            examples += count
            n += 1
            if n >= num_batches:
                break
    if n == 0:
        raise UserError("the training data loader yields no batch: nothing to estimate the FLOP per step from.")
    try:
        length = len(loader)  # type: ignore[arg-type]
    except TypeError:
        length = None
    return DataSample(n, examples, queries, documents, length)


# ---------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class BudgetReport:
    """What a budget buys (all counts over every process).

    Attributes:
        accounting: ``exact`` or ``paper`` (which model FLOP the budget is spent in).
        budget: the FLOP budget, or None (then ``steps`` and ``examples`` are None).
        params: parameter counts of the trained module.
        method: the paper formula this module matches.
        per_example: FLOP of one training example (query + positive + negatives).
        per_step: FLOP of one optimizer step (all processes, gradient accumulation included).
        examples_per_step: examples per optimizer step.
        query_tokens: mean real query length.
        document_tokens: mean real document length (per document).
        documents_per_example: 1 + hard negatives.
        padding: share of computed positions that are padding.
        steps: optimizer steps the budget buys (rounded down).
        examples: examples those steps see.
        spent: model FLOP those steps use (at most the budget).
        steps_per_epoch: optimizer steps per pass over the data, if known.
        epochs: passes over the data the budget buys, if known.
        sampled_batches: batches measured (0 when lengths were given).
        gradcache: costed with GradCache's extra forward (hardware).
        recompute: costed with activation-checkpointing recomputation (hardware).
    """

    accounting: Accounting
    budget: float | None
    params: ParameterCounts
    method: str
    per_example: FlopCount
    per_step: FlopCount
    examples_per_step: float
    query_tokens: float
    document_tokens: float
    documents_per_example: float
    padding: float
    steps: int | None
    examples: int | None
    spent: float | None
    steps_per_epoch: int | None
    epochs: float | None
    sampled_batches: int
    gradcache: bool = False
    recompute: bool = False


def plan_budget(
    flop_model: FlopModel,
    budget: float | None,
    sample: DataSample,
    *,
    world_size: int = 1,
    accumulate_grad_batches: int = 1,
    gradcache: bool = False,
    recompute: bool = False,
) -> BudgetReport:
    """Costs a step from sampled data and divides the budget by it.

    Raises:
        UserError: the budget does not buy one optimizer step.
    """
    flags = {"gradcache": gradcache, "recompute": recompute}
    per_batch = flop_model.count(sample.per_batch, **flags)
    per_step = per_batch * (world_size * accumulate_grad_batches)
    examples_per_step = sample.examples_per_batch * world_size * accumulate_grad_batches
    per_example = per_batch / sample.examples_per_batch
    docs_per_example = sample.documents.rows / max(1, sample.examples)
    stats = sample.queries + sample.documents
    padding = 1.0 - stats.real_tokens / stats.padded_tokens if stats.padded_tokens else 0.0
    steps_per_epoch = (math.ceil(sample.batches_per_epoch / accumulate_grad_batches)
                       if sample.batches_per_epoch else None)
    steps = examples = spent = epochs = None
    if budget is not None:
        steps = _steps_for(budget, per_step, examples_per_step, flop_model.accounting)
        examples = int(round(steps * examples_per_step))
        spent = steps * per_step.model
        epochs = steps / steps_per_epoch if steps_per_epoch else None
    return BudgetReport(
        accounting=flop_model.accounting, budget=budget, params=flop_model.params, method=flop_model.paper_method,
        per_example=per_example, per_step=per_step, examples_per_step=examples_per_step,
        query_tokens=sample.queries.real_tokens / max(1, sample.queries.rows),
        document_tokens=sample.documents.real_tokens / max(1, sample.documents.rows),
        documents_per_example=docs_per_example, padding=padding, steps=steps, examples=examples, spent=spent,
        steps_per_epoch=steps_per_epoch, epochs=epochs, sampled_batches=sample.batches, **flags,
    )


def _steps_for(budget: float, per_step: FlopCount, examples_per_step: float, accounting: str) -> int:
    # The relative epsilon keeps a budget of exactly k steps from rounding down to k - 1.
    steps = math.floor(budget / per_step.model * (1 + 1e-12))
    if steps < 1:
        raise UserError(
            f"a budget of {budget:.4g} FLOP does not buy one training step: one step of "
            f"{examples_per_step:.0f} examples costs {per_step.model:.4g} FLOP ({accounting} accounting). "
            "Raise max_flops, or lower the batch size or sequence lengths.")
    return steps


def dry_run(
    module: Any,
    datamodule: Any | None,
    budget: float | str | None,
    *,
    accounting: Accounting = "exact",
    num_batches: int = DEFAULT_ESTIMATE_BATCHES,
    query_tokens: float | None = None,
    document_tokens: float | None = None,
    num_negatives: int | None = None,
    batch_size: int | None = None,
    world_size: int = 1,
    accumulate_grad_batches: int = 1,
) -> BudgetReport:
    """What ``budget`` buys for a model and data, without training (``lightning-embed flops``).

    Lengths come from the data (``num_batches`` collated batches) unless ``query_tokens`` and
    ``document_tokens`` are given (e.g. the study's 14 and 64); then ``batch_size`` (or the data module's)
    and ``num_negatives`` (default 0) describe a batch.

    Args:
        module: an :class:`~lightning_embed.training.module.EmbeddingModule` (needs ``backbone``; ``tuning``,
            ``gradcache_chunk_size`` and ``gradient_checkpointing`` are read when present).
        datamodule: the training data module, or None when lengths and batch size are given.
        budget: FLOP budget (number or string like ``"1.5e15"``), or None to only cost a step.
        accounting: ``exact`` or ``paper``.
        num_batches: batches to sample for the average lengths.
        query_tokens: mean query length, instead of sampling.
        document_tokens: mean document length, instead of sampling.
        num_negatives: hard negatives per query when lengths are given.
        batch_size: examples per batch per process when lengths are given.
        world_size: processes that will train.
        accumulate_grad_batches: batches per optimizer step.

    Raises:
        UserError: a bad budget, one that does not buy a step, or missing lengths/batch size.
    """
    budget = parse_budget(budget, "budget")
    flop_model = flop_model_for(module, accounting)
    flags = training_flags(module)
    if (query_tokens is None) != (document_tokens is None):
        raise UserError("give both query_tokens and document_tokens, or neither (then lengths come from the data).")
    if query_tokens is not None:
        size = batch_size or getattr(datamodule, "batch_size", None)
        if not size:
            raise UserError("with given lengths, a batch size is needed (batch_size=..., or a data module's).")
        k = num_negatives if num_negatives is not None else int(getattr(datamodule, "num_negatives", 0) or 0)
        q = TokenStats.from_lengths([query_tokens] * size)
        d = TokenStats.from_lengths([document_tokens] * (size * (1 + k)))
        sample = DataSample(1, size, q, d, None)
    else:
        if datamodule is None:
            raise UserError("a data module is needed to measure lengths (or give query_tokens and document_tokens).")
        sample = sample_loader(fresh_train_loader(module, datamodule), num_batches)
    return plan_budget(flop_model, budget, sample, world_size=world_size,
                       accumulate_grad_batches=accumulate_grad_batches, **flags)


def flop_model_for(module: CostedModule, accounting: Accounting = "exact") -> FlopModel:
    """The FLOP model of an EmbeddingModule's trained backbone (paper formula from its tuning name)."""
    backbone = getattr(module, "backbone", None)
    if backbone is None:
        raise UserError(f"{type(module).__name__} has no 'backbone' attribute: the FLOP model needs the module "
                        "that trains (an EmbeddingModule's backbone).")
    method = getattr(getattr(module, "tuning", None), "name", None)
    return FlopModel.from_module(backbone, accounting=accounting, method=method)


def training_flags(module: CostedModule) -> dict[str, bool]:
    """GradCache and recomputation as the module trains (hardware FLOP only)."""
    return {"gradcache": getattr(module, "gradcache_chunk_size", None) is not None,
            "recompute": bool(getattr(module, "gradient_checkpointing", False))}


def fresh_train_loader(module: CostedModule, datamodule: Any = None, trainer: Any = None) -> Iterable:
    """A training loader to measure lengths from, never the one the trainer will consume.

    With a trainer: its data module's loader, or the loaders given to ``fit``. Without one (a dry run), the data
    module is set up here, with the module's collator when it has none.
    """
    if trainer is not None:
        if trainer.datamodule is not None:
            return trainer.datamodule.train_dataloader()
        return trainer.fit_loop._data_source.dataloader()  # the loaders given to fit(); no public accessor
    if getattr(datamodule, "collator", "absent") is None and callable(getattr(module, "make_collator", None)):
        datamodule.collator = module.make_collator()
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule.train_dataloader()


# ---------------------------------------------------------------------------------------------- output


def report_table(report: BudgetReport, title: str | None = None):
    """The report as a rich table."""
    from rich.table import Table

    table = Table(title=title or f"FLOP budget ({report.accounting} accounting)", title_justify="left")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    p = report.params
    rows = [
        ("parameters: total / non-embedding N / trainable", f"{p.total:,} / {p.non_embedding:,} / {p.trainable:,}"),
        ("paper method", report.method),
        ("tokens per example (query + documents)",
         f"{report.query_tokens:.1f} + {report.documents_per_example:g} x {report.document_tokens:.1f}"),
        ("padding share", f"{report.padding:.1%}"),
        ("FLOP per example: model / hardware", f"{report.per_example.model:.4g} / {report.per_example.hardware:.4g}"),
        ("examples per step", f"{report.examples_per_step:g}"),
        ("FLOP per step: model / hardware", f"{report.per_step.model:.4g} / {report.per_step.hardware:.4g}"),
    ]
    if report.budget is not None:
        rows += [
            ("budget", f"{report.budget:.4g}"),
            ("steps it buys", f"{report.steps:,}"),
            ("examples it buys", f"{report.examples:,}"),
            ("model FLOP spent", f"{report.spent:.4g} ({report.spent / report.budget:.2%})"),
        ]
        if report.epochs is not None:
            rows.append(("passes over the data", f"{report.epochs:.2f} ({report.steps_per_epoch:,} steps each)"))
    if report.sampled_batches:
        rows.append(("lengths measured on", f"{report.sampled_batches} batches"))
    extras = [name for name, on in (("GradCache", report.gradcache), ("recomputation", report.recompute)) if on]
    if extras:
        rows.append(("hardware FLOP includes", ", ".join(extras)))
    for name, value in rows:
        table.add_row(name, value)
    return table


def print_report(report: BudgetReport, console: Any = None) -> None:
    """Prints :func:`report_table` (to ``console``, default a new rich console)."""
    from lightning_embed.cli.terminal import console as output_console

    (console or output_console()).print(report_table(report))


__all__ = ["BudgetReport", "DataSample", "batch_masks", "batch_stats", "dry_run", "flop_model_for",
           "fresh_train_loader", "parse_budget", "plan_budget", "print_report", "report_table", "sample_loader",
           "training_flags"]
