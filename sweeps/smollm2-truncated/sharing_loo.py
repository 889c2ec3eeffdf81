"""Which coefficients of the anchored law to share across methods: leave-one-out RMSE of log L per variant.

Run from this folder: ``python sharing_loo.py > sharing-loo.txt`` (about a minute of CPU). Reads the
committed runs.jsonl and initial_losses.jsonl; fits L = E + (L0 - E) / (1 + (D / (k N^a))^beta)^gamma
(gamma = 1 unless listed) or the exponential variant L0 - (L0 - E) (1 - exp(-(D / (k N^a))^beta)), with
the floor bounded by the smallest L0 as `laws fit` does, from the same 18 starting points; leave-one-out
refits start from the full fit.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
from scipy.optimize import least_squares

runs = [json.loads(line) for line in open("runs.jsonl")]
runs = [r for r in runs if r["status"] == "completed"]
l0_by_n = {row["non_embedding_params"]: row["initial_val_loss"] for row in map(json.loads, open("initial_losses.jsonl"))}
methods = sorted({r["tuning"] for r in runs})
group = np.array([methods.index(r["tuning"]) for r in runs])
logn = np.log([r["non_embedding_params"] for r in runs])
logd = np.log([r["examples"] for r in runs])
t = np.log([r["val_loss"] for r in runs])
l0 = np.array([l0_by_n[r["non_embedding_params"]] for r in runs])
x, y = logn - logn.mean(), logd - logd.mean()


def layout(shared, gamma):
    names = ["lk", "a", "beta"] + (["gamma"] if gamma else [])
    return [("e", None)] + [(n, None) if n in shared else (n, g) for n in names
                            for g in ([None] if n in shared else range(len(methods)))]


def predict(p, lay, idx, kind):
    v = {}
    for (name, g), value in zip(lay, p):
        if g is None:
            v[name] = np.full(len(idx), value)
        else:
            v.setdefault(name, np.zeros(len(idx)))
            v[name] = np.where(group[idx] == g, value, v[name])
    e = np.exp(v["e"])
    z = np.exp(v["beta"] * (y[idx] - v["lk"] - v["a"] * x[idx]))
    if kind == "exp":
        return np.log(l0[idx] - (l0[idx] - e) * (1 - np.exp(-z)))
    return np.log(e + (l0[idx] - e) / (1 + z) ** v.get("gamma", 1.0))


def fit(lay, idx, kind, start=None):
    top = math.log(l0.min()) - 1e-3
    bounds = {"e": (top - 12, top), "lk": (-20, 20), "a": (-3, 3), "beta": (0.05, 10), "gamma": (0.05, 10)}
    lo, hi = zip(*(bounds[name] for name, _ in lay))
    inits = [start] if start is not None else []
    if start is None:
        for e, beta, lk in itertools.product((math.log(0.3), 0.0), (0.5, 1.0, 2.0), (-1.0, 0.0, 1.0)):
            value = {"e": min(e, top - 1e-3), "lk": lk, "a": 0.3, "beta": beta, "gamma": 1.0}
            inits.append(np.array([value[name] for name, _ in lay]))
    best = None
    for init in inits:
        res = least_squares(lambda p: predict(p, lay, idx, kind) - t[idx], np.clip(init, np.add(lo, 1e-9),
                            np.subtract(hi, 1e-9)), bounds=(lo, hi))
        if best is None or res.cost < best.cost:
            best = res
    return best.x


everything = np.arange(len(t))
print(f"{len(t)} runs, methods {', '.join(methods)}")
print(f"{'variant':42s} {'params':>6s} {'LOO RMSE':>9s} {'LOO max':>8s}")
for kind, shared, gamma in [("ratio", (), False), ("ratio", ("a",), False), ("ratio", ("beta",), False),
                            ("ratio", ("a", "beta"), False), ("ratio", ("a", "beta", "lk"), False),
                            ("ratio", ("a", "beta"), True), ("exp", ("a", "beta"), False), ("exp", ("a",), False)]:
    lay = layout(shared, gamma)
    full = fit(lay, everything, kind)
    err = np.array([t[i] - predict(fit(lay, everything[everything != i], kind, full), lay, np.array([i]), kind)[0]
                    for i in everything])
    name = f"{kind}, shared E" + "".join(f", {s}" for s in shared) + (", with gamma" if gamma else "")
    print(f"{name:42s} {len(lay):6d} {np.sqrt(np.mean(err ** 2)):9.4f} {np.abs(err).max():8.4f}")
