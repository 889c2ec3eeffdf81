"""Fitting scaling laws to run records (``lightning-embed laws fit``).

The anchored forms (they start at the measured untrained loss L0: ``per-model``, the default, and
``anchored``) are fitted jointly across methods in :mod:`lightning_embed.recipe.anchored`; this module reads
the runs, builds L0(N), dispatches, stores
bootstrap refits (runs resampled with replacement, each refit started from the full fit's optimum) and
writes the file. The chinchilla and power forms are fitted here, per method.

The chinchilla fit follows Hoffmann et al. (2022, Approach 3): minimise the Huber loss (delta 1e-3) between the
predicted and observed *log* loss, with the law written in log space so every term stays positive::

    log L = logsumexp(a - alpha * log N,  b - beta * log D,  e)      A = exp(a), B = exp(b), E = exp(e)

and L-BFGS-B (scipy) started from many points of a grid, keeping the best optimum. Two departures, both
for speed and conditioning: log N and log D are centred on their means before fitting (a and b then live
on the scale of the loss itself, so one grid fits every data set), and the whole grid is scored in one
vectorised pass and only its best ``starts`` points are refined. The grid: a and b at 6 points from
log(min L) - 4 to log(max L) + 0.5, alpha and beta in {0.1, 0.3, 0.6, 1, 1.5, 2}, e at 6 points from
log(min L) - 4 to log(min L): 7,776 starting points.

One law is fitted per method and method setting (LoRA rank, share of trained blocks). A group the data
cannot support (fewer than ``min_runs`` completed runs, a single model size or data quantity, non-finite
losses) is refused with its reason; the command fails when no group can be fitted.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from lightning_embed.errors import UserError
from lightning_embed.recipe.laws import (
    FORMS,
    DataScale,
    DataUnit,
    FormName,
    InitialLoss,
    Law,
    LawsFile,
    save_laws,
    setting_label,
)
from lightning_embed.recipe.records import Observation, group_key, read_observations

HUBER_DELTA = 1e-3
_EXPONENT_GRID = (0.1, 0.3, 0.6, 1.0, 1.5, 2.0)
_BOUNDS_EXPONENT = (0.0, 5.0)


@dataclass
class FitResult:
    """The best optimum of one fit, in the file's coefficients, with its quality."""

    coefficients: dict[str, float]
    quality: dict[str, float]
    notes: list[str] = field(default_factory=list)
    #: Bootstrap refits: coefficient vectors in the form's order.
    samples: list[list[float]] = field(default_factory=list)
    #: log(observed / predicted) of each run by the fit without it.
    loo_residuals: list[float] = field(default_factory=list)


# ---- the objective --------------------------------------------------------------------------------------


def _predict_log(p: np.ndarray, x: np.ndarray, y: np.ndarray, with_e: bool) -> tuple[np.ndarray, np.ndarray]:
    """Predicted log loss for parameter rows ``p`` (G x k) at centred ``x, y``; returns (pred, softmax)."""
    u = [p[:, 0:1] - p[:, 1:2] * x, p[:, 2:3] - p[:, 3:4] * y]
    if with_e:
        u.append(np.broadcast_to(p[:, 4:5], u[0].shape))
    stacked = np.stack(u)  # terms x G x n
    top = stacked.max(axis=0)
    expd = np.exp(stacked - top)
    total = expd.sum(axis=0)
    return top + np.log(total), expd / total


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def _objective(p: np.ndarray, x, y, t, with_e: bool, delta: float) -> tuple[float, np.ndarray]:
    """Huber loss (divided by delta: the same optimum, gradients of order 1) and its gradient."""
    # Written out for one parameter vector (no stacking): L-BFGS-B calls it thousands of times.
    u1 = p[0] - p[1] * x
    u2 = p[2] - p[3] * y
    top = np.maximum(u1, u2)
    if with_e:
        top = np.maximum(top, p[4])
        e1, e2, e3 = np.exp(u1 - top), np.exp(u2 - top), np.exp(p[4] - top)
        total = e1 + e2 + e3
    else:
        e1, e2 = np.exp(u1 - top), np.exp(u2 - top)
        total = e1 + e2
    r = top + np.log(total) - t
    a = np.abs(r)
    value = float(np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta)).sum()) / delta
    g = np.clip(r / delta, -1.0, 1.0) / total  # dHuber/dr / delta, times the softmax denominator
    g1, g2 = g * e1, g * e2
    grad = [g1.sum(), -(g1 * x).sum(), g2.sum(), -(g2 * y).sum()]
    if with_e:
        grad.append((g * e3).sum())
    return value, np.array(grad)


