"""Iso-FLOP sweeps: plan one fit config per grid point, then run them one after another, resumably.

``sweep plan`` writes, into a directory::

    sweep.yaml              the manifest: every point (budget, model, method setting, examples, steps)
    configs/<point>.yaml    a plain Lightning config per point (``lightning-embed fit --config`` runs it)
    runs/<point>/           each run's root: checkpoints/last.ckpt while it trains, DONE when it finished
    runs.jsonl              the run records every point appends (the input of ``laws fit``)

Paths inside the configs are relative to the sweep directory, and ``sweep run`` runs each fit from there,
so a sweep directory can be copied to another machine and run as it is.

``sweep run DIR`` runs the points in manifest order as subprocesses (``lightning-embed fit --config``),
skips points whose ``DONE`` marker or completed run record exists, resumes a point that has
``checkpoints/last.ckpt`` from it, and carries on after a failed point (reported at the end). Stop it with
Ctrl+C and run it again to continue.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from lightning_embed.cli.outputs import write_text_atomically
from lightning_embed.cli.terminal import duration
from lightning_embed.errors import UserError
from lightning_embed.recipe.catalogue import resolve_models
from lightning_embed.recipe.costs import Accounting, flops_per_example, method_problem
from lightning_embed.recipe.design import GridPoint, method_settings, parse_setting_values, predict, seed_order
from lightning_embed.recipe.design import focus as design_focus
from lightning_embed.recipe.laws import load_laws, setting_label
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
    #: The run's seed (``seed_everything`` and the data order) when the plan was given seeds, else None.
    seed: int | None = None


def point_name(budget: float, model: str, method: str, setting: dict[str, Any], seed: int | None = None) -> str:
    """``1e16_pythia-70m_lora-rank16`` (``..._seed1`` with a seed): a file-system-safe name of a grid point."""
    tag = "-".join([method, *(f"{k}{v}" for k, v in sorted(setting.items()))])
    raw = f"{budget:.3g}".replace("+", "") + f"_{model}_{tag}" + ("" if seed is None else f"_seed{seed}")
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
    settings: list[str] | None = None,
    learning_rates: list[str] | None = None,
    accounting: Accounting = "paper",
    query_tokens: int = 14,
    document_tokens: int = 64,
    batch_size: int = 32,
    train: str = DEFAULT_TRAIN,
    base_config: Path | None = None,
    min_steps: int = 10,
    max_examples: int | None = None,
    laws: Path | None = None,
    focus: int | None = None,
    seeds: list[int] | None = None,
    seed_points: int | None = None,
    checkpoints_per_run: int = 10,
    overwrite: bool = False,
) -> list[SweepPoint]:
    """Plans an iso-FLOP sweep: one fit config per budget x model x method setting, into a directory.

    Each point's config trains for the examples its budget buys (``max_steps``) and stops at the budget
    (the FLOP callback), appending a run record to DIRECTORY/runs.jsonl; then run them with
    ``lightning-embed sweep run DIRECTORY`` and fit laws with ``lightning-embed laws fit``. Any installed
    tuning strategy can be swept (``--methods norm``): its strategy costs the points and names its setting.

    Denser near the optimum: ``--laws LAWS.yaml --focus 1`` keeps, for each budget and method setting,
    only the model size the laws predict best at that budget (its iso-FLOP minimum) and one size on each
    side (``--focus K``: K on each side); method settings without a law keep every size.

    Noise floor: ``--seeds 0 1 2 --seed-points 6`` plans every point with seed 0 and repeats 6 of them
    with seeds 1 and 2 (different initialisation of the trained parameters and data order; every point's
    name ends in ``_seedS`` and its run record carries the seed). The repeated points are each budget and
    method setting's predicted optimum (with ``--laws``; else its middle size), spread over budgets and
    methods, then their neighbours. Without ``--seed-points`` every point runs with every seed.

    Args:
        directory: where the manifest, configs, runs and run records go.
        budgets: FLOP budgets, e.g. ``[1e15, 3e15, 1e16]``.
        models: candidate families or models, comma-separated (as ``recipe --models``).
        methods: tuning strategies (default: full, lora, freeze, bias); any installed one works.
        lora_ranks: LoRA ranks to try (default: 16); the same as ``--settings rank=...``.
        freeze_shares: shares of blocks that train with block freezing (default: 0.25); the same as
            ``--settings share=...``.
        settings: values of any strategy's setting keys, as ``KEY=V1,V2`` (``rank=8,32``); each applies
            to every method whose strategy has that key (``lightning-embed strategies`` lists options).
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
        laws: a fitted laws file whose predictions place ``--focus`` and ``--seed-points``.
        focus: with ``--laws``, the model sizes kept on each side of each budget's predicted optimum.
        seeds: seeds of the runs (``--seeds 0 1 2``); the first is every point's, the others repeat points.
        seed_points: how many points the extra seeds repeat (default: all).
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
    directory = Path(directory)
    problems = []
    if not budgets:
        problems.append("give at least one budget")
    problems += [f"budget {b!r} is not a positive number" for b in budgets
                 if not (isinstance(b, (int, float)) and b > 0)]
    problems += [f"LoRA rank {r!r} is not a positive integer" for r in lora_ranks or []
                 if not (isinstance(r, int) and r > 0)]
    problems += [f"freeze share {s!r} is not in (0, 1]" for s in freeze_shares or []
                 if not (isinstance(s, (int, float)) and 0 < s <= 1)]
    values, bad_values = parse_setting_values(settings or [])
    problems += bad_values
    values = {**({"rank": [int(r) for r in lora_ranks]} if lora_ranks else {}),
              **({"share": [float(s) for s in freeze_shares]} if freeze_shares else {}), **values}
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
    if batch_size < 1 or min_steps < 1:
        problems.append("batch_size and min_steps must be positive")
    if max_examples is not None and max_examples < 1:
        problems.append("max_examples must be positive")
    if checkpoints_per_run < 0:
        problems.append("checkpoints_per_run must be 0 or more")
    if focus is not None and (focus < 0 or laws is None):
        problems.append("focus needs a laws file (--laws) and a count of sizes of 0 or more on each side")
    seeds = list(seeds or [])
    if len(set(seeds)) != len(seeds) or any(not isinstance(x, int) or x < 0 for x in seeds):
        problems.append(f"seeds must be distinct integers of 0 or more, got {seeds}")
    if seed_points is not None and (seed_points < 1 or len(seeds) < 2):
        problems.append("seed_points needs two or more --seeds and a count of 1 or more")
    if base_config is not None and not Path(base_config).is_file():
        problems.append(f"base config {str(base_config)!r} does not exist")
    if (directory / MANIFEST).exists() and not overwrite:
        problems.append(f"{directory / MANIFEST} exists (a planned sweep); pass overwrite to replace it")
    if problems:
        raise UserError("sweep plan: " + "; ".join(problems) + ".")
    grid_settings, problems = method_settings(methods, values)
    if problems:
        raise UserError("sweep plan: " + "; ".join(problems) + ".")
    fitted = load_laws(laws) if laws is not None else None
    base = yaml.safe_load(Path(base_config).read_text()) if base_config else {}
    candidates = resolve_models(models)
    grid = [(b, m, method, setting) for b in sorted(budgets) for m in candidates for method, setting in grid_settings]
    costs = flops_per_example([(m, method, setting) for _, m, method, setting in grid], accounting, query_tokens,
                              document_tokens)
    chosen, skipped = [], []
    for (budget, model, method, setting), cost in zip(grid, costs):
        label = f"{setting_label(method, setting)} on {model.name} at {budget:.3g} FLOP"
        if cost is None:
            skipped.append(f"{label}: {method_problem(method) or f'{method} cannot tune {model.name}'}")
            continue
        examples = int(budget // cost)
        steps = examples // batch_size
        if steps < min_steps:
            skipped.append(f"{label}: buys {steps} steps (< {min_steps})")
        elif max_examples is not None and examples > max_examples:
            skipped.append(f"{label}: buys {examples:,} examples (> max_examples {max_examples:,})")
        else:
            chosen.append(GridPoint(float(budget), model, method, setting, examples))
    if fitted is not None:
        predict(chosen, fitted, query_tokens + document_tokens)
        if focus is not None:
            chosen, dropped = design_focus(chosen, focus)
            skipped += dropped
            unfocused = sorted({setting_label(c.method, c.setting) for c in chosen if c.loss is None})
            if unfocused:
                print(f"no law in {laws} for {', '.join(unfocused)}: every model size kept for them")
    if not chosen:
        raise UserError("sweep plan: no grid point buys enough steps: " + "; ".join(skipped) + ".")
    runs = [(c, seeds[0] if seeds else None) for c in chosen]
    if len(seeds) > 1:
        repeated = seed_order(chosen)[:seed_points or len(chosen)]
        runs += [(c, seed) for seed in seeds[1:] for c in repeated]
    if overwrite:  # the old plan's configs would otherwise linger beside the new ones
        for old in (directory / "configs").glob("*.yaml"):
            old.unlink()
    (directory / "configs").mkdir(parents=True, exist_ok=True)
    points = [_write_point(directory, c, seed, base, rates, batch_size=batch_size, accounting=accounting,
                           train=train, checkpoints_per_run=checkpoints_per_run) for c, seed in runs]
    manifest = {
        "schema_version": SCHEMA_VERSION, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "accounting": accounting, "batch_size": batch_size, "query_tokens": query_tokens,
        "document_tokens": document_tokens, "runs_file": "runs.jsonl",
        "design": {"laws": str(laws) if laws is not None else None, "focus": focus, "seeds": seeds or None,
                   "seed_points": seed_points},
        "points": [asdict(p) for p in points], "skipped": skipped,
    }
    write_text_atomically(directory / MANIFEST, yaml.safe_dump(manifest, sort_keys=False, width=110))
    print(f"planned {len(points)} runs in {directory} ({len(skipped)} grid points left out); "
          f"run them with: lightning-embed sweep run {directory}")
    for reason in skipped:
        print(f"  left out: {reason}")
    return points


def _write_point(directory: Path, c: GridPoint, seed: int | None, base: dict[str, Any], rates: dict[str, float], *,
                 batch_size: int, accounting: Accounting, train: str, checkpoints_per_run: int) -> SweepPoint:
    """Writes one point's fit config and returns its manifest entry."""
    label = f"{setting_label(c.method, c.setting)} on {c.model.name} at {c.budget:.3g} FLOP"
    steps = c.examples // batch_size
    name = point_name(c.budget, c.model.name, c.method, c.setting, seed)
    # The base config's model settings (learning rate, temperature, lengths) are the points' own,
    # a per-method learning rate over them.
    hparams = {**(base.get("model") or {}), **({"learning_rate": rates[c.method]} if c.method in rates else {})}
    config = build_fit_config(c.model, c.method, c.setting, c.budget, batch_size=batch_size, accounting=accounting,
                              hparams=hparams, train=train, runs_file="runs.jsonl",
                              **({"seed": seed} if seed is not None else {}))
    if seed is not None:  # a seed changes the data order too, not only the initialisation
        config["data"]["seed"] = seed
    config = _merge(base, config)
    base_callbacks = [x for x in (base.get("trainer") or {}).get("callbacks") or []
                      if not (isinstance(x, dict) and x.get("class_path") in (FLOP_CALLBACK, CHECKPOINT_CALLBACK))]
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
    seeded = "" if seed is None else f", seed {seed}"
    save_config(config, path, header=f"Sweep point {label}: {c.examples:,} examples, {steps:,} steps{seeded}.\n"
                "Paths are relative to the sweep directory; `lightning-embed sweep run` runs it from there.")
    return SweepPoint(name, c.budget, c.model.name, c.method, c.setting, c.examples, steps, f"configs/{name}.yaml",
                      seed)


# ---- running --------------------------------------------------------------------------------------------


def fit_command() -> list[str]:
    """How to start ``lightning-embed`` in a subprocess: the console script beside this Python, if any."""
    script = Path(sys.executable).parent / "lightning-embed"
    if script.is_file():
        return [str(script)]
    found = shutil.which("lightning-embed")
    return [found] if found else [sys.executable, "-m", "lightning_embed.cli.app"]


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


def recorded_points(directory: Path) -> set[str]:
    """Names of the points that have a completed run record in the sweep's runs.jsonl.

    A record names its point by its run root (``runs/POINT``), so a sweep whose ``runs/`` folder is gone
    (a fresh clone of a committed sweep, another machine) does not train its finished points again.
    """
    path = Path(directory) / "runs.jsonl"
    names: set[str] = set()
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return names
    for line in lines:
        try:
            record = json.loads(line)
            root = record["config"]["trainer"]["default_root_dir"]
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line or a record written by hand: `laws fit` judges those
        if record.get("status", "completed") == "completed" and isinstance(root, str) and root.startswith("runs/"):
            names.add(root.removeprefix("runs/"))
    return names


class _Stopping:
    """What a signal asked of the running sweep: the signal, and the fit it must stop (the current child)."""

    signum: int | None = None
    proc: subprocess.Popen | None = None
    grace_s: float = 120.0


def _stop_on_signal(signum, frame) -> None:
    # Ctrl+C and SIGTERM only set a flag and pass SIGTERM on to the fit: raising here could interrupt the loop
    # that reads the fit's output at any point (a buffer half written, a read half done), and a fit whose
    # pipe stops being read dies of BrokenPipeError before its checkpoint (docs/bugs.md). The loop keeps
    # reading until the fit exits, then the sweep stops.
    first = _Stopping.signum is None
    _Stopping.signum = signum
    proc = _Stopping.proc
    if first and proc is not None and proc.poll() is None:
        proc.terminate()
        killer = threading.Timer(_Stopping.grace_s, lambda: proc.poll() is None and proc.kill())
        killer.daemon = True
        killer.start()


def _stream(cmd: list[str], cwd: Path, log: Path) -> int:
    """Runs a command, copying its output to our stdout and to a log file; returns its exit status."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        _Stopping.proc = proc
        if _Stopping.signum is not None:  # a signal came between Popen and the line above
            proc.terminate()
        try:
            while chunk := proc.stdout.read1(65536):
                out.write(chunk)
                _echo(chunk)
            return proc.wait()
        except BaseException:
            _stop(proc, out)
            raise
        finally:
            _Stopping.proc = None


def _echo(chunk: bytes) -> None:
    try:
        sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):  # our own reader went away (`| head`): the log file still gets it
        pass


def _stop(proc: subprocess.Popen, out, grace_s: float = 120.0) -> None:
    """Stops the fit (it writes last.ckpt on SIGTERM) while still reading its output until it exits.

    For an error in the sweep itself (a signal does not get here: see :func:`_stop_on_signal`). A fit whose
    output pipe is no longer read dies of BrokenPipeError at its next print, before its checkpoint is
    written (docs/bugs.md), so the pipe is drained on a thread while we wait.
    """
    def drain() -> None:
        try:
            while chunk := proc.stdout.read1(65536):
                out.write(chunk)
                _echo(chunk)
        except (OSError, ValueError):
            pass

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    reader.join(timeout=5)


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
    on_main_thread = threading.current_thread() is threading.main_thread()
    _Stopping.signum = None
    previous = {sig: signal.signal(sig, _stop_on_signal) for sig in (signal.SIGTERM, signal.SIGINT)} \
        if on_main_thread else {}
    try:
        return _run_points(directory, points, base_cmd, outcome, keep_going=keep_going, dry_run=dry_run)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_points(directory: Path, points: list[SweepPoint], base_cmd: list[str], outcome: dict[str, list[str]], *,
                keep_going: bool, dry_run: bool) -> dict[str, list[str]]:
    sweep_start, ran = time.monotonic(), 0
    recorded = recorded_points(directory)
    for i, point in enumerate(points, 1):
        root = directory / "runs" / point.name
        if (root / "DONE").exists() or point.name in recorded:
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
        if _Stopping.signum is None:
            status = _stream(cmd, directory, root / "fit.log")
        if _Stopping.signum is not None:  # Ctrl+C or SIGTERM: the fit has checkpointed and exited
            print(f"[{i}/{len(points)}] {point.name}: stopped ({signal.Signals(_Stopping.signum).name}); run "
                  f"`lightning-embed sweep run {directory}` again to resume it.", file=sys.stderr, flush=True)
            if _Stopping.signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + _Stopping.signum)
        ran += 1
        elapsed = time.monotonic() - sweep_start
        remaining = len(points) - i
        print(f"[{i}/{len(points)}] {point.name}: exit status {status} after {duration(time.monotonic() - start)} · "
              f"sweep elapsed {duration(elapsed)}"
              + (f" · ETA {duration(elapsed / ran * remaining)} for {remaining} more" if remaining else ""), flush=True)
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
    ``runs/POINT/DONE`` marker; its run record is appended to DIRECTORY/runs.jsonl by the FLOP callback. A
    point counts as finished when it has either, so a committed sweep cloned without ``runs/`` resumes too.
    Ctrl+C or SIGTERM stops the current fit (it checkpoints) and the sweep; run the command again to continue.

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
