"""Where a sweep puts its points: method settings from the strategies, focus on predicted optima, seeds.

``sweep plan`` builds its grid with these helpers:

- :func:`method_settings`: the law settings to try for each method, from the keys its tuning strategy
  declares (:attr:`lightning_embed.strategy.TuningStrategy.setting_defaults`: LoRA's ``rank``, freezing's
  ``share``) and the values given per key, so a third-party strategy is swept with no edit here.
- :func:`focus`: with a fitted laws file, keep for each budget and method setting only the model sizes
  nearest the size the law predicts best (the iso-FLOP minimum), ``k`` on each side of it.
- :func:`seed_order`: which points get repeated with extra seeds first: the predicted optimum (or the
  middle size) of each budget and method setting, spread over budgets and methods, then neighbours.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lightning_embed.recipe.laws import LawsFile, setting_label


def parse_setting_values(items: Sequence[str]) -> tuple[dict[str, list[Any]], list[str]]:
    """``["rank=8,32", "final_norm=true"]`` -> ``{"rank": [8, 32], "final_norm": [True]}``, and problems."""
    out: dict[str, list[Any]] = {}
    problems = []
    for item in items:
        key, sep, values = str(item).partition("=")
        parsed = [_scalar(v.strip()) for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not parsed:
            problems.append(f"setting {item!r} is not KEY=VALUE[,VALUE...] (e.g. rank=8,32)")
            continue
        out[key.strip()] = parsed
    return out, problems


def _scalar(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def method_settings(methods: Sequence[str], values: dict[str, list[Any]]) -> tuple[list[tuple[str, dict]], list[str]]:
    """Every ``(method, setting)`` to sweep: per method, the product of its setting keys' values.

    Each method's strategy names its setting keys and their default values (``setting_defaults``);
    ``values`` overrides a key for every method that has it. A strategy with no keys gives one setting,
    ``{}``.

    Returns:
        The settings, and problems (an unknown method, a value no method uses, a value the strategy
        rejects), one sentence each.
    """
    from lightning_embed.strategy import StrategyError, build_strategy, strategy_class

    out: list[tuple[str, dict]] = []
    problems: list[str] = []
    used: set[str] = set()
    keys_of: dict[str, list[str]] = {}
    for method in methods:
        try:
            cls = strategy_class(method)
        except StrategyError as err:
            problems.append(str(err).rstrip("."))
            continue
        keys = list(cls.setting_defaults)
        keys_of[method] = keys
        used.update(keys)
        grid = [values.get(k) or list(cls.setting_defaults[k]) for k in keys]
        for combo in itertools.product(*grid):
            setting = dict(zip(keys, combo))
            try:  # the strategy's own checks, before any config is written
                build_strategy(cls.tuning_spec(setting))
            except StrategyError as err:
                problems.append(f"{setting_label(method, setting)}: {str(err).rstrip('.')}")
                continue
            out.append((method, setting))
    unused = sorted(set(values) - used)
    if unused and keys_of:
        known = "; ".join(f"{m}: {', '.join(k) or 'none'}" for m, k in keys_of.items())
        problems.append(f"setting key(s) {', '.join(unused)} belong to none of the methods (their keys: {known})")
    return out, problems


@dataclass
class GridPoint:
    """A grid point before it is written: budget, model (a catalogue entry), method setting, examples."""

    budget: float
    model: Any
    method: str
    setting: dict[str, Any]
    examples: int
    loss: float | None = None

    @property
    def group(self) -> tuple:
        return (self.budget, self.method, tuple(sorted(self.setting.items())))


def predict(candidates: list[GridPoint], laws: LawsFile, tokens_per_example: float) -> None:
    """Fills each candidate's ``loss`` with its method setting's law (left None where there is none)."""
    by_key = {(law.method, tuple(sorted(law.setting.items()))): law for law in laws.laws}
    per_example = laws.provenance.get("tokens_per_example") or tokens_per_example
    for c in candidates:
        law = by_key.get((c.method, tuple(sorted(c.setting.items()))))
        if law is not None:
            data = float(c.examples) if laws.data_unit == "examples" else c.examples * per_example
            c.loss = float(law.predict(c.model.counts.non_embedding, data))


def _groups(candidates: list[GridPoint]) -> dict[tuple, list[GridPoint]]:
    groups: dict[tuple, list[GridPoint]] = {}
    for c in candidates:
        groups.setdefault(c.group, []).append(c)
    for members in groups.values():
        members.sort(key=lambda c: c.model.counts.non_embedding)
    return groups


def _centre(members: list[GridPoint]) -> int:
    """Index of the predicted best size of a group (by N), or of its middle size without a law."""
    losses = [c.loss for c in members]
    if all(v is not None for v in losses):
        return min(range(len(members)), key=lambda i: losses[i])
    return (len(members) - 1) // 2


def focus(candidates: list[GridPoint], k: int) -> tuple[list[GridPoint], list[str]]:
    """Keeps, per budget and method setting, the predicted best size and ``k`` sizes on each side of it.

    Candidates need ``loss`` (:func:`predict`); a group without a law keeps every size.

    Returns:
        The kept candidates (input order) and a reason for each one left out.
    """
    keep: set[int] = set()
    dropped = []
    for members in _groups(candidates).values():
        if any(c.loss is None for c in members):
            keep.update(id(c) for c in members)
            continue
        best = _centre(members)
        for i, c in enumerate(members):
            if abs(i - best) <= k:
                keep.add(id(c))
            else:
                dropped.append(f"{setting_label(c.method, c.setting)} on {c.model.name} at {c.budget:.3g} FLOP: "
                               f"more than {k} size(s) from the predicted optimum {members[best].model.name} (focus)")
    return [c for c in candidates if id(c) in keep], dropped


def seed_order(candidates: list[GridPoint]) -> list[GridPoint]:
    """Candidates in the order they get extra seeds: group centres first, spread over budgets and methods.

    A group is one budget and method setting; its centre is the predicted optimum when the candidates
    carry predictions, else the middle size, followed by its nearer neighbours. The first round takes
    each group's centre, walking budgets and method settings diagonally (the first setting at the first
    budget, the second at the second, ...), so the first few repeats cover different budgets *and*
    methods; later rounds take the neighbours the same way.
    """
    groups = _groups(candidates)
    budgets = sorted({g[0] for g in groups})
    settings = list(dict.fromkeys(g[1:] for g in groups))
    ranked: list[tuple[tuple[int, int], list[GridPoint]]] = []
    for g, members in groups.items():
        centre = _centre(members)
        order = sorted(range(len(members)), key=lambda i: (abs(i - centre), i))
        b, m = budgets.index(g[0]), settings.index(g[1:])
        ranked.append((((m - b) % len(settings), b), [members[i] for i in order]))
    ranked.sort(key=lambda item: item[0])
    out = []
    for depth in range(max((len(r) for _, r in ranked), default=0)):
        out += [r[depth] for _, r in ranked if depth < len(r)]
    return out