def _grid(t: np.ndarray, with_e: bool) -> np.ndarray:
    lo, hi = float(t.min()), float(t.max())
    scale = np.linspace(lo - 4.0, hi + 0.5, 6)  # a, b: log of each term at the centre point
    floor = np.linspace(lo - 4.0, lo, 6)  # e: below the smallest observed loss
    axes = [scale, _EXPONENT_GRID, scale, _EXPONENT_GRID] + ([floor] if with_e else [])
    return np.array(list(itertools.product(*axes)))


def _score_grid(grid: np.ndarray, x, y, t, with_e: bool, delta: float) -> np.ndarray:
    out = np.empty(len(grid))
    for start in range(0, len(grid), 2048):  # chunks keep memory flat for many runs
        pred, _ = _predict_log(grid[start:start + 2048], x, y, with_e)
        out[start:start + 2048] = _huber(pred - t, delta).sum(axis=1) / delta
    return out


def _single_thread_blas():
    # L-BFGS-B calls BLAS on 5-vectors: threaded OpenBLAS only adds synchronisation, 10x slower on a
    # busy machine. threadpoolctl comes with scikit-learn (an mteb dependency); without it, run as is.
    import scipy.optimize  # noqa: F401  (load scipy's BLAS first: a limit covers only loaded libraries)

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _minimise(x, y, t, with_e: bool, delta: float, inits: np.ndarray) -> np.ndarray:
    from scipy.optimize import minimize

    lo, hi = float(t.min()) - 30.0, float(t.max()) + 30.0
    bounds = [(lo, hi), _BOUNDS_EXPONENT, (lo, hi), _BOUNDS_EXPONENT] + ([(lo, hi)] if with_e else [])
    best, best_value = inits[0], math.inf
    for init in inits:
        res = minimize(
            _objective, init, args=(x, y, t, with_e, delta), jac=True, method="L-BFGS-B", bounds=bounds,
            options={"maxiter": 1000, "ftol": 1e-12, "gtol": 1e-9},
        )
        if np.isfinite(res.fun) and res.fun < best_value:
            best, best_value = res.x, float(res.fun)
    return best


def fit_arrays(
    n: np.ndarray, d: np.ndarray, loss: np.ndarray, *, form: FormName = "chinchilla", delta: float = HUBER_DELTA,
    starts: int = 32, leave_one_out: bool = True, resamples: int = 0, seed: int = 0,
) -> FitResult:
    """Fits one law to arrays of model sizes, data quantities and losses.

    Args:
        n: non-embedding parameters of each run.
        d: data quantity of each run (examples or tokens).
        loss: held-out loss of each run (positive, finite).
        form: ``chinchilla`` (E + A/N^alpha + B/D^beta) or ``power`` (no E).
        delta: Huber delta on log-loss residuals.
        starts: how many of the best grid points L-BFGS-B refines.
        leave_one_out: also refit without each run in turn and report the held-out error.
        resamples: bootstrap refits on runs drawn with replacement (from the full fit's optimum).
        seed: seed of the bootstrap draws.

    Returns:
        Coefficients in the file's convention and the fit quality (R^2 and RMSE of log L, LOO RMSE).
    """
    with _single_thread_blas():
        return _fit_arrays(n, d, loss, form, delta, starts, leave_one_out, resamples, seed)


def _coefficients(p: np.ndarray, x0: float, y0: float, with_e: bool) -> dict[str, float]:
    out = {"A": math.exp(p[0] + p[1] * x0), "alpha": float(p[1]), "B": math.exp(p[2] + p[3] * y0), "beta": float(p[3])}
    return {"E": math.exp(p[4]), **out} if with_e else out


