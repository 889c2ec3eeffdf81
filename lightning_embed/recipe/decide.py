"""How sure the recipe is: intervals, the chance the winner really wins, ties, data repeats and limits.

The laws file carries bootstrap refits of every law (runs resampled with replacement, refitted; the
sample index is shared by every law of the file, so sample ``s`` of two laws comes from one resample).
For each candidate the recipe evaluates every refit at the candidate's (N, D):

- the winner's interval is the central ``level`` (80%) range of its refits' predictions;
- for every other candidate, P(winner better) is the share of refits in which the winner's predicted loss
  is lower than that candidate's;
- when some candidate's P is below :data:`TIE_PROBABILITY` the laws cannot separate them, and when its
  predicted loss is within the runs' seed noise of the winner's (the laws file's ``provenance.seed_noise``,
  sd of log L across seeds) no run could tell them apart: either way the recipe calls it a tie and lists the
  tied options cheapest to run first (fewest non-embedding parameters, then fewest trained ones: at an
  equal FLOP budget the smaller model needs less memory and less wall-clock per FLOP).

Two limits rank before the loss. A candidate whose budget buys more examples than ``max_passes`` passes
over the training source "repeats data" and ranks after every candidate that does not (the laws were
fitted on fresh data; repeated data gains less). A winner more than
:data:`~lightning_embed.recipe.laws.EXTRAPOLATION_FACTOR` outside the fitted N, D or FLOP range, or on a
model whose L0 was not measured, is refused unless the caller accepts extrapolation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lightning_embed.errors import UserError
from lightning_embed.recipe.laws import EXTRAPOLATION_FACTOR, LawsFile

#: Below this P(winner better), the winner and that candidate are a tie.
TIE_PROBABILITY = 0.8
#: Alternatives with P(winner better) below this are shown as close.
CLOSE_PROBABILITY = 0.95
#: The central share of bootstrap predictions reported as the winner's interval.
INTERVAL_LEVEL = 0.8
DEFAULT_MAX_PASSES = 1.5


def mark_repeats(candidates: list, available: int | None, max_passes: float) -> None:
    """Sets ``repeats`` (passes over the data) on candidates that buy more than ``max_passes`` passes."""
    if not available:
        return
    for c in candidates:
        if c.loss is not None and c.examples > available * max_passes:
            c.repeats = c.examples / available


def rank_key(c) -> tuple:
    """Fresh-data candidates first, then by predicted loss."""
    return (c.repeats is not None, c.loss)


def add_uncertainty(candidates: list, winner, level: float = INTERVAL_LEVEL) -> None:
    """Fills ``interval`` of every candidate and ``p_winner_better`` of every other one (needs samples)."""
    samples = {}
    for c in candidates:
        if c.loss is None or not c.law.samples:
            continue
        samples[id(c)] = np.asarray(c.law.predict_samples(c.model.counts.non_embedding, c.data), dtype=float)
        lo, hi = np.quantile(samples[id(c)], [(1 - level) / 2, (1 + level) / 2])
        c.interval = (float(lo), float(hi))
    mine = samples.get(id(winner))
    if mine is None:
        return
    for c in candidates:
        other = samples.get(id(c))
        if c is winner or other is None or len(other) != len(mine):
            continue
        # Ties in a sample (both clipped at the same L0 or floor) count half: neither is better.
        c.p_winner_better = float(np.mean((mine < other) + 0.5 * (mine == other)))


def tied(candidates: list, winner, noise_log: float | None = None) -> list:
    """The winner and every candidate of its class it cannot be told apart from, cheapest first.

    Args:
        candidates: the ranked candidates (with ``p_winner_better`` from :func:`add_uncertainty`).
        winner: the first of them.
        noise_log: the seed noise of the runs (sd of log L); a predicted difference below it is a tie.
    """
    def close(c) -> bool:
        if c.p_winner_better is not None and c.p_winner_better < TIE_PROBABILITY:
            return True
        return bool(noise_log) and c.loss is not None and abs(np.log(c.loss / winner.loss)) < noise_log

    group = [winner] + [c for c in candidates if c is not winner and c.loss is not None and close(c)
                        and (c.repeats is None) == (winner.repeats is None)]
    if len(group) < 2:
        return []
    return sorted(group, key=lambda c: (c.model.counts.non_embedding, c.trainable or 0, c.loss))


def seed_noise_log(laws: LawsFile) -> float | None:
    """The runs' seed noise (sd of log L) the laws file recorded, when its runs repeated seeds."""
    value = (laws.provenance.get("seed_noise") or {}).get("sd_log")
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def fitted_ranges(laws: LawsFile, data_unit: str) -> str:
    """``N 1.42e+07-1.06e+08, D 208-5.57e+03 examples, FLOP 1e+12-1e+14`` over every law of the file."""
    parts = []
    for key, name in (("N", "N"), ("D", "D"), ("flops", "FLOP")):
        spans = [law.range[key] for law in laws.laws if key in law.range]
        if spans:
            unit = f" {data_unit}" if key == "D" else ""
            parts.append(f"{name} {min(s[0] for s in spans):.3g}-{max(s[1] for s in spans):.3g}{unit}")
    return ", ".join(parts)


def refuse(winner, budget: float, laws: LawsFile) -> UserError:
    """The one-line refusal of an extrapolated winner."""
    return UserError(
        f"recipe: the best candidate, {winner.law.label} on {winner.model.name} "
        f"(N={winner.model.counts.non_embedding:.3g}, D={winner.data:.3g} {laws.data_unit}, {budget:.3g} FLOP), "
        f"lies more than {EXTRAPOLATION_FACTOR:g}x outside what its law was fitted on: {winner.extrapolation}. "
        "Fit laws on runs that cover it, or pass --extrapolate to answer anyway."
    )


def caveat(winner, laws: LawsFile) -> str:
    """The caveat written at the top of an extrapolated winner's config."""
    ranges = fitted_ranges(laws, laws.data_unit)
    return (f"CAVEAT: extrapolated. {winner.extrapolation} (the laws were fitted on {ranges})."
            "\nThe predicted loss and this choice are guesses outside the evidence of the laws.")


def uncertainty_dict(c) -> dict[str, Any]:
    """The JSON fields of one candidate's uncertainty and limits."""
    return {"interval": list(c.interval) if c.interval else None, "interval_level": INTERVAL_LEVEL,
            "p_winner_better": c.p_winner_better, "extrapolated": c.extrapolation is not None,
            "repeats_data": c.repeats}
