"""Scaling-law forms and the laws file: what ``laws fit`` writes and ``recipe`` and ``laws plot`` read.

A law predicts the held-out contrastive loss of a fine-tuning method (at one setting: LoRA rank, share
of trained blocks) from the model size and the amount of training data::

    chinchilla:  L(N, D) = E + A / N^alpha + B / D^beta      (Hoffmann et al. 2022, the default)
    power:       L(N, D) =     A / N^alpha + B / D^beta      (no irreducible term)

N is the number of non-embedding parameters (every parameter whose name does not contain ``emb``, as the
study counts). D is the number of training *examples* (query-document pairs) by default: the FLOP budget
buys examples, and in-batch contrastive learning sees pairs, not a token stream, so examples are the unit
that transfers between data sets of different lengths. ``laws fit --data-unit tokens`` fits on tokens.

The laws file (YAML, ``schema_version: 1``)::

    schema_version: 1
    kind: lightning-embed-laws
    data_unit: examples            # what D counts: examples | tokens
    created: 2025-01-01T00:00:00+00:00
    lightning_embed_version: 0.1.0
    provenance:                    # which runs, how they were fitted
      runs_files: [{path: runs.jsonl, sha256: ..., records: 40, completed: 38}]
      backbones: [smollm2-135m]
      fit: {objective: huber(log L), delta: 0.001, optimizer: L-BFGS-B, grid_points: 7776, starts: 32}
    laws:
    - method: lora                 # tuning strategy name
      setting: {rank: 16}          # method setting ({} for full and bias; {share: 0.25} for freeze)
      form: chinchilla
      coefficients: {E: 0.61, A: 58.1, alpha: 0.34, B: 24.0, beta: 0.30}
      range: {N: [1.4e7, 1.1e8], D: [2.0e4, 3.1e6], flops: [1.0e15, 1.0e17]}
      quality: {runs: 20, model_sizes: 4, r2_log: 0.995, rmse_log: 0.004, loo_rmse_log: 0.006}
      flops_per_example_per_param: 702.0   # median recorded FLOP / (D * N): for plots only
      hparams: {batch_size: 32, learning_rate: 1.0e-4}   # training settings shared by all its runs
    skipped:                       # method settings the runs could not support, and why
    - {method: bias, setting: {}, reason: only 3 completed runs (at least 5 are needed)}

Coefficients, ranges and quality are plain numbers so the file can be read and edited by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from lightning_embed.errors import UserError

SCHEMA_VERSION = 1
FILE_KIND = "lightning-embed-laws"
DataUnit = Literal["examples", "tokens"]
FormName = Literal["chinchilla", "power"]
#: A law's prediction is flagged as extrapolation beyond this factor outside its fitted N or D range.
EXTRAPOLATION_FACTOR = 3.0


class ExtrapolationWarning(UserWarning):
    """A law was evaluated far outside the range of N or D it was fitted on."""


@dataclass(frozen=True)
class LawForm:
    """A functional form: its coefficients and how it predicts."""

    name: str
    coefficients: tuple[str, ...]
    formula: str

    def predict(self, coefficients: dict[str, float], n, d):
        """Predicted loss at model size(s) ``n`` and data quantity(ies) ``d`` (numbers or numpy arrays)."""
        c = coefficients
        value = c["A"] / n ** c["alpha"] + c["B"] / d ** c["beta"]
        return value + c["E"] if "E" in self.coefficients else value


FORMS: dict[str, LawForm] = {
    "chinchilla": LawForm("chinchilla", ("E", "A", "alpha", "B", "beta"), "E + A / N^alpha + B / D^beta"),
    "power": LawForm("power", ("A", "alpha", "B", "beta"), "A / N^alpha + B / D^beta"),
}


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
    """

    method: str
    setting: dict[str, Any]
    form: str
    coefficients: dict[str, float]
    range: dict[str, list[float]] = field(default_factory=dict)
    quality: dict[str, float] = field(default_factory=dict)
    flops_per_example_per_param: float | None = None
    hparams: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``lora(rank=16)``."""
        return setting_label(self.method, self.setting)

    def predict(self, n, d):
        """Predicted held-out loss at ``n`` non-embedding parameters and ``d`` data (the file's unit)."""
        return FORMS[self.form].predict(self.coefficients, n, d)

    def extrapolation(self, n: float, d: float, factor: float = EXTRAPOLATION_FACTOR) -> str | None:
        """Why ``(n, d)`` lies far outside the fitted range (None when it is within ``factor`` of it)."""
        out = []
        for key, value in (("N", n), ("D", d)):
            lo, hi = self.range.get(key, (0.0, math.inf))
            # (1e-5: the file keeps 6 significant digits, so a fitted run sits on the rounded edge)
            if value < lo / factor * (1 - 1e-5) or value > hi * factor * (1 + 1e-5):
                out.append(f"{key}={value:.3g} is outside the fitted {key} range [{lo:.3g}, {hi:.3g}]")
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

    def to_dict(self) -> dict[str, Any]:
        """The file's mapping (what :func:`save_laws` writes)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": FILE_KIND,
            "data_unit": self.data_unit,
            "created": self.created,
            "lightning_embed_version": self.lightning_embed_version,
            "provenance": self.provenance,
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
    path.write_text(header + body)
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
            f"{SCHEMA_VERSION}. Refit it with `lightning-embed laws fit RUNS -o {Path(source).name}`."
        )
    problems: list[str] = []
    unit = data.get("data_unit", "examples")
    if unit not in ("examples", "tokens"):
        problems.append(f"data_unit must be 'examples' or 'tokens', not {unit!r}")
    raw_laws = data.get("laws")
    if not isinstance(raw_laws, list):
        problems.append("'laws' must be a list")
        raw_laws = []
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
        rng = raw.get("range") or {}
        laws.append(Law(
            method=raw["method"], setting=dict(raw.get("setting") or {}), form=form,
            coefficients={c: float(coefficients[c]) for c in FORMS[form].coefficients},
            range={k: [float(v[0]), float(v[1])] for k, v in rng.items() if isinstance(v, list) and len(v) == 2},
            quality=dict(raw.get("quality") or {}),
            flops_per_example_per_param=raw.get("flops_per_example_per_param"),
            hparams=dict(raw.get("hparams") or {}),
        ))
    if problems:
        raise UserError(f"{source}: " + "; ".join(problems) + ".")
    if not laws:
        raise UserError(f"{source} holds no laws; refit with `lightning-embed laws fit RUNS -o LAWS.yaml`.")
    return LawsFile(
        laws=laws, data_unit=unit, provenance=dict(data.get("provenance") or {}),
        skipped=list(data.get("skipped") or []), created=str(data.get("created", "")),
        lightning_embed_version=str(data.get("lightning_embed_version", "")),
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