def _fit_arrays(n, d, loss, form: str, delta: float, starts: int, leave_one_out: bool, resamples: int = 0,
                seed: int = 0) -> FitResult:
    with_e = form == "chinchilla"
    x0, y0 = float(np.mean(np.log(n))), float(np.mean(np.log(d)))
    x, y, t = np.log(n) - x0, np.log(d) - y0, np.log(loss)
    grid = _grid(t, with_e)
    order = np.argsort(_score_grid(grid, x, y, t, with_e, delta))
    p = _minimise(x, y, t, with_e, delta, grid[order[:starts]])
    pred = _predict_log(p[None, :], x, y, with_e)[0][0]
    resid = t - pred
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    quality: dict[str, float] = {
        "runs": int(len(t)),
        "model_sizes": int(len(np.unique(n))),
        "r2_log": 1.0 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else 1.0,
        "rmse_log": float(np.sqrt(np.mean(resid**2))),
        "max_abs_log": float(np.max(np.abs(resid))),
    }
    if leave_one_out and len(t) > 2:
        loo = np.empty(len(t))
        for i in range(len(t)):
            keep = np.arange(len(t)) != i
            # Restart from the full fit's optimum (LOO fits sit close to it) and the best grid point.
            sub_order = np.argsort(_score_grid(grid, x[keep], y[keep], t[keep], with_e, delta))
            inits = np.vstack([p[None, :], grid[sub_order[:1]]])
            q = _minimise(x[keep], y[keep], t[keep], with_e, delta, inits)
            loo[i] = t[i] - _predict_log(q[None, :], x[i:i + 1], y[i:i + 1], with_e)[0][0, 0]
        quality["loo_rmse_log"] = float(np.sqrt(np.mean(loo**2)))
        quality["loo_max_abs_log"] = float(np.max(np.abs(loo)))
    coefficients = _coefficients(p, x0, y0, with_e)
    samples = []
    rng = np.random.default_rng(seed)
    for _ in range(resamples):
        i = rng.integers(0, len(t), len(t))
        q = _minimise(x[i], y[i], t[i], with_e, delta, p[None, :])
        c = _coefficients(q, x0, y0, with_e)
        samples.append([c[k] for k in FORMS[form].coefficients])
    notes = []
    for name, value in (("alpha", p[1]), ("beta", p[3])):
        if value <= _BOUNDS_EXPONENT[0] + 1e-6 or value >= _BOUNDS_EXPONENT[1] - 1e-6:
            notes.append(f"{name} hit its bound ({value:.3g}): the data barely constrain it")
    return FitResult({k: coefficients[k] for k in FORMS[form].coefficients}, quality, notes, samples,
                     loo.tolist() if leave_one_out and len(t) > 2 else [])


# ---- from run records to laws ---------------------------------------------------------------------------


def check_group(obs: list[Observation], min_runs: int, data_unit: DataUnit) -> str | None:
    """Why a group of runs cannot support a law (None when it can)."""
    bad = [o.source for o in obs if not (math.isfinite(o.loss) and o.loss > 0)]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        return (f"missing, non-finite or non-positive val_loss in {shown} (a diverged run, or no validation "
                "data?); rerun or remove them")
    no_d = [o.source for o in obs if not (o.data(data_unit) or 0) > 0 or not o.n > 0]
    if no_d:
        return f"missing non_embedding_params or {data_unit} in {', '.join(no_d[:5])}"
    if len(obs) < min_runs:
        return f"only {len(obs)} completed run(s); at least {min_runs} are needed"
    sizes = {o.n for o in obs}
    if len(sizes) < 2:
        return f"every run uses one model size (N={next(iter(sizes)):,}); a law in N needs two sizes or more"
    if len({o.data(data_unit) for o in obs}) < 2:
        return "every run saw the same amount of data; a law in D needs two data quantities or more"
    return None


def _common_hparams(obs: list[Observation]) -> dict[str, Any]:
    keys = set.intersection(*(set(o.hparams) for o in obs)) if obs else set()
    return {k: obs[0].hparams[k] for k in sorted(keys) if all(o.hparams[k] == obs[0].hparams[k] for o in obs)}


