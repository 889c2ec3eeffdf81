"""The loss before training (``lightning-embed laws baseline``): L0(N), where an anchored law starts.

An anchored law (``laws fit --form anchored``) predicts L0(N) at D = 0: the held-out loss of the pretrained
model before any training step. New run records carry it (``initial_val_loss``, measured by the FLOP
callback with one validation pass before the first step). For runs recorded without it, this command
measures it once per candidate model: it builds the model and data of a fit config exactly as ``fit``
would (same validation set, batch size and lengths, which all change the contrastive loss), runs one
validation pass, and writes one JSON line per model::

    {"backbone": "smollm2-135m", "num_layers": 4, "non_embedding_params": 14160960,
     "initial_val_loss": 2.602, "val_examples": 257, "ndcg@10": 0.11, "config": ["base.yaml"], ...}

``laws fit RUNS --initial-losses FILE`` reads it (matching runs by non-embedding parameters).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lightning_embed.cli.outputs import write_text_atomically
from lightning_embed.errors import UserError
from lightning_embed.training.precision import cpu_model as cpu_name


def read_initial_losses(path: str | Path) -> list[dict[str, Any]]:
    """Reads a ``laws baseline`` file: rows with ``non_embedding_params`` and ``initial_val_loss``.

    Raises:
        UserError: a missing file, a malformed line, or a row without the two fields.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise UserError(f"cannot read the initial-loss file {str(path)!r}: {err.strerror or err}.") from None
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            n, loss = float(row["non_embedding_params"]), float(row["initial_val_loss"])
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{path} line {i} is not a `laws baseline` row (JSON with non_embedding_params and "
                            "initial_val_loss); measure them with `lightning-embed laws baseline`.") from None
        if not (n > 0 and loss > 0):
            raise UserError(f"{path} line {i}: non_embedding_params and initial_val_loss must be positive.")
        rows.append(row)
    if not rows:
        raise UserError(f"{path} holds no initial losses; measure them with `lightning-embed laws baseline`.")
    return rows


def initial_loss_table(observations: list, rows: list[dict[str, Any]]):
    """L0(N) from the runs' own ``initial_val_loss`` (median per model size) and ``laws baseline`` rows.

    The runs' measurements win where both exist. None when there is neither.
    """
    from statistics import median

    from lightning_embed.recipe.laws import InitialLoss

    measured: dict[float, list[float]] = {}
    for o in observations:
        if o.initial_loss is not None:
            measured.setdefault(float(o.n), []).append(o.initial_loss)
    points = {float(r["non_embedding_params"]): float(r["initial_val_loss"]) for r in rows}
    points.update({n: median(v) for n, v in measured.items()})
    if not points:
        return None
    backbones = {str(r["backbone"]) for r in rows if r.get("backbone")}
    backbones |= {o.backbone for o in observations if o.initial_loss is not None and o.backbone}
    return InitialLoss.from_points(points, sorted(backbones))


def _measure(config: list[Path], backbone: str, num_layers: int | None, batch_size: int | None) -> dict[str, Any]:
    from lightning_embed.cli.app import _quiet_third_party, _trainer_cli
    from lightning_embed.cli.terminal import interactive

    _quiet_third_party()
    args = [arg for c in config for arg in ("--config", str(c))]
    args += ["--model.backbone", backbone, "--trainer.logger", "false"]
    if interactive():  # a live bar per model is noise on a terminal; a log gets plain lines every few seconds
        args += ["--trainer.enable_progress_bar", "false"]
    if num_layers is not None:
        args += ["--model.num_layers", str(num_layers)]
    if batch_size is not None:
        args += ["--data.batch_size", str(batch_size)]
    # No SaveConfigCallback: a measurement must not leave LightningCLI's config.yaml in the working directory.
    cli = _trainer_cli(args, run=False, save_config_callback=None)
    results = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
    metrics = {k.removeprefix("val/"): float(v) for k, v in (results[0] if results else {}).items()}
    if "loss" not in metrics:
        raise UserError(f"the config(s) {', '.join(map(str, config))} give no validation set; set data.val (or use a "
                        "builtin source, which has one).")
    from lightning_embed.models.backbones import count_parameters

    _, non_embedding = count_parameters(cli.model.backbone)
    data = cli.datamodule
    return {
        "backbone": backbone, "num_layers": num_layers,
        "non_embedding_params": non_embedding,
        "initial_val_loss": metrics.pop("loss"), "val_examples": len(data.val_examples or []),
        "val_batch_size": data.val_batch_size, "train": data.train, "val": data.val, **metrics,
    }


def laws_baseline(
    config: list[Path],
    models: str | None = None,
    output: Path = Path("initial_losses.jsonl"),
    batch_size: int | None = None,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Measures the held-out loss of each model before training (L0), for anchored laws.

    Builds each model and the data of the fit config(s) as ``fit`` would, runs one validation pass (no
    training) and writes one JSON line per model: backbone, depth, non-embedding parameters, the loss
    (``initial_val_loss``), the held-out size and the retrieval metrics. ``laws fit --initial-losses``
    reads the file for runs recorded without ``initial_val_loss``.

    Args:
        config: the fit config(s) the runs used (data, lengths, pooling, temperature: all change the loss).
        models: the models, comma-separated, as ``recipe --models`` names them (a shipped family such as
            ``smollm2-135m-truncated``, a model of one, a family file).
        output: the JSON-lines file to write.
        batch_size: the runs' batch size, when the config does not set it (the held-out loss of in-batch
            contrastive learning depends on it).
        overwrite: replace an existing output file.

    Returns:
        The rows written.

    Raises:
        UserError: a missing config, unknown models, an output that exists or cannot be written.
    """
    from lightning_embed.recipe.catalogue import resolve_models

    problems = [f"config {str(c)!r} does not exist" for c in config if not Path(c).is_file()]
    if not models:
        problems.append("give the models to measure with --models (e.g. --models smollm2-135m-truncated)")
    if batch_size is not None and batch_size < 2:
        problems.append(f"--batch-size must be 2 or more, got {batch_size}")
    output = Path(output)
    if output.is_dir():
        problems.append(f"output {str(output)!r} is a directory; give a file name")
    elif output.exists() and not overwrite:
        problems.append(f"output {str(output)!r} exists; pass --overwrite to replace it")
    elif not os.access(output.parent if str(output.parent) else Path("."), os.W_OK):
        problems.append(f"cannot write to the folder of {str(output)!r}")
    if problems:
        raise UserError("laws baseline: " + "; ".join(problems) + ".")
    entries = resolve_models(models)
    rows = []
    for i, entry in enumerate(entries, 1):
        print(f"[{i}/{len(entries)}] measuring {entry.name} ({entry.backbone}) before training...", flush=True)
        row = _measure(list(config), entry.backbone, entry.num_layers, batch_size)
        row.update(model=entry.name, config=[str(c) for c in config], cpu=cpu_name(),
                   created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        print(f"{entry.name}: N = {row['non_embedding_params']:,}, L0 = {row['initial_val_loss']:.4f} "
              f"on {row['val_examples']} held-out pairs", flush=True)
        rows.append(row)
    write_text_atomically(output, "".join(json.dumps(row) + "\n" for row in rows))
    print(f"wrote {output}")
    return rows
