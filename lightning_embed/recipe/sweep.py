"""Iso-FLOP sweeps: plan one fit config per grid point, then run them one after another, resumably.

``sweep plan`` writes, into a directory::

    sweep.yaml              the manifest: every point (budget, model, method setting, examples, steps)
    configs/<point>.yaml    a plain Lightning config per point (``lightning-embed fit --config`` runs it)
    runs/<point>/           each run's root: checkpoints/last.ckpt while it trains, DONE when it finished
    runs.jsonl              the run records every point appends (the input of ``laws fit``)

Paths inside the configs are relative to the sweep directory, and ``sweep run`` runs each fit from there,
so a sweep directory can be copied to another machine and run as it is.

``sweep run DIR`` runs the points in manifest order as subprocesses (``lightning-embed fit --config``),
skips points whose ``DONE`` marker exists, resumes a point that has ``checkpoints/last.ckpt`` from it, and
carries on after a failed point (reported at the end). Stop it with Ctrl+C and run it again to continue.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from lightning_embed.errors import UserError
from lightning_embed.recipe.catalogue import resolve_models
from lightning_embed.recipe.costs import Accounting, flops_per_example
from lightning_embed.recipe.laws import setting_label
from lightning_embed.recipe.solve import DEFAULT_TRAIN, FLOP_CALLBACK, build_fit_config, save_config

MANIFEST = "sweep.yaml"
SCHEMA_VERSION = 1
CHECKPOINT_CALLBACK = "lightning.pytorch.callbacks.ModelCheckpoint"


@dataclass
class SweepPoint:
    """One grid point of a sweep."""

    name: str
    budget: float
    model: str
    method: str
    setting: dict[str, Any]
    examples: int
    steps: int
    config: str


def _settings(methods: list[str], lora_ranks: list[int], freeze_shares: list[float]) -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    for method in methods:
        if method in ("lora", "qlora"):
            out += [(method, {"rank": int(r)}) for r in lora_ranks]
        elif method == "freeze":
            out += [(method, {"share": float(s)}) for s in freeze_shares]
        else:
            out.append((method, {}))
    return out


def point_name(budget: float, model: str, method: str, setting: dict[str, Any]) -> str:
    """``1e16_pythia-70m_lora-rank16``: a file-system-safe name of a grid point."""
    tag = "-".join([method, *(f"{k}{v}" for k, v in sorted(setting.items()))])
    raw = f"{budget:.3g}".replace("+", "") + f"_{model}_{tag}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", raw)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def sweep_plan(
    directory: Path,
    budgets: list[float],
    models: str = "smollm2-135m-truncated",
    methods: list[str] | None = None,
    lora_ranks: list[int] | None = None,
    freeze_shares: list[float] | None = None,
    learning_rates: list[str] | None = None,
    accounting: Accounting = "paper",
    query_tokens: int = 14,
    document_tokens: int = 64,
    batch_size: int = 32,
    train: str = DEFAULT_TRAIN,
    base_config: Path | None = None,
    min_steps: int = 10,
    max_examples: int | None = None,
    checkpoints_per_run: int = 10,
    overwrite: bool = False,
) -> list[SweepPoint]:
    """Plans an iso-FLOP sweep: one fit config per budget x model x method setting, into a directory.

    Each point's config trains for the examples its budget buys (``max_steps``) and stops at the budget
    (the FLOP callback), appending a run record to DIRECTORY/runs.jsonl; then run them with
    ``lightning-embed sweep run DIRECTORY`` and fit laws with ``lightning-embed laws fit``.

    Args:
        directory: where the manifest, configs, runs and run records go.
        budgets: FLOP budgets, e.g. ``[1e15, 3e15, 1e16]``.
        models: candidate families or models, comma-separated (as ``recipe --models``).
        methods: tuning methods (default: full, lora, freeze, bias).
        lora_ranks: LoRA ranks to try (default: 16).
        freeze_shares: shares of blocks that train with block freezing (default: 0.25).
        learning_rates: a learning rate per method, as ``METHOD=LR`` (``full=5e-5 lora=5e-4``); methods
            not named keep the base config's (or 1e-4). Adapters usually want about ten times full
            fine-tuning's rate, and each law records the rate its runs used.
        accounting: FLOP per example for sizing the runs: ``paper`` or ``exact``.
        query_tokens: tokens of an average query, for sizing.
        document_tokens: tokens of an average document, for sizing.
        batch_size: examples per step.
        train: training data of every point.
        base_config: a fit config whose settings every point starts from (points set the backbone,
            tuning, batch size, steps and budget).
        min_steps: points whose budget buys fewer steps are left out (and listed).
        max_examples: points whose budget buys more examples are left out (and listed): set it to the
            training set's size times the passes over it you accept (the laws assume fresh data; the
            study trained one pass).
        checkpoints_per_run: how often a run saves ``last.ckpt`` to resume from (evenly over its steps);
            0 saves only when a run is interrupted (Ctrl+C, an error), which spares the disk writes of a
            full fine-tuning checkpoint (weights and optimizer state) on a sweep of short runs.
        overwrite: replace an existing plan in the directory.

    Returns:
        The planned points.

    Raises:
        UserError: every bad argument at once, or an existing plan without ``overwrite``.
    """
    methods = list(methods or ["full", "lora", "freeze", "bias"])
    lora_ranks = list(lora_ranks or [16])
    freeze_shares = list(freeze_shares or [0.25])
    directory = Path(directory)
    problems = []
    if not budgets:
        problems.append("give at least one budget")
    problems += [f"budget {b!r} is not a positive number" for b in budgets if not (isinstance(b, (int, float)) and b > 0)]
    problems += [f"LoRA rank {r!r} is not a positive integer" for r in lora_ranks if not (isinstance(r, int) and r > 0)]
    problems += [f"freeze share {s!r} is not in (0, 1]" for s in freeze_shares
                 if not (isinstance(s, (int, float)) and 0 < s <= 1)]
    rates: dict[str, float] = {}
    for item in learning_rates or []:
        method, _, value = str(item).partition("=")
        try:
            rate = float(value)
        except ValueError:
            rate = float("nan")
        if method not in methods or not rate > 0:
            problems.append(f"learning rate {item!r} is not METHOD=LR with one of the methods {methods} and a "
                            "positive rate")
        else:
            rates[method] = rate
    if accounting == "paper":
        from lightning_embed.recipe.costs import PAPER_METHODS

        problems += [f"method {m!r} has no paper FLOP formula; use accounting exact" for m in methods
                     if m not in PAPER_METHODS]
    if batch_size < 1 or min_steps < 1:
        problems.append("batch_size and min_steps must be positive")
    if max_examples is not None and max_examples < 1:
        problems.append("max_examples must be positive")
    if checkpoints_per_run < 0:
        problems.append("checkpoints_per_run must be 0 or more")
    if base_config is not None and not Path(base_config).is_file():
        problems.append(f"base config {str(base_config)!r} does not exist")
    if (directory / MANIFEST).exists() and not overwrite:
        problems.append(f"{directory / MANIFEST} exists (a planned sweep); pass overwrite to replace it")
    if problems:
        raise UserError("sweep plan: " + "; ".join(problems) + ".")
    base = yaml.safe_load(Path(base_config).read_text()) if base_config else {}
    candidates = resolve_models(models)
    if overwrite:  # the old plan's configs would otherwise linger beside the new ones
        for old in (directory / "configs").glob("*.yaml"):
            old.unlink()
    grid = [(b, m, method, setting) for b in sorted(budgets) for m in candidates
            for method, setting in _settings(methods, lora_ranks, freeze_shares)]
    costs = flops_per_example([(m, method, setting) for _, m, method, setting in grid], accounting, query_tokens,
                              document_tokens)
    points, skipped = [], []
    (directory / "configs").mkdir(parents=True, exist_ok=True)
    for (budget, model, method, setting), cost in zip(grid, costs):
        label = f"{setting_label(method, setting)} on {model.name} at {budget:.3g} FLOP"
        if cost is None:
            skipped.append(f"{label}: {method} cannot tune {model.name}")
            continue
        examples = int(budget // cost)
        steps = examples // batch_size
        if steps < min_steps:
            skipped.append(f"{label}: buys {steps} steps (< {min_steps})")
            continue
        if max_examples is not None and examples > max_examples:
            skipped.append(f"{label}: buys {examples:,} examples (> max_examples {max_examples:,})")
            continue
        name = point_name(budget, model.name, method, setting)
        # The base config's model settings (learning rate, temperature, lengths) are the points' own,
        # a per-method learning rate over them.
        hparams = {**(base.get("model") or {}), **({"learning_rate": rates[method]} if method in rates else {})}
        config = build_fit_config(model, method, setting, budget, batch_size=batch_size, accounting=accounting,
                                  hparams=hparams, train=train, runs_file="runs.jsonl")
        config = _merge(base, config)
        base_callbacks = [c for c in (base.get("trainer") or {}).get("callbacks") or []
                          if not (isinstance(c, dict) and c.get("class_path") in (FLOP_CALLBACK, CHECKPOINT_CALLBACK))]
        config["trainer"]["default_root_dir"] = f"runs/{name}"
        every = max(1, steps // checkpoints_per_run) if checkpoints_per_run else 0
        config["trainer"]["callbacks"] = base_callbacks + [{
            # last.ckpt only, `checkpoints_per_run` times per run and on an exception: what `sweep run`
            # resumes from (every_n_epochs 0: no extra save at epoch ends).
            "class_path": CHECKPOINT_CALLBACK,
            "init_args": {"dirpath": f"runs/{name}/checkpoints", "save_top_k": 0, "save_last": True,
                          "every_n_train_steps": every, "every_n_epochs": 0 if not every else None,
                          "save_on_exception": True},
        }]
        path = directory / "configs" / f"{name}.yaml"
        save_config(config, path, header=f"Sweep point {label}: {examples:,} examples, {steps:,} steps.\n"
                    "Paths are relative to the sweep directory; `lightning-embed sweep run` runs it from there.")
        points.append(SweepPoint(name, float(budget), model.name, method, setting, examples, steps,
                                 f"configs/{name}.yaml"))
    if not points:
        raise UserError("sweep plan: no grid point buys enough steps: " + "; ".join(skipped) + ".")
    manifest = {
        "schema_version": SCHEMA_VERSION, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "accounting": accounting, "batch_size": batch_size, "query_tokens": query_tokens,
        "document_tokens": document_tokens, "runs_file": "runs.jsonl",
        "points": [asdict(p) for p in points], "skipped": skipped,
    }
    (directory / MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=False, width=110))
    print(f"planned {len(points)} runs in {directory} ({len(skipped)} grid points left out); "
          f"run them with: lightning-embed sweep run {directory}")
    for reason in skipped:
        print(f"  left out: {reason}")
    return points


# ---- running --------------------------------------------------------------------------------------------


def fit_command() -> list[str]:
    """How to start ``lightning-embed`` in a subprocess: the console script beside this Python, if any."""
    script = Path(sys.executable).parent / "lightning-embed"
    if script.is_file():
        return [str(script)]
    found = shutil.which("lightning-embed")
    return [found] if found else [sys.executable, "-m", "lightning_embed.cli"]


def load_manifest(directory: Path) -> list[SweepPoint]:
    """The points of a planned sweep.

    Raises:
        UserError: no plan in the directory, or a plan of another schema.
    """
    path = Path(directory) / MANIFEST
    try:
        data = yaml.safe_load(path.read_text())
    except OSError:
        raise UserError(f"{directory} holds no planned sweep ({MANIFEST} is missing); plan one with "
                        "`lightning-embed sweep plan`.") from None
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"{path} is not a sweep manifest of schema_version {SCHEMA_VERSION}.")
    return [SweepPoint(**p) for p in data.get("points") or []]


def _stream(cmd: list[str], cwd: Path, log: Path) -> int:
    """Runs a command, copying its output to our stdout and to a log file; returns its exit status."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            assert proc.stdout is not None
            while chunk := proc.stdout.read1(65536):
                out.write(chunk)
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
            return proc.wait()
        except BaseException:
            proc.terminate()  # Ctrl+C: stop the fit too (it saves last.ckpt on the way out)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise


