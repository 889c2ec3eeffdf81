"""Which anchored form to fit: how D_c depends on the model, and how the loss leaves L0.

Run from this folder: ``python form_choice.py > form-choice.txt`` (about a minute of CPU). Reads the
committed run records (runs.jsonl, 1e14/runs.jsonl) and fits, by least squares of log L with the floor E
bounded by the smallest L0 (as `laws fit` does) from the same 18 starting points,

    L = E + (L0(N) - E) w(D / D_c),    D_c = k_method S(model)

with S(model) = N^a ("power in N") or one free S per model size ("per model"), and the curve w

    logistic:   1 / (1 + x^beta)         (the anchored form of `laws fit`)
    power:      (1 + x)^-beta            (a power law in D past D_c: the per-model form of `laws fit`)
    stretched:  exp(-x^beta)

For each variant it prints the leave-one-out RMSE and max of log L (each run predicted by the fit
without it; refits start from the full fit) and the error of the runs at the largest budget predicted by
a fit on the smaller budgets only (extrapolation in FLOP, the recipe's use).
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
from scipy.optimize import least_squares

runs = [json.loads(line) for path in ("runs.jsonl", "1e14/runs.jsonl") for line in open(path)]
runs = [r for r in runs if r["status"] == "completed"]
methods = sorted({r["tuning"] for r in runs})
sizes = sorted({r["non_embedding_params"] for r in runs})
group = np.array([methods.index(r["tuning"]) for r in runs])
model = np.array([sizes.index(r["non_embedding_params"]) for r in runs])
logn = np.log([r["non_embedding_params"] for r in runs])
logd = np.log([r["examples"] for r in runs])
t = np.log([r["val_loss"] for r in runs])
l0 = np.array([r["initial_val_loss"] for r in runs])
budget = np.array([r["budget"] for r in runs])
x0, y0 = logn.mean(), logd.mean()
floor = math.log(l0.min()) - 1e-3
G, M = len(methods), len(sizes)


def weight(shape: str, beta, z):
    """w at log x = z."""
    if shape == "logistic":
        return np.exp(-np.logaddexp(0.0, beta * z))
    if shape == "power":
        return np.exp(-beta * np.logaddexp(0.0, z))
    return np.exp(-np.exp(np.clip(beta * z, -50, 50)))


def residuals(p, idx, scale: str, shape: str):
    e, beta = math.exp(p[0]), p[1]
    mid = p[2:3] if scale == "power in N" else np.concatenate([[0.0], p[2:1 + M]])
    lk = p[len(p) - G:]
    log_dc = lk[group[idx]] + (mid[0] * (logn[idx] - x0) if scale == "power in N" else mid[model[idx]])
    w = weight(shape, beta, logd[idx] - y0 - log_dc)
    return np.log(e + (l0[idx] - e) * w) - t[idx]


def fit(idx, scale: str, shape: str, start=None):
    middle = 1 if scale == "power in N" else M - 1
    lo = np.array([floor - 12.0, 0.05] + [-20.0] * middle + [-20.0] * G)
    hi = np.array([floor, 10.0] + [20.0] * middle + [20.0] * G)
    if start is not None:
        inits = [start]
    else:
        inits = [np.array([min(e, floor - 1e-3), b] + ([0.3] if middle == 1 else [0.0] * middle) + [k] * G)
                 for e, b, k in itertools.product((math.log(0.3), 0.0), (0.5, 1.0, 2.0), (-1.0, 0.0, 1.0))]
    best = None
    for init in inits:
        r = least_squares(residuals, np.clip(init, lo + 1e-9, hi - 1e-9), args=(idx, scale, shape),
                          bounds=(lo, hi), max_nfev=2000)
        if best is None or r.cost < best.cost:
            best = r
    return best.x


everything = np.arange(len(runs))
largest = budget.max()
print(f"{len(runs)} runs, methods {', '.join(methods)}, {M} model sizes; largest budget {largest:.0e} FLOP")
print(f"{'D_c':12s} {'curve':10s} {'params':>6s} {'LOO RMSE':>9s} {'LOO max':>8s} {'largest budget from the others':>31s}")
for scale, shape in itertools.product(("power in N", "per model"), ("logistic", "power", "stretched")):
    p = fit(everything, scale, shape)
    loo = []
    for i in everything:
        q = fit(everything[everything != i], scale, shape, start=p)
        loo.append(residuals(q, np.array([i]), scale, shape)[0])
    loo = np.array(loo)
    small, big = everything[budget < largest], everything[budget == largest]
    q = fit(small, scale, shape)
    extra = residuals(q, big, scale, shape)
    print(f"{scale:12s} {shape:10s} {len(p):6d} {math.sqrt(np.mean(loo ** 2)):9.4f} {np.abs(loo).max():8.4f} "
          f"{'RMSE %.4f, max %.4f (%d runs)' % (math.sqrt(np.mean(extra ** 2)), np.abs(extra).max(), len(big)):>31s}")