def fit_laws(
    observations: list[Observation], *, form: FormName = "chinchilla", data_unit: DataUnit = "examples",
    min_runs: int = 5, delta: float = HUBER_DELTA, starts: int = 32, initial: InitialLoss | None = None,
    resamples: int = 0, seed: int = 0, leave_one_out: bool = True,
) -> tuple[list[Law], list[dict[str, Any]], dict[str, list[str]]]:
    """Fits one law per method setting (jointly across settings for the anchored form).

    Args:
        observations: the completed runs.
        form: the law's form (``per-model`` and ``anchored`` need ``initial``).
        data_unit: what D counts.
        min_runs: fewest runs a method setting needs.
        delta: Huber delta of the chinchilla and power fits.
        starts: grid points refined by the chinchilla and power fits.
        initial: L0(N), the loss before training of each model.
        resamples: bootstrap refits stored with each law (0: none).
        seed: seed of the bootstrap draws.
        leave_one_out: compute the leave-one-out error (``laws validate`` refits without it, for speed).

    Returns:
        ``(laws, skipped, notes)``: the fitted laws, ``{method, setting, reason}`` of every refused group,
        and fit notes per law label.
    """
    groups: dict[tuple, list[Observation]] = {}
    for o in observations:
        groups.setdefault(group_key(o.method, o.setting), []).append(o)
    kept, skipped = [], []
    for obs in groups.values():
        reason = check_group(obs, min_runs, data_unit)
        if reason:
            skipped.append({"method": obs[0].method, "setting": dict(obs[0].setting), "reason": reason})
        else:
            kept.append(obs)
    if FORMS[form].anchored:
        if initial is None:
            raise UserError(f"the {form} form needs L0, the loss of each model before training: give "
                            "--initial-losses FILE (from `lightning-embed laws baseline`), or --form chinchilla.")
        if not kept:
            return [], skipped, {}
        return _fit_anchored(kept, data_unit, initial, resamples, seed, leave_one_out, form), skipped, {}
    laws, notes = [], {}
    for obs in kept:
        n, d, loss = _arrays(obs, data_unit)
        result = fit_arrays(n, d, loss, form=form, delta=delta, starts=starts, resamples=resamples, seed=seed,
                            leave_one_out=leave_one_out)
        law = _law(obs, form, result.coefficients, result.quality, data_unit, samples=result.samples,
                   loo_residuals=result.loo_residuals)
        law.initial = initial
        laws.append(law)
        notes[law.label] = result.notes
    return laws, skipped, notes


