"""Fitting the anchored form jointly across methods (``laws fit --form anchored``).

    L(N, D) = E + (L0(N) - E) / (1 + (D / D_c)^beta),      D_c = k_m N^a

L0(N) is measured (the loss before training), so the form has no freedom at D = 0: data lowers the loss
from L0 toward the floor E, half-way at the data scale D_c. E, a and beta are shared by every method and
k_m is per method: a method is a shift of the common curve along log D (LoRA "learns faster" when its D_c
is smaller). Sharing was chosen by leave-one-out on the shipped sweep (per-method E, a, beta over-fit its
11-12 runs per method; see sweeps/smollm2-truncated/README.md).

The fit minimises the squared error of log L with scipy's trust-region least squares from a small grid of
starting points (18), with log N and log D centred; leave-one-out refits and bootstrap resamples start from
the full fit's optimum. Bounds keep E below the smallest L0 (every run starts above the floor; a
noisy run may end below it) and the exponents in [0.05, 10].
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

SHARED = ("E", "a", "beta")
_STARTS = {"e": (math.log(0.3), math.log(1.0)), "beta": (0.5, 1.0, 2.0), "lk": (-1.0, 0.0, 1.0)}


@dataclass
class AnchoredData:
    """The runs of every method, stacked: group index, log N, log D, log L and L0 per run."""

    group: np.ndarray
    n: np.ndarray
    d: np.ndarray
    loss: np.ndarray
    l0: np.ndarray
    groups: int

    def subset(self, index: np.ndarray) -> AnchoredData:
        """The runs at ``index`` (repeats allowed: a bootstrap resample)."""
        return AnchoredData(self.group[index], self.n[index], self.d[index], self.loss[index], self.l0[index],
                            self.groups)


@dataclass
class AnchoredFit:
    """Coefficients of a joint fit: shared E, a, beta and one k per group, in the file's convention."""

    E: float
    a: float
    beta: float
    k: np.ndarray

    def coefficients(self, group: int) -> dict[str, float]:
        """The law of one group."""
        return {"E": self.E, "k": float(self.k[group]), "a": self.a, "beta": self.beta}

    def predict(self, data: AnchoredData) -> np.ndarray:
        """Predicted loss of every run of ``data``."""
        dc = self.k[data.group] * data.n ** self.a
        return self.E + (data.l0 - self.E) / (1.0 + (data.d / dc) ** self.beta)


class _Problem:
    """The centred parametrisation p = [log E, a, beta, lk_1..lk_G] of one data set."""

    def __init__(self, data: AnchoredData, x0: float, y0: float) -> None:
        self.data, self.x0, self.y0 = data, x0, y0
        self.x, self.y = np.log(data.n) - x0, np.log(data.d) - y0
        self.t = np.log(data.loss)
        # The floor lies below every starting loss (not below every observed loss: noise dips under it).
        floor = math.log(float(data.l0.min())) - 1e-3
        self.lower = np.array([floor - 12.0, -3.0, 0.05] + [-20.0] * data.groups)
        self.upper = np.array([floor, 3.0, 10.0] + [20.0] * data.groups)

    def residuals(self, p: np.ndarray) -> np.ndarray:
        e = math.exp(p[0])
        z = p[2] * (self.y - p[3 + self.data.group] - p[1] * self.x)
        # 1 / (1 + exp(z)) computed without overflow for large |z|
        weight = np.exp(-np.logaddexp(0.0, z))
        return np.log(e + (self.data.l0 - e) * weight) - self.t

    def solve(self, inits: list[np.ndarray]) -> tuple[np.ndarray, float]:
        from scipy.optimize import least_squares

        best, cost = inits[0], math.inf
        for init in inits:
            res = least_squares(self.residuals, np.clip(init, self.lower + 1e-9, self.upper - 1e-9),
                                bounds=(self.lower, self.upper), x_scale=1.0, max_nfev=2000)
            if np.isfinite(res.cost) and res.cost < cost:
                best, cost = res.x, float(res.cost)
        return best, cost

    def grid(self) -> list[np.ndarray]:
        out = []
        for e, beta, lk in itertools.product(_STARTS["e"], _STARTS["beta"], _STARTS["lk"]):
            out.append(np.array([min(e, self.upper[0] - 1e-3), 0.3, beta] + [lk] * self.data.groups))
        return out

    def to_fit(self, p: np.ndarray) -> AnchoredFit:
        # log D_c = lk + y0 + a (log N - x0)  ->  k = exp(lk + y0 - a x0)
        k = np.exp(p[3:] + self.y0 - p[1] * self.x0)
        return AnchoredFit(E=math.exp(p[0]), a=float(p[1]), beta=float(p[2]), k=k)

    def from_fit(self, fit: AnchoredFit) -> np.ndarray:
        lk = np.log(fit.k) - self.y0 + fit.a * self.x0
        return np.concatenate([[math.log(fit.E), fit.a, fit.beta], lk])


def _centres(data: AnchoredData) -> tuple[float, float]:
    return float(np.mean(np.log(data.n))), float(np.mean(np.log(data.d)))


def fit_anchored(data: AnchoredData, start: AnchoredFit | None = None) -> AnchoredFit:
    """The least-squares fit of log L (from ``start`` alone when given, else from the grid)."""
    problem = _Problem(data, *_centres(data))
    inits = [problem.from_fit(start)] if start is not None else problem.grid()
    p, _ = problem.solve(inits)
    return problem.to_fit(p)


def leave_one_out(data: AnchoredData, full: AnchoredFit) -> np.ndarray:
    """log(observed / predicted) of each run by the joint fit without it."""
    out = np.empty(len(data.loss))
    everything = np.arange(len(data.loss))
    for i in everything:
        fit = fit_anchored(data.subset(everything[everything != i]), start=full)
        out[i] = math.log(data.loss[i]) - math.log(float(fit.predict(data.subset(np.array([i])))[0]))
    return out


def bootstrap(data: AnchoredData, full: AnchoredFit, resamples: int, seed: int) -> list[AnchoredFit]:
    """Refits on runs resampled with replacement within each group (every method keeps its run count)."""
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(data.group == g) for g in range(data.groups)]
    fits = []
    for _ in range(resamples):
        index = np.concatenate([rng.choice(m, size=len(m), replace=True) for m in members])
        fits.append(fit_anchored(data.subset(index), start=full))
    return fits
