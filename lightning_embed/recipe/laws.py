"""Scaling-law forms and the laws file: what ``laws fit`` writes and ``recipe`` and ``laws plot`` read.

A law predicts the held-out contrastive loss of a fine-tuning method (at one setting: LoRA rank, share
of trained blocks) from the model size and the amount of training data::

    per-model:   L(N, D) = E + (L0(N) - E) (1 + D / (k S(N)))^-beta      (the default when L0 is measured)
    anchored:    L(N, D) = E + (L0(N) - E) / (1 + (D / (k N^a))^beta)
    chinchilla:  L(N, D) = E + A / N^alpha + B / D^beta                     (Hoffmann et al. 2022)
    power:       L(N, D) =     A / N^alpha + B / D^beta                     (no irreducible term)

The per-model and anchored forms start where the model starts: at D = 0 they predict L0(N), the held-out
loss of the pretrained model before training (measured per model, see ``laws baseline``), and data lowers
the loss toward the floor E past the data scale D_c (per-model: as a power law in D; anchored: half-way at
D_c, logistic in log D). L0(N) is interpolated linearly in log N between the measured models and is unknown
outside them. ``laws fit`` shares E and beta across methods and fits k per method, so a method's law is its
k on a common curve. The per-model form fits a data scale S per measured model (shared by the methods;
interpolated in log N like L0, unknown outside the measured models: the file's ``data_scale``); the
anchored form assumes S = N^a.

N is the number of non-embedding parameters (every parameter whose name does not contain ``emb``, as the
study counts). D is the number of training *examples* (query-document pairs) by default: the FLOP budget
buys examples, and in-batch contrastive learning sees pairs, not a token stream, so examples are the unit
that transfers between data sets of different lengths. ``laws fit --data-unit tokens`` fits on tokens.

Every prediction is clipped to [E, L0(N)] (when L0 is known): training does not make the held-out loss worse
than the untrained model's, and no law may promise less than its own floor.

The laws file (YAML, ``schema_version: 2``; version 1 files, without L0 and bootstrap, must be refitted)::

    schema_version: 2
    kind: lightning-embed-laws
    data_unit: examples            # what D counts: examples | tokens
    created: 2025-01-01T00:00:00+00:00
    lightning_embed_version: 0.1.0
    provenance:                    # which runs, how they were fitted, what the training source holds
      runs_files: [{path: runs.jsonl, sha256: ..., records: 40, completed: 38}]
      backbones: [smollm2-135m]
      train_examples: 4213
      fit: {objective: least squares of log L, ...}
    initial_loss:                  # L0(N): the loss before training, per measured model
      N: [14160960, 28321344]
      L0: [2.602, 2.613]
      backbones: [smollm2-135m]
    data_scale:                    # S(N) of the per-model form: log S per model, and per bootstrap resample
      N: [14160960, 28321344]
      log_S: [0.0, -0.08]
      samples: [[0.0, -0.1], ...]
    bootstrap: {resamples: 200, seed: 0, unit: run}   # how the coefficient samples below were drawn
    laws:
    - method: lora                 # tuning strategy name
      setting: {rank: 16}          # method setting ({} for full and bias; {share: 0.25} for freeze)
      form: per-model
      coefficients: {E: 1.1, k: 3.2, beta: 1.2}
      shared: [E, beta, S]         # coefficients fitted jointly with the other laws
      range: {N: [1.4e7, 1.1e8], D: [2.0e2, 5.6e3], flops: [1.0e12, 1.0e14]}
      quality: {runs: 20, model_sizes: 4, r2_log: 0.995, rmse_log: 0.004, loo_rmse_log: 0.006}
      flops_per_example_per_param: 702.0   # median recorded FLOP / (D * N): for plots only
      hparams: {batch_size: 32, learning_rate: 1.0e-4}   # training settings shared by all its runs
      samples: [[1.1, 3.1, 1.2], ...]  # bootstrap refits (coefficients in order), aligned across laws
    skipped:                       # method settings the runs could not support, and why
    - {method: bias, setting: {}, reason: only 3 completed runs (at least 5 are needed)}

Coefficients, ranges and quality are plain numbers so the file can be read and edited by hand.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from lightning_embed.errors import UserError

SCHEMA_VERSION = 2
FILE_KIND = "lightning-embed-laws"
DataUnit = Literal["examples", "tokens"]
FormName = Literal["per-model", "anchored", "chinchilla", "power"]
#: A prediction is extrapolation beyond this factor outside the fitted N, D or FLOP range.
EXTRAPOLATION_FACTOR = 4.0
#: The fitted ranges are written with 6 significant digits: a fitted run sits on the rounded edge.
_EDGE = 1e-5


class ExtrapolationWarning(UserWarning):
    """A law was evaluated far outside the range of N or D it was fitted on."""


@dataclass(frozen=True)
class LawForm:
    """A functional form: its coefficients and how it predicts."""

    name: str
    coefficients: tuple[str, ...]
    formula: str
    #: Needs L0(N), the loss before training.
    anchored: bool = False
    #: Needs S(N), the data scale of each measured model (the file's ``data_scale``).
    per_model: bool = False

    def predict(self, coefficients: dict[str, Any], n, d, l0=None, scale=None):
        """Predicted loss at model size(s) ``n`` and data quantity(ies) ``d`` (numbers or numpy arrays).

        Coefficients may be arrays (bootstrap samples) broadcasting against ``n`` and ``d``; ``l0`` is
        L0(n), required by the anchored forms; ``scale`` is S(n), required by the per-model form.
        """
        c = coefficients
        if self.anchored:
            if l0 is None:
                raise UserError(f"the {self.name} form needs L0(N), the loss before training; the laws file has "
                                "no initial_loss (refit with `laws fit --initial-losses FILE`).")
            if self.per_model and scale is None:
                raise UserError(f"the {self.name} form needs the data scale of each model; the laws file has no "
                                "data_scale (refit with `lightning-embed laws fit`).")
            if self.per_model:
                return c["E"] + (l0 - c["E"]) * (1.0 + d / (c["k"] * scale)) ** -c["beta"]
            return c["E"] + (l0 - c["E"]) / (1.0 + (d / (c["k"] * n ** c["a"])) ** c["beta"])
        value = c["A"] / n ** c["alpha"] + c["B"] / d ** c["beta"]
        return value + c["E"] if "E" in self.coefficients else value


FORMS: dict[str, LawForm] = {
    "per-model": LawForm("per-model", ("E", "k", "beta"), "E + (L0(N) - E) (1 + D / (k S(N)))^-beta", True, True),
    "anchored": LawForm("anchored", ("E", "k", "a", "beta"), "E + (L0(N) - E) / (1 + (D / (k N^a))^beta)", True),
    "chinchilla": LawForm("chinchilla", ("E", "A", "alpha", "B", "beta"), "E + A / N^alpha + B / D^beta"),
    "power": LawForm("power", ("A", "alpha", "B", "beta"), "A / N^alpha + B / D^beta"),
}


@dataclass
class InitialLoss:
    """L0(N): the held-out loss of each measured model before training, interpolated in log N.

    Attributes:
        n: non-embedding parameters of each measured model (ascending).
        loss: its loss before training.
        backbones: the backbones measured (L0 of another backbone is unknown, whatever its N).
    """

    n: list[float]
    loss: list[float]
    backbones: list[str] = field(default_factory=list)

    def __call__(self, n):
        """L0 at ``n`` (linear in log N between measured models, flat beyond them: see :meth:`covers`)."""
        return np.interp(np.log(n), np.log(self.n), self.loss)

    def covers(self, n: float, backbone: str | None = None) -> str | None:
        """Why L0 at ``n`` is not known (None when ``n`` lies within the measured models)."""
        if backbone and self.backbones and backbone not in self.backbones:
            return f"L0 was measured on {', '.join(self.backbones)}, not {backbone}"
        lo, hi = self.n[0], self.n[-1]
        if n < lo * (1 - _EDGE) or n > hi * (1 + _EDGE):
            return f"N={n:.3g} is outside the models whose L0 was measured [{lo:.3g}, {hi:.3g}]"
        return None

    def to_dict(self) -> dict[str, Any]:
        """The file's ``initial_loss`` mapping."""
        return {"N": [int(round(v)) for v in self.n], "L0": [_num(v) for v in self.loss],
                "backbones": list(self.backbones)}

    @classmethod
    def from_points(cls, points: dict[float, float], backbones: list[str] | None = None) -> InitialLoss:
        """From ``{N: L0}``."""
        ns = sorted(points)
        return cls([float(v) for v in ns], [float(points[v]) for v in ns], sorted(backbones or []))