def _arrays(obs: list[Observation], data_unit: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = np.array([o.n for o in obs], dtype=float)
    d = np.array([o.data(data_unit) for o in obs], dtype=float)
    return n, d, np.array([o.loss for o in obs], dtype=float)


def _law(obs: list[Observation], form: str, coefficients: dict[str, float], quality: dict[str, float],
         data_unit: str, **extra: Any) -> Law:
    n, d, _ = _arrays(obs, data_unit)
    flops = [o.flops for o in obs if o.flops]
    ratio = [o.flops / (o.examples * o.n) for o in obs if o.flops and o.examples]
    rng = {"N": [n.min(), n.max()], "D": [d.min(), d.max()]}
    if flops:
        rng["flops"] = [min(flops), max(flops)]
    return Law(
        method=obs[0].method, setting=dict(obs[0].setting), form=form, coefficients=coefficients, range=rng,
        quality=quality, flops_per_example_per_param=float(np.median(ratio)) if ratio else None,
        hparams=_common_hparams(obs), **extra,
    )


def _quality(t: np.ndarray, resid: np.ndarray, sizes: int, loo: np.ndarray | None) -> dict[str, float]:
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    out = {
        "runs": int(len(t)), "model_sizes": sizes,
        "r2_log": 1.0 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else 1.0,
        "rmse_log": float(np.sqrt(np.mean(resid**2))), "max_abs_log": float(np.max(np.abs(resid))),
    }
    if loo is not None:
        out["loo_rmse_log"] = float(np.sqrt(np.mean(loo**2)))
        out["loo_max_abs_log"] = float(np.max(np.abs(loo)))
    return out


def _fit_anchored(kept: list[list[Observation]], data_unit: str, initial: InitialLoss, resamples: int, seed: int,
                  leave_one_out: bool, form: str = "anchored") -> list[Law]:
    from lightning_embed.recipe import anchored

    runs = [o for obs in kept for o in obs]
    missing = sorted({o.n for o in runs if o.initial_loss is None and initial.covers(o.n)})
    if missing:
        raise UserError("L0 (the loss before training) is not known for the runs' model size(s) N = "
                        + ", ".join(f"{n:,.0f}" for n in missing) + "; measure them with `lightning-embed laws "
                        "baseline CONFIG --models ...` and pass --initial-losses.")
    arrays = [_arrays(obs, data_unit) for obs in kept]
    data = anchored.AnchoredData(
        group=np.concatenate([np.full(len(obs), g) for g, obs in enumerate(kept)]),
        n=np.concatenate([a[0] for a in arrays]), d=np.concatenate([a[1] for a in arrays]),
        loss=np.concatenate([a[2] for a in arrays]),
        l0=np.array([o.initial_loss if o.initial_loss is not None else float(initial(o.n)) for o in runs]),
        groups=len(kept),
    )
    per_model = FORMS[form].per_model
    if per_model:
        runs_per_size = {n: int(np.sum(data.n == n)) for n in data.sizes}
        thin = [n for n, count in runs_per_size.items() if count < 2]
        if thin:
            raise UserError("the per-model form fits a data scale per model size and needs 2 runs or more of each; "
                            "N = " + ", ".join(f"{n:,.0f}" for n in thin) + " has one. Add runs, or use "
                            "--form anchored (one exponent across sizes).")
    with _single_thread_blas():
        full = anchored.fit_anchored(data, per_model=per_model)
        loo = anchored.leave_one_out(data, full) if leave_one_out else None
        boot = anchored.bootstrap(data, full, resamples, seed) if resamples else []
    resid = np.log(data.loss) - np.log(full.predict(data))
    laws = []
    for g, obs in enumerate(kept):
        mine = data.group == g
        quality = _quality(np.log(data.loss[mine]), resid[mine], len({o.n for o in obs}),
                           loo[mine] if loo is not None else None)
        samples = [[fit.coefficients(g)[k] for k in FORMS[form].coefficients] for fit in boot]
        law = _law(obs, form, full.coefficients(g), quality, data_unit, shared=list(anchored.SHARED[form]),
                   samples=samples, loo_residuals=loo[mine].tolist() if loo is not None else [])
        law.initial = initial
        laws.append(law)
    if per_model:
        scale = DataScale([float(v) for v in full.sizes], [float(v) for v in full.log_scale],
                          [[float(v) for v in fit.log_scale] for fit in boot])
        for law in laws:
            law.scale = scale
    return laws


def default_form(observations: list[Observation], initial: InitialLoss | None) -> FormName:
    """``per-model`` when L0 is known for every run and each model size has 2 runs or more; else ``anchored``
    when L0 is known; else ``chinchilla``. (The order was chosen by ``laws validate`` on the shipped sweep.)"""
    if initial is None or any(initial.covers(o.n) for o in observations):
        return "chinchilla"
    sizes = [o.n for o in observations]
    return "per-model" if all(sizes.count(n) >= 2 for n in set(sizes)) else "anchored"


def _fit_provenance(form: str, starts: int) -> dict[str, Any]:
    if FORMS[form].anchored:
        from lightning_embed.recipe.anchored import SHARED

        return {"objective": "least squares of log L", "optimizer": "scipy least_squares (trust region)",
                "grid_points": 18, "shared": list(SHARED[form]), "leave_one_out": True}
    return {"objective": "huber(log L)", "delta": HUBER_DELTA, "optimizer": "L-BFGS-B",
            "grid_points": int(len(_grid(np.zeros(1), form == "chinchilla"))), "starts": starts, "leave_one_out": True}


def _train_examples(laws: list[Law]) -> int | None:
    """Training pairs of the source every law's runs used (``recipe`` flags budgets that repeat it)."""
    sources = {law.hparams.get("train") for law in laws}
    if len(sources) != 1 or None in sources:
        return None
    try:
        from lightning_embed.data.reading import read_examples

        return len(read_examples(str(sources.pop())))
    except (UserError, OSError, ImportError):
        return None  # a source that moved or needs the network: recipe then asks for --available-examples


def _seed_noise(observations: list[Observation]) -> dict[str, Any]:
    from lightning_embed.recipe.validate import seed_noise

    noise = seed_noise(observations)
    return {"points": noise["points"], "sd_log": noise["sd_log"]}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _print_report(laws: LawsFile, notes: dict[str, list[str]], output: Path) -> None:
    from rich import box
    from rich.table import Table

    from lightning_embed.recipe.solve import wide_console

    console = wide_console()
    form = FORMS[laws.laws[0].form]
    table = Table(title=f"L = {form.formula}   (N: non-embedding params, D: {laws.data_unit})",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("method", no_wrap=True, min_width=max(len(law.label) for law in laws.laws))
    for col in ("runs", "sizes", *form.coefficients, "R²", "RMSE", "LOO"):
        table.add_column(col, justify="right", no_wrap=True)
    for law in laws.laws:
        q = law.quality
        table.add_row(
            law.label, str(q["runs"]), str(q["model_sizes"]), *(f"{v:.3g}" for v in law.coefficients.values()),
            f"{q['r2_log']:.4f}", f"{q['rmse_log']:.4f}", f"{q.get('loo_rmse_log', float('nan')):.4f}",
        )
    console.print(table)
    if laws.data_scale is not None and form.per_model:
        console.print("S(N), the data scale of each model size (shared by the methods): "
                      + ", ".join(f"N={n:.3g}: {math.exp(v):.3g}" for n, v in zip(laws.data_scale.n,
                                                                                   laws.data_scale.log_scale)))
    console.print("R², RMSE and LOO (leave-one-out RMSE) are of log L.")
    for label, items in notes.items():
        for note in items:
            console.print(f"[yellow]note[/]: {label}: {note}")
    for s in laws.skipped:
        console.print(f"[yellow]skipped[/] {setting_label(s['method'], s['setting'])}: {s['reason']}")
    console.print(f"wrote {output}")


def laws_fit(
    runs: list[Path],
    output: Path = Path("laws.yaml"),
    form: FormName | None = None,
    initial_losses: Path | None = None,
    bootstrap: int = 200,
    seed: int = 0,
    data_unit: DataUnit = "examples",
    min_runs: int = 5,
    min_steps: int = 0,
    starts: int = 32,
    strict: bool = False,
    quiet: bool = False,
    description: str | None = None,
    overwrite: bool = False,
) -> LawsFile:
    """Fits a scaling law per fine-tuning method and setting to run records and writes a laws file.

    The default law starts where the model starts: L = E + (L0(N) - E) (1 + D / (k S(N)))^-beta, with
    L0(N) the held-out loss before training (from the records' ``initial_val_loss`` or --initial-losses),
    S(N) a data scale per measured model, E and beta shared by the methods and k per method, fitted by
    least squares of log L (``per-model``; ``anchored``: D_c = k N^a, logistic in log D). Without L0 it falls back to
    ``chinchilla`` (E + A/N^alpha + B/D^beta per method, Huber loss on log L, L-BFGS-B from a grid, as
    Hoffmann et al.). Reports R² and RMSE of log L and the leave-one-out error, and stores bootstrap refits
    (runs resampled with replacement) that ``recipe`` turns into intervals.

    Args:
        runs: run-record files (JSON lines, one record per finished fit).
        output: the laws file to write (YAML, schema_version 2).
        form: ``per-model`` (starts at L0, a data scale per model size; the default when L0 is known and
            every size has 2 runs or more), ``anchored`` (starts at L0, data scale k N^a), ``chinchilla``
            (E + A/N^alpha + B/D^beta; the default without L0) or ``power`` (without the floor E).
        initial_losses: L0 per model from ``lightning-embed laws baseline``, for runs recorded without
            ``initial_val_loss``.
        bootstrap: bootstrap refits to store (0: none; ``recipe`` then shows no intervals).
        seed: seed of the bootstrap draws.
        data_unit: what D counts: ``examples`` (query-document pairs) or ``tokens``.
        min_runs: fewest completed runs a method setting needs to be fitted (at least 5 is sensible).
        min_steps: leave out runs of fewer optimizer steps (listed): with a warm-up and a decay to zero, a
            run of a dozen steps ends where its schedule dictates rather than where its data would lead.
        starts: how many of the best grid points L-BFGS-B refines.
        strict: fail when any method setting cannot be fitted (default: fit the others, list the rest).
        quiet: do not print the report table.
        description: where the runs came from (machine, data, sweep), kept in the file's provenance.
        overwrite: replace an existing laws file (without it, an existing ``output`` is refused before fitting).

    Returns:
        The laws written.

    Raises:
        UserError: bad arguments, unreadable records, an existing or unwritable ``output``, or no method
            setting the data can support.
    """
    problems = []
    if not runs:
        problems.append("give at least one run-record file")
    problems += [f"run-record file {str(p)!r} does not exist" for p in runs if not Path(p).is_file()]
    if min_steps < 0:
        problems.append(f"min_steps must be 0 or more, got {min_steps}")
    if min_runs < 2:
        problems.append(f"min_runs must be at least 2, got {min_runs}")
    if starts < 1:
        problems.append(f"starts must be at least 1, got {starts}")
    if form is not None and form not in FORMS:
        problems.append(f"form must be one of {', '.join(FORMS)}, not {form!r}")
    if bootstrap < 0:
        problems.append(f"bootstrap must be 0 or more, got {bootstrap}")
    if initial_losses is not None and not Path(initial_losses).is_file():
        problems.append(f"initial-loss file {str(initial_losses)!r} does not exist")
    if data_unit not in ("examples", "tokens"):
        problems.append(f"data_unit must be 'examples' or 'tokens', not {data_unit!r}")
    if Path(output).is_dir():
        problems.append(f"output {str(output)!r} is a directory; give a file name such as laws.yaml")
    if problems:
        raise UserError("laws fit: " + "; ".join(problems) + ".")
    from lightning_embed.cli.outputs import check_output

    check_output(output, "laws fit -o", overwrite=overwrite)
    observations, files = read_observations([Path(p) for p in runs])
    if not observations:
        total = sum(f["records"] for f in files)
        raise UserError(
            f"laws fit: none of the {total} record(s) in {', '.join(str(p) for p in runs)} is a completed run; "
            "nothing to fit."
        )
    is_short = [bool(min_steps) and o.steps is not None and o.steps < min_steps for o in observations]
    short = [o for o, cut in zip(observations, is_short) if cut]
    observations = [o for o, cut in zip(observations, is_short) if not cut]
    if short and not quiet:
        print(f"left out {len(short)} run(s) of fewer than {min_steps} steps: "
              + ", ".join(f"{setting_label(o.method, o.setting)} N={o.n:.3g} ({o.steps} steps)" for o in short))
    from lightning_embed.recipe.baseline import initial_loss_table, read_initial_losses

    rows = read_initial_losses(initial_losses) if initial_losses is not None else []
    initial = initial_loss_table(observations, rows)
    if form is None:
        form = default_form(observations, initial)
        if form == "chinchilla" and not quiet:
            print("laws fit: the runs carry no initial_val_loss and no --initial-losses was given: fitting the "
                  "chinchilla form (measure L0 with `lightning-embed laws baseline` for the anchored form).")
    laws, skipped, notes = fit_laws(observations, form=form, data_unit=data_unit, min_runs=min_runs, starts=starts,
                                    initial=initial, resamples=bootstrap, seed=seed)
    if not laws or (strict and skipped):
        reasons = "; ".join(f"{setting_label(s['method'], s['setting'])}: {s['reason']}" for s in skipped)
        raise UserError(f"laws fit: the runs cannot support a law for {'any' if not laws else 'every'} method "
                        f"setting. {reasons}.")
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg_version = version("lightning-embed")
    except PackageNotFoundError:
        pkg_version = "unknown"
    tokens_per_example = [o.tokens / o.examples for o in observations if o.tokens and o.examples]
    provenance = {
        **({"description": description} if description else {}),
        "runs_files": [{**f, "sha256": _sha256(Path(f["path"]))} for f in files],
        "backbones": sorted({o.backbone for o in observations if o.backbone}),
        "accounting": sorted({o.accounting for o in observations if o.accounting}),
        "tokens_per_example": float(np.median(tokens_per_example)) if tokens_per_example else None,
        **({"min_steps": min_steps, "left_out_short_runs": len(short)} if min_steps else {}),
        **({"initial_losses": {"path": str(initial_losses), "sha256": _sha256(Path(initial_losses))}}
           if initial_losses is not None else {}),
        **({"train_examples": count} if (count := _train_examples(laws)) else {}),
        "seed_noise": _seed_noise(observations),
        "fit": _fit_provenance(form, starts),
    }
    result = LawsFile(
        laws=laws, data_unit=data_unit, provenance=provenance, skipped=skipped,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), lightning_embed_version=pkg_version,
        initial_loss=initial, bootstrap={"resamples": bootstrap, "seed": seed, "unit": "run"} if bootstrap else {},
    )
    save_laws(result, output)
    result.path = Path(output)
    if not quiet:
        _print_report(result, notes, Path(output))
    return result
