"""Fitting the anchored forms jointly across methods (``laws fit --form per-model`` and ``--form anchored``).

    per-model:  L(N, D) = E + (L0(N) - E) (1 + D / D_c)^-beta,       D_c = k_m S(N)
    anchored:   L(N, D) = E + (L0(N) - E) / (1 + (D / D_c)^beta),    D_c = k_m N^a

L0(N) is measured (the loss before training), so neither form has freedom at D = 0: data lowers the loss
from L0 toward the floor E once D nears the data scale D_c. E and beta are shared by every method and
k_m is per method: a method is a shift of the common curve along log D (LoRA "learns faster" when its D_c
is smaller). How D_c depends on the model is where the forms differ:

- ``per-model`` fits a data scale S per measured model (the smallest has S = 1), shared by the methods,
  and interpolates log S linearly in log N between measured models, as L0 is. It assumes nothing about
  how models of one family differ in how fast they learn, and so says nothing outside the measured ones.
- ``anchored`` assumes a power law S = N^a across sizes.

They also differ in how the loss leaves L0: the per-model curve turns into a power law in D past D_c
(as the chinchilla term B / D^beta), the anchored one is logistic in log D and flattens onto E sooner.
Truncated models (the first blocks of one pretrained model) do not learn at a rate monotone in N, which
the power law in N cannot follow, and the logistic curve fitted on small budgets under-predicted how far
larger ones go; leave-one-out and a fit-small, predict-large check on the shipped sweep chose the
per-model form and its shape (see sweeps/python-code/README.md). Sharing E and beta across methods was
also chosen by leave-one-out on the first sweep (per-method E, a, beta over-fit; sweeps/smollm2-truncated).

The fit minimises the squared error of log L with scipy's trust-region least squares from a small grid of
starting points (18), with log N and log D centred; leave-one-out refits and bootstrap resamples start from
the full fit's optimum. Bounds keep E below the smallest L0 (every run starts above the floor; a
noisy run may end below it), the exponents in [0.05, 10] and log S within +-20.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

#: Coefficients shared by the methods, per form.
SHARED = {"anchored": ("E", "a", "beta"), "per-model": ("E", "beta", "S")}
_STARTS = {"e": (math.log(0.3), math.log(1.0)), "beta": (0.5, 1.0, 2.0), "lk": (-1.0, 0.0, 1.0)}


@dataclass
class AnchoredData:
    """The runs of every method, stacked: group index, log N, log D, log L and L0 per run.

    ``model`` indexes ``sizes`` (the distinct model sizes, ascending): the per-model form's data scales.
    """

    group: np.ndarray
    n: np.ndarray
    d: np.ndarray
    loss: np.ndarray
    l0: np.ndarray
    groups: int

    def __post_init__(self) -> None:
        self.sizes = np.unique(self.n)
        self.model = np.searchsorted(self.sizes, self.n)

    def subset(self, index: np.ndarray) -> AnchoredData:
        """The runs at ``index`` (repeats allowed: a bootstrap resample); model sizes keep their indices."""
        out = AnchoredData(self.group[index], self.n[index], self.d[index], self.loss[index], self.l0[index],
                           self.groups)
        out.sizes, out.model = self.sizes, self.model[index]
        return out


@dataclass
class AnchoredFit:
    """Coefficients of a joint fit, in the file's convention.

    Attributes:
        E: the floor (shared).
        beta: the exponent in D (shared).
        k: the data scale of each group (method setting).
        a: the exponent of N in D_c (``anchored``); None for ``per-model``.
        sizes: the measured model sizes (``per-model``).
        log_scale: log S at each of ``sizes`` (the first is 0).
    """

    E: float
    beta: float
    k: np.ndarray
    a: float | None = None
    sizes: np.ndarray | None = None
    log_scale: np.ndarray | None = None

    def coefficients(self, group: int) -> dict[str, float]:
        """The law of one group (its per-model scales are the file's ``data_scale``, not here)."""
        out = {"E": self.E, "k": float(self.k[group])}
        return {**out, "a": self.a, "beta": self.beta} if self.a is not None else {**out, "beta": self.beta}

    def predict(self, data: AnchoredData) -> np.ndarray:
        """Predicted loss of every run of ``data``."""
        if self.a is not None:
            dc = self.k[data.group] * data.n ** self.a
            return self.E + (data.l0 - self.E) / (1.0 + (data.d / dc) ** self.beta)
        dc = self.k[data.group] * np.exp(np.interp(np.log(data.n), np.log(self.sizes), self.log_scale))
        return self.E + (data.l0 - self.E) * (1.0 + data.d / dc) ** -self.beta


class _Problem:
    """The centred parametrisation of one data set.

    ``anchored``: p = [log E, beta, a, lk_1..lk_G]; ``per-model``: p = [log E, beta, s_2..s_M, lk_1..lk_G]
    with s the log data scale of each model size after the smallest.
    """

    def __init__(self, data: AnchoredData, x0: float, y0: float, per_model: bool) -> None:
        self.data, self.x0, self.y0, self.per_model = data, x0, y0, per_model
        self.x, self.y = np.log(data.n) - x0, np.log(data.d) - y0
        self.t = np.log(data.loss)
        self.middle = len(data.sizes) - 1 if per_model else 1
        # The floor lies below every starting loss (not below every observed loss: noise dips under it).
        floor = math.log(float(data.l0.min())) - 1e-3
        mid_lo, mid_hi = (-20.0, 20.0) if per_model else (-3.0, 3.0)
        self.lower = np.array([floor - 12.0, 0.05] + [mid_lo] * self.middle + [-20.0] * data.groups)
        self.upper = np.array([floor, 10.0] + [mid_hi] * self.middle + [20.0] * data.groups)

    def _log_dc(self, p: np.ndarray) -> np.ndarray:
        lk = p[2 + self.middle + self.data.group]
        if self.per_model:
            return lk + np.concatenate([[0.0], p[2:2 + self.middle]])[self.data.model]
        return lk + p[2] * self.x

    def residuals(self, p: np.ndarray) -> np.ndarray:
        e = math.exp(p[0])
        z = self.y - self._log_dc(p)  # log(D / D_c)
        # (1 + D/D_c)^-beta and 1 / (1 + (D/D_c)^beta), computed without overflow for large |z|
        weight = np.exp(-p[1] * np.logaddexp(0.0, z) if self.per_model else -np.logaddexp(0.0, p[1] * z))
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
        middle = [0.0] * self.middle if self.per_model else [0.3]
        for e, beta, lk in itertools.product(_STARTS["e"], _STARTS["beta"], _STARTS["lk"]):
            out.append(np.array([min(e, self.upper[0] - 1e-3), beta] + middle + [lk] * self.data.groups))
        return out

    def to_fit(self, p: np.ndarray) -> AnchoredFit:
        lk = p[2 + self.middle:]
        if self.per_model:
            # log D_c = lk + y0 + s(model): k = exp(lk + y0), S = exp(s)
            return AnchoredFit(E=math.exp(p[0]), beta=float(p[1]), k=np.exp(lk + self.y0),
                               sizes=self.data.sizes.copy(), log_scale=np.concatenate([[0.0], p[2:2 + self.middle]]))
        # log D_c = lk + y0 + a (log N - x0)  ->  k = exp(lk + y0 - a x0)
        return AnchoredFit(E=math.exp(p[0]), beta=float(p[1]), k=np.exp(lk + self.y0 - p[2] * self.x0), a=float(p[2]))

    def from_fit(self, fit: AnchoredFit) -> np.ndarray:
        if self.per_model:
            return np.concatenate([[math.log(fit.E), fit.beta], fit.log_scale[1:], np.log(fit.k) - self.y0])
        lk = np.log(fit.k) - self.y0 + fit.a * self.x0
        return np.concatenate([[math.log(fit.E), fit.beta, fit.a], lk])


def _centres(data: AnchoredData) -> tuple[float, float]:
    return float(np.mean(np.log(data.n))), float(np.mean(np.log(data.d)))


def fit_anchored(data: AnchoredData, start: AnchoredFit | None = None, per_model: bool = False) -> AnchoredFit:
    """The least-squares fit of log L (from ``start`` alone when given, else from the grid)."""
    problem = _Problem(data, *_centres(data), per_model=per_model)
    inits = [problem.from_fit(start)] if start is not None else problem.grid()
    p, _ = problem.solve(inits)
    return problem.to_fit(p)


def leave_one_out(data: AnchoredData, full: AnchoredFit) -> np.ndarray:
    """log(observed / predicted) of each run by the joint fit without it."""
    out = np.empty(len(data.loss))
    everything = np.arange(len(data.loss))
    for i in everything:
        fit = fit_anchored(data.subset(everything[everything != i]), start=full, per_model=full.a is None)
        out[i] = math.log(data.loss[i]) - math.log(float(fit.predict(data.subset(np.array([i])))[0]))
    return out


def bootstrap(data: AnchoredData, full: AnchoredFit, resamples: int, seed: int) -> list[AnchoredFit]:
    """Refits on runs resampled with replacement within each group (every method keeps its run count)."""
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(data.group == g) for g in range(data.groups)]
    fits = []
    for _ in range(resamples):
        index = np.concatenate([rng.choice(m, size=len(m), replace=True) for m in members])
        fits.append(fit_anchored(data.subset(index), start=full, per_model=full.a is None))
    return fits