@dataclass
class DataScale:
    """S(N) of the per-model form: the data scale of each measured model, interpolated in log N.

    Attributes:
        n: non-embedding parameters of each model the runs measured (ascending).
        log_scale: log S of each (the smallest model's is 0: the methods' k carry the common scale).
        samples: log S of each model per bootstrap resample, aligned with every law's ``samples``.
    """

    n: list[float]
    log_scale: list[float]
    samples: list[list[float]] = field(default_factory=list)

    def __call__(self, n):
        """S at ``n`` (log S linear in log N between measured models, flat beyond them: see :meth:`covers`)."""
        return np.exp(np.interp(np.log(n), np.log(self.n), self.log_scale))

    def sampled(self, n, extra: int) -> np.ndarray:
        """S at ``n`` per bootstrap resample: shape ``(resamples,) + (1,) * (extra - ndim(n)) + shape(n)``."""
        logn = np.log(np.asarray(n, dtype=float))
        rows = np.stack([np.interp(logn, np.log(self.n), row) for row in self.samples])
        return np.exp(rows.reshape((len(self.samples),) + (1,) * (extra - logn.ndim) + logn.shape))

    def covers(self, n: float) -> str | None:
        """Why S at ``n`` is not known (None when ``n`` lies within the measured models)."""
        lo, hi = self.n[0], self.n[-1]
        if n < lo * (1 - _EDGE) or n > hi * (1 + _EDGE):
            return f"N={n:.3g} is outside the model sizes the per-model law was fitted on [{lo:.3g}, {hi:.3g}]"
        return None

    def to_dict(self) -> dict[str, Any]:
        """The file's ``data_scale`` mapping."""
        out: dict[str, Any] = {"N": [int(round(v)) for v in self.n], "log_S": [_num(v) for v in self.log_scale]}
        if self.samples:
            out["samples"] = [[_num(v) for v in row] for row in self.samples]
        return out