def run_sweep(directory: Path, *, command: list[str] | None = None, keep_going: bool = True,
              dry_run: bool = False) -> dict[str, list[str]]:
    """Runs every unfinished point of a sweep (see :func:`sweep_run`); ``command`` replaces the fit command.

    Returns:
        Point names by outcome: ``done``, ``skipped`` (finished before), ``failed``, ``pending`` (dry run).
    """
    directory = Path(directory)
    points = load_manifest(directory)
    base_cmd = command or fit_command()
    outcome: dict[str, list[str]] = {"done": [], "skipped": [], "failed": [], "pending": []}
    for i, point in enumerate(points, 1):
        root = directory / "runs" / point.name
        if (root / "DONE").exists():
            outcome["skipped"].append(point.name)
            continue
        cmd = [*base_cmd, "fit", "--config", point.config]
        last = root / "checkpoints" / "last.ckpt"
        if last.is_file():
            cmd += ["--ckpt_path", str(last.relative_to(directory))]
        print(f"[{i}/{len(points)}] {point.name}: {' '.join(cmd[len(base_cmd):])}", flush=True)
        if dry_run:
            outcome["pending"].append(point.name)
            continue
        root.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        status = _stream(cmd, directory, root / "fit.log")
        if status == 0:
            (root / "DONE").write_text(f"finished {datetime.now(timezone.utc).isoformat(timespec='seconds')} "
                                       f"in {time.monotonic() - start:.0f} s\n")
            outcome["done"].append(point.name)
        else:
            outcome["failed"].append(point.name)
            print(f"[{i}/{len(points)}] {point.name} failed (exit status {status}); log: {root / 'fit.log'}",
                  file=sys.stderr, flush=True)
            if not keep_going:
                break
    return outcome


