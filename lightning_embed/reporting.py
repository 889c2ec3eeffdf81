"""Rich tables printed to the user: parameters at the start of fit, metrics before and after."""

from __future__ import annotations

from collections.abc import Mapping

from rich.console import Console
from rich.table import Table
from torch import nn

_console = Console()


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """``(total, trainable)`` parameter counts of a module (shared tensors counted once)."""
    seen: dict[int, bool] = {}
    for p in model.parameters():
        seen[id(p)] = p.requires_grad
    sizes = {id(p): p.numel() for p in model.parameters()}
    total = sum(sizes.values())
    trainable = sum(n for i, n in sizes.items() if seen[i])
    return total, trainable


def print_parameter_table(module) -> None:
    """Total and trainable parameters of the module's backbone and the trainable share."""
    total, trainable = parameter_counts(module.backbone)
    info = module.backbone_info
    table = Table(title=f"{module.hparams.backbone} · tuning {module.hparams.tuning}", title_justify="left")
    for col in ("parameters", "count", "share"):
        table.add_column(col, justify="right" if col != "parameters" else "left")
    table.add_row("total", f"{total:,}", "100%")
    table.add_row("non-embedding (base)", f"{info.non_embedding_params:,}", f"{info.non_embedding_params / total:.1%}")
    table.add_row("trainable", f"{trainable:,}", f"{trainable / max(total, 1):.3%}")
    _console.print(table)


def print_metric_comparison(before: Mapping[str, float], after: Mapping[str, float], title: str) -> None:
    """Side-by-side table of validation metrics before and after training."""
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("change", justify="right")
    for key in sorted(set(before) | set(after), key=_metric_order):
        b, a = before.get(key), after.get(key)
        change = "" if a is None or b is None else f"{a - b:+.4f}"
        table.add_row(key, _fmt(b), _fmt(a), change)
    _console.print(table)


def _fmt(value) -> str:
    return "-" if value is None else f"{float(value):.4f}"


def _metric_order(key: str) -> tuple[int, str]:
    order = ["loss", "ndcg@10", "mrr@10", "recall@1", "recall@10"]
    short = key.split("/", 1)[-1]
    return (order.index(short) if short in order else len(order), key)