def setting_label(method: str, setting: dict[str, Any]) -> str:
    """``lora(rank=16)``, ``freeze(share=0.25)``, ``full``: how a method setting is shown."""
    if not setting:
        return method
    return f"{method}(" + ", ".join(f"{k}={v}" for k, v in sorted(setting.items())) + ")"


@dataclass
class Law:
    """One fitted law: a method at one setting.

    Attributes:
        method: the tuning strategy name (``full``, ``lora``, ``freeze``, ``bias`` or a plugin's).
        setting: the method setting the law holds for (``{"rank": 16}``, ``{"share": 0.25}``, ``{}``).
        form: the name of the functional form (a key of :data:`FORMS`).
        coefficients: the form's coefficients.
        range: ``{"N": [lo, hi], "D": [lo, hi], "flops": [lo, hi]}`` of the runs it was fitted on.
        quality: goodness of fit (``runs``, ``model_sizes``, ``r2_log``, ``rmse_log``, ``loo_rmse_log``...).
        flops_per_example_per_param: median recorded FLOP / (D x N) of its runs (plots draw with it).
        hparams: training settings every one of its runs shared (batch size, learning rate, ...).
        shared: coefficients fitted jointly with the file's other laws (same value in each).
        samples: bootstrap refits, one coefficient vector per resample (form order), aligned across laws.
        initial: L0(N) (the file's; the anchored forms need it, the others are clipped by it).
        scale: S(N) (the file's ``data_scale``; the per-model form needs it).
    """

    method: str
    setting: dict[str, Any]
    form: str
    coefficients: dict[str, float]
    range: dict[str, list[float]] = field(default_factory=dict)
    quality: dict[str, float] = field(default_factory=dict)
    flops_per_example_per_param: float | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    shared: list[str] = field(default_factory=list)
    samples: list[list[float]] = field(default_factory=list)
    initial: InitialLoss | None = field(default=None, repr=False)
    scale: DataScale | None = field(default=None, repr=False)
    #: log(observed / predicted) of each run by the fit without it, in fitting order (not written).
    loo_residuals: list[float] = field(default_factory=list, repr=False)

    @property
    def label(self) -> str:
        """``lora(rank=16)``."""
        return setting_label(self.method, self.setting)

    def predict(self, n, d):
        """Predicted held-out loss at ``n`` non-embedding parameters and ``d`` data (the file's unit)."""
        return self._clip(self.coefficients, n, d)

    def predict_samples(self, n, d) -> np.ndarray:
        """The bootstrap refits' predictions at ``(n, d)``: shape ``(resamples,) + shape of n * d``.

        Raises:
            UserError: the law carries no bootstrap samples (refit with ``laws fit``).
        """
        if not self.samples:
            raise UserError(f"the law {self.label} carries no bootstrap samples; refit with "
                            "`lightning-embed laws fit`.")
        array = np.asarray(self.samples, dtype=float)
        extra = np.ndim(np.asarray(n) * np.asarray(d))
        cols = {k: array[:, i].reshape((-1,) + (1,) * extra) for i, k in enumerate(FORMS[self.form].coefficients)}
        scale = None
        if FORMS[self.form].per_model and self.scale is not None:
            if len(self.scale.samples) != len(array):
                raise UserError(f"the law {self.label} has {len(array)} bootstrap samples but the data scale "
                                f"{len(self.scale.samples)}; refit with `lightning-embed laws fit`.")
            scale = self.scale.sampled(n, extra)
        value = self._clip(cols, n, d, scale)
        # Never below the fitted floor either (a resample's own floor may sit lower).
        return np.maximum(value, self.coefficients["E"]) if "E" in self.coefficients else value

    def _clip(self, coefficients, n, d, scale=None):
        l0 = self.initial(n) if self.initial is not None else None
        if scale is None and self.scale is not None:
            scale = self.scale(n)
        value = FORMS[self.form].predict(coefficients, n, d, l0, scale)
        if l0 is not None:
            value = np.minimum(value, l0)
        if "E" in coefficients:
            value = np.maximum(value, coefficients["E"])
        return float(value) if np.ndim(value) == 0 else value

    def extrapolation(self, n: float, d: float, factor: float = EXTRAPOLATION_FACTOR, flops: float | None = None,
                      backbone: str | None = None) -> str | None:
        """Why ``(n, d, flops)`` lies more than ``factor`` outside the fitted ranges, or L0 is unknown there.

        None when the prediction stands on measured ground.
        """
        out = []
        for key, value in (("N", n), ("D", d), ("flops", flops)):
            if value is None or key not in self.range:
                continue
            lo, hi = self.range[key]
            if value < lo / factor * (1 - _EDGE) or value > hi * factor * (1 + _EDGE):
                name = "FLOP" if key == "flops" else key
                out.append(f"{name}={value:.3g} is outside the fitted {name} range [{lo:.3g}, {hi:.3g}]")
        if self.initial is not None and FORMS[self.form].anchored:
            why = self.initial.covers(n, backbone)
            if why:
                out.append(why)
        if self.scale is not None and FORMS[self.form].per_model and not out:
            why = self.scale.covers(n)
            if why:
                out.append(why)
        return "; ".join(out) or None

    def to_dict(self) -> dict[str, Any]:
        """The law as it is written in the laws file."""
        out: dict[str, Any] = {
            "method": self.method,
            "setting": dict(self.setting),
            "form": self.form,
            "coefficients": {k: _num(v) for k, v in self.coefficients.items()},
            "range": {k: [_num(v[0]), _num(v[1])] for k, v in self.range.items()},
            "quality": {k: _num(v) for k, v in self.quality.items()},
        }
        if self.flops_per_example_per_param is not None:
            out["flops_per_example_per_param"] = _num(self.flops_per_example_per_param)
        if self.hparams:
            out["hparams"] = dict(self.hparams)
        if self.shared:
            out["shared"] = list(self.shared)
        if self.samples:
            out["samples"] = [[_num(v) for v in row] for row in self.samples]
        return out