def sweep_run(directory: Path, keep_going: bool = True, dry_run: bool = False) -> dict[str, list[str]]:
    """Runs a planned sweep's fits one after another, skipping finished ones and resuming interrupted ones.

    Each point runs as ``lightning-embed fit --config configs/POINT.yaml`` from the sweep directory;
    one that left ``runs/POINT/checkpoints/last.ckpt`` resumes from it. A point that exits cleanly gets a
    ``runs/POINT/DONE`` marker; its run record is appended to DIRECTORY/runs.jsonl by the FLOP callback.
    Ctrl+C stops the current fit (it checkpoints) and the sweep; run the command again to continue.

    Args:
        directory: a directory planned with ``lightning-embed sweep plan``.
        keep_going: carry on with the next point after a failed one.
        dry_run: only print what would run.

    Returns:
        Point names by outcome (``done``, ``skipped``, ``failed``, ``pending``).

    Raises:
        UserError: no plan in the directory, or some points failed (listed, with their logs).
    """
    outcome = run_sweep(directory, keep_going=keep_going, dry_run=dry_run)
    print(f"sweep {directory}: {len(outcome['done'])} run, {len(outcome['skipped'])} already finished, "
          f"{len(outcome['failed'])} failed" + (f", {len(outcome['pending'])} to run" if dry_run else "") + ".")
    if outcome["failed"]:
        logs = ", ".join(os.path.join(str(directory), "runs", n, "fit.log") for n in outcome["failed"])
        raise UserError(f"sweep run: {len(outcome['failed'])} point(s) failed; see {logs}. Fix and run "
                        f"`lightning-embed sweep run {directory}` again: finished points are skipped.")
    return outcome
