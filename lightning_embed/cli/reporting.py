"""Rich tables printed to the user: parameters at the start of fit, metrics before and after."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from rich.table import Table

from lightning_embed.cli.terminal import console


def print_parameter_table(module) -> None:
    """Total and trainable parameters of the module's backbone and the trainable share."""
    from lightning_embed.strategy import parameter_summary

    # Logical sizes: a 4-bit weight counts as the matrix it stands for, not its packed bytes.
    summary = parameter_summary(module.backbone)
    total, trainable = summary.total, summary.trainable
    info = module.backbone_info
    table = Table(title=f"{module.hparams.backbone} · tuning {module.hparams.tuning}", title_justify="left")
    for col in ("parameters", "count", "share"):
        table.add_column(col, justify="right" if col != "parameters" else "left")
    table.add_row("total", f"{total:,}", "100%")
    table.add_row("non-embedding (base)", f"{info.non_embedding_params:,}", f"{info.non_embedding_params / total:.1%}")
    table.add_row("trainable", f"{trainable:,}", f"{trainable / max(total, 1):.3%}")
    console().print(table)


def print_training_notes(notes) -> None:
    """One line per choice made when training starts (attention, packing, compile), skipping empty ones."""
    for note in notes:
        if note:
            console().print(note, highlight=False, markup=False)


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
    console().print(table)


def _fmt(value) -> str:
    return "-" if value is None else f"{float(value):.4f}"


def _metric_order(key: str) -> tuple[int, str]:
    order = ["loss", "ndcg@10", "mrr@10", "recall@1", "recall@10"]
    short = key.split("/", 1)[-1]
    return (order.index(short) if short in order else len(order), key)


def strategies() -> None:
    """List every installed tuning strategy, the package it comes from, and its options with defaults."""
    from lightning_embed.strategy import available_strategies, strategy_arguments

    table = Table(title="tuning strategies (entry-point group lightning_embed.strategies)", title_justify="left")
    for col in ("name", "package", "options (default)"):
        table.add_column(col, overflow="fold")
    for name, entry in sorted(available_strategies().items()):
        if entry.cls is None:
            table.add_row(name, entry.package, f"[red]failed to import {entry.value}: {entry.error}[/red]")
            continue
        options = "\n".join(f"{n}: {t} = {d!r}" for n, t, d in strategy_arguments(entry.cls)) or "-"
        table.add_row(name, entry.package, options, end_section=True)
    console().print(table)


def data(source: str | None = None, split: Literal["train", "val"] = "train", num_negatives: int = 0) -> None:
    """Describe a pair source (examples, distinct positives, text lengths, fingerprint), or list the builtin
    sources with their sizes and fingerprints (describing a builtin source mines and caches it if needed).

    Args:
        source: a .jsonl/.csv/.tsv/.parquet file, a saved Hugging Face dataset folder, or builtin:NAME;
            omitted: list the builtin sources.
        split: for a builtin source, which split to describe.
        num_negatives: hard negatives to read per example (checks that every example has that many).
    """
    from lightning_embed.data.fingerprints import builtin_fingerprint, is_mined, source_fingerprint
    from lightning_embed.data.reading import BUILTIN_PREFIX, describe_builtin_sources, read_examples

    if source is None:
        table = Table(title="builtin sources (no download)", title_justify="left")
        for col in ("source", "train pairs", "val pairs", "fingerprint (train, val)", "what it is"):
            # Prose folds at a readable width, also in a file, where the console has no width of its own.
            table.add_column(col, justify="right" if col.endswith("pairs") else "left", overflow="fold",
                             max_width=72 if col == "what it is" else None)
        for name, text in describe_builtin_sources().items():
            if not is_mined(name):  # mining takes minutes: a listing only names the command that does it
                table.add_row(BUILTIN_PREFIX + name, "-", "-", "not mined yet", text)
                table.caption = "not mined yet: `lightning-embed data builtin:NAME` mines and caches it (once)"
                continue
            found = builtin_fingerprint(name)
            table.add_row(BUILTIN_PREFIX + name, f"{found['sizes']['train']:,}", f"{found['sizes']['val']:,}",
                          f"{found['train']}\n{found['val']}", text)
        console().print(table)
        return
    if source.startswith(BUILTIN_PREFIX) and not is_mined(source[len(BUILTIN_PREFIX):]):
        console().print(f"mining {source} once (parsing many .py files: minutes on a small CPU)...", highlight=False)
    examples = read_examples(source, split=split, num_negatives=num_negatives)
    found = source_fingerprint(source, split)
    table = Table(title=f"{source} ({split})", title_justify="left")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("examples", f"{len(examples):,}")
    table.add_row("distinct positives", f"{len({e.positive for e in examples}):,}")
    table.add_row("hard negatives per example", str(num_negatives))
    for what, texts in (("query", [e.query for e in examples]), ("positive", [e.positive for e in examples])):
        words = sorted(len(t.split()) for t in texts)
        median, p95 = words[len(words) // 2], words[int(0.95 * (len(words) - 1))]
        table.add_row(f"{what} words (median / 95th pct)", f"{median} / {p95}")
    table.add_row("fingerprint (sha256)", found["sha256"])
    if "versions" in found:
        table.add_row("mined from", ", ".join(f"{k} {v}" for k, v in found["versions"].items()))
    console().print(table)


data.positional = ("source",)