@dataclass
class LawsFile:
    """The contents of a laws file."""

    laws: list[Law]
    data_unit: DataUnit = "examples"
    provenance: dict[str, Any] = field(default_factory=dict)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    created: str = ""
    lightning_embed_version: str = ""
    path: Path | None = None
    initial_loss: InitialLoss | None = None
    bootstrap: dict[str, Any] = field(default_factory=dict)
    data_scale: DataScale | None = None

    def __post_init__(self) -> None:
        for law in self.laws:
            law.initial = law.initial or self.initial_loss
            law.scale = law.scale or self.data_scale
        if self.data_scale is None:
            self.data_scale = next((law.scale for law in self.laws if law.scale is not None), None)

    def to_dict(self) -> dict[str, Any]:
        """The file's mapping (what :func:`save_laws` writes)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": FILE_KIND,
            "data_unit": self.data_unit,
            "created": self.created,
            "lightning_embed_version": self.lightning_embed_version,
            "provenance": self.provenance,
            **({"initial_loss": self.initial_loss.to_dict()} if self.initial_loss else {}),
            **({"data_scale": self.data_scale.to_dict()} if self.data_scale else {}),
            **({"bootstrap": self.bootstrap} if self.bootstrap else {}),
            "laws": [law.to_dict() for law in self.laws],
            "skipped": self.skipped,
        }

    def methods(self) -> list[str]:
        """The methods with at least one law, in file order."""
        return list(dict.fromkeys(law.method for law in self.laws))


def _num(value: float) -> float | int:
    # Plain floats with 6 significant digits: readable YAML, and no numpy scalars (safe_dump rejects them).
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    value = float(value)
    return float(f"{value:.6g}") if math.isfinite(value) else value


def save_laws(laws: LawsFile, path: str | Path) -> Path:
    """Writes a laws file (with a header comment saying what it is)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        "# lightning-embed scaling laws (see lightning_embed/recipe/laws.py for the format).\n"
        "# Written by `lightning-embed laws fit`; read by `lightning-embed recipe --laws` and `laws plot`.\n"
    )
    body = yaml.safe_dump(laws.to_dict(), sort_keys=False, width=110, default_flow_style=None)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(header + body)
    os.replace(tmp, path)  # a reader sees the old file or the whole new one
    return path


def parse_laws(data: Any, source: str = "laws file") -> LawsFile:
    """Validates a laws mapping.

    Raises:
        UserError: another schema version, or every structural problem at once.
    """
    if not isinstance(data, dict):
        raise UserError(f"{source} is not a laws file (expected a mapping with schema_version and laws).")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise UserError(
            f"{source} has schema_version {version!r}; this version of lightning-embed reads schema_version "
            f"{SCHEMA_VERSION} (laws that start at the untrained loss, with bootstrap samples). Refit it with "
            f"`lightning-embed laws fit RUNS -o {Path(source).name}`."
        )
    problems: list[str] = []
    unit = data.get("data_unit", "examples")
    if unit not in ("examples", "tokens"):
        problems.append(f"data_unit must be 'examples' or 'tokens', not {unit!r}")
    raw_laws = data.get("laws")
    if not isinstance(raw_laws, list):
        problems.append("'laws' must be a list")
        raw_laws = []
    initial = None
    raw_initial = data.get("initial_loss")
    if raw_initial is not None:
        try:
            points = dict(zip((float(v) for v in raw_initial["N"]), (float(v) for v in raw_initial["L0"]), strict=True))
            if not points or not all(k > 0 and v > 0 for k, v in points.items()):
                raise ValueError
            initial = InitialLoss.from_points(points, list(raw_initial.get("backbones") or []))
        except (KeyError, TypeError, ValueError):
            problems.append("initial_loss needs lists N and L0 of positive numbers, of equal length")
    scale = None
    raw_scale = data.get("data_scale")
    if raw_scale is not None:
        try:
            ns, logs = [float(v) for v in raw_scale["N"]], [float(v) for v in raw_scale["log_S"]]
            rows = [[float(v) for v in row] for row in raw_scale.get("samples") or []]
            if (not ns or len(ns) != len(logs) or ns != sorted(ns) or min(ns) <= 0
                    or any(len(row) != len(ns) for row in rows) or not all(map(math.isfinite, logs))):
                raise ValueError
            scale = DataScale(ns, logs, rows)
        except (KeyError, TypeError, ValueError):
            problems.append("data_scale needs ascending positive N, as many finite log_S, and samples rows of that "
                            "length")
    laws = []
    for i, raw in enumerate(raw_laws):
        where = f"laws[{i}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("method"), str):
            problems.append(f"{where} needs a 'method' name")
            continue
        form = raw.get("form", "chinchilla")
        if form not in FORMS:
            problems.append(f"{where}: unknown form {form!r} (known: {', '.join(FORMS)})")
            continue
        coefficients = raw.get("coefficients") or {}
        missing = [c for c in FORMS[form].coefficients if not isinstance(coefficients.get(c), (int, float))]
        if missing:
            problems.append(f"{where} ({raw['method']}): coefficients {', '.join(missing)} missing or not numbers")
            continue
        if FORMS[form].anchored and initial is None and raw_initial is None:
            problems.append(f"{where} ({raw['method']}): the {form} form needs the file's initial_loss (L0)")
            continue
        if FORMS[form].per_model and raw_scale is None:
            problems.append(f"{where} ({raw['method']}): the {form} form needs the file's data_scale")
            continue
        samples = raw.get("samples") or []
        width = len(FORMS[form].coefficients)
        if not (isinstance(samples, list) and all(isinstance(r, list) and len(r) == width for r in samples)):
            problems.append(f"{where} ({raw['method']}): samples must be rows of {width} coefficients")
            continue
        rng = raw.get("range") or {}
        laws.append(Law(
            method=raw["method"], setting=dict(raw.get("setting") or {}), form=form,
            coefficients={c: float(coefficients[c]) for c in FORMS[form].coefficients},
            range={k: [float(v[0]), float(v[1])] for k, v in rng.items() if isinstance(v, list) and len(v) == 2},
            quality=dict(raw.get("quality") or {}),
            flops_per_example_per_param=raw.get("flops_per_example_per_param"),
            hparams=dict(raw.get("hparams") or {}), shared=list(raw.get("shared") or []),
            samples=[[float(v) for v in r] for r in samples],
        ))
    if problems:
        raise UserError(f"{source}: " + "; ".join(problems) + ".")
    if not laws:
        raise UserError(f"{source} holds no laws; refit with `lightning-embed laws fit RUNS -o LAWS.yaml`.")
    return LawsFile(
        laws=laws, data_unit=unit, provenance=dict(data.get("provenance") or {}),
        skipped=list(data.get("skipped") or []), created=str(data.get("created", "")),
        lightning_embed_version=str(data.get("lightning_embed_version", "")),
        initial_loss=initial, bootstrap=dict(data.get("bootstrap") or {}), data_scale=scale,
    )


def load_laws(path: str | Path) -> LawsFile:
    """Reads and validates a laws file.

    Raises:
        UserError: a missing or unreadable file, invalid YAML, another schema version, a malformed law.
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except OSError as err:
        raise UserError(f"cannot read laws file {str(path)!r}: {err.strerror or err}.") from None
    try:
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as err:
        raise UserError(f"{path} is not valid YAML: {err}") from None
    laws = parse_laws(data, str(path))
    laws.path = path
    return laws
