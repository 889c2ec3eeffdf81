"""Checking laws against runs: the loss each law predicted for a run beside the loss the run achieved.

``lightning-embed laws check laws.yaml held_out_runs.jsonl`` is how a laws file earns trust: plan a run at
a budget the laws were not fitted on (``recipe --budget C --write-config``), fit it, and compare. The
same command on the fitted runs themselves shows the in-sample residuals run by run.
"""

from __future__ import annotations

import json as jsonlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from lightning_embed.errors import UserError
from lightning_embed.recipe.decide import INTERVAL_LEVEL
from lightning_embed.recipe.laws import LawsFile, load_laws, setting_label
from lightning_embed.recipe.records import Observation, group_key, read_observations


@dataclass
class Check:
    """One run against its law's prediction."""

    run: str
    law: str
    n: float
    data: float
    flops: float | None
    budget: float | None
    predicted: float
    achieved: float
    extrapolation: str | None
    #: The central 80% of the law's bootstrap refits' predictions (None without samples).
    interval: tuple[float, float] | None = None

    @property
    def inside(self) -> bool | None:
        """Whether the achieved loss lies inside the interval."""
        return None if self.interval is None else self.interval[0] <= self.achieved <= self.interval[1]

    @property
    def error(self) -> float:
        """Relative error of the prediction, (predicted - achieved) / achieved."""
        return (self.predicted - self.achieved) / self.achieved


@dataclass
class CheckReport:
    """Every checked run, the runs no law covers, and summary errors."""

    checks: list[Check]
    unmatched: list[str]

    @property
    def mean_abs_error(self) -> float:
        """Mean of |relative error| over the checked runs."""
        return sum(abs(c.error) for c in self.checks) / len(self.checks)

    @property
    def rmse_log(self) -> float:
        """Root mean square of log(predicted / achieved): comparable with the laws' RMSE of log L."""
        return math.sqrt(sum(math.log(c.predicted / c.achieved) ** 2 for c in self.checks) / len(self.checks))

    def to_dict(self) -> dict:
        """Plain data for ``--json``."""
        inside = [c.inside for c in self.checks if c.inside is not None]
        return {"checks": [{**asdict(c), "error": c.error, "inside_interval": c.inside} for c in self.checks],
                "unmatched": self.unmatched, "mean_abs_error": self.mean_abs_error, "rmse_log": self.rmse_log,
                "inside_interval": sum(inside) if inside else None, "with_interval": len(inside)}


def check_runs(laws: LawsFile, observations: list[Observation]) -> CheckReport:
    """Predicts every run that has a law of its method setting; lists the others in ``unmatched``."""
    by_key = {group_key(law.method, law.setting): law for law in laws.laws}
    checks, unmatched = [], []
    for obs in observations:
        law = by_key.get(group_key(obs.method, obs.setting))
        data = obs.data(laws.data_unit)
        label = setting_label(obs.method, obs.setting)
        if law is None or not data or not obs.n or not (math.isfinite(obs.loss) and obs.loss > 0):
            unmatched.append(f"{obs.source}: {label}" + (" has no law in the file" if law is None else
                                                         " lacks N, D or a finite loss"))
            continue
        interval = None
        if law.samples:
            import numpy as np

            lo, hi = np.quantile(law.predict_samples(obs.n, data), [(1 - INTERVAL_LEVEL) / 2, (1 + INTERVAL_LEVEL) / 2])
            interval = (float(lo), float(hi))
        checks.append(Check(run=obs.source, law=law.label, n=obs.n, data=data, flops=obs.flops,
                            budget=obs.budget, predicted=float(law.predict(obs.n, data)), achieved=obs.loss,
                            extrapolation=law.extrapolation(obs.n, data, factor=1.0, flops=obs.flops),
                            interval=interval))
    return CheckReport(checks, unmatched)


def _render(report: CheckReport, data_unit: str) -> None:
    from rich import box
    from rich.table import Table

    from lightning_embed.recipe.solve import si, wide_console

    console = wide_console()
    table = Table(title="Predicted against achieved held-out loss", box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("run", "law", "N", data_unit, "FLOP", "predicted", "80% int.", "achieved", "error", "note"):
        table.add_column(name, justify="left" if name in ("run", "law", "note") else "right", no_wrap=True)
    for c in report.checks:
        run = c.run.replace(" (run ", " (").replace("record ", "#")
        table.add_row(run, c.law, si(c.n), si(c.data), f"{c.flops:.3g}" if c.flops else "-",
                      f"{c.predicted:.4f}", f"{c.interval[0]:.3f}-{c.interval[1]:.3f}" if c.interval else "-",
                      f"{c.achieved:.4f}", f"{100 * c.error:+.1f}%",
                      ", ".join(x for x in ("outside the fitted range" if c.extrapolation else "",
                                            "outside the interval" if c.inside is False else "") if x))
    console.print(table)
    inside = [c.inside for c in report.checks if c.inside is not None]
    covered = f"; {sum(inside)} of {len(inside)} inside the 80% interval" if inside else ""
    console.print(f"{len(report.checks)} run(s): mean |error| {100 * report.mean_abs_error:.2f}%, "
                  f"RMSE of log L {report.rmse_log:.4f}{covered}.", highlight=False)
    for c in report.checks:
        if c.extrapolation:
            console.print(f"{c.run}: {c.extrapolation}", highlight=False)
    for line in report.unmatched:
        console.print(f"[yellow]not checked[/]: {line}")


def laws_check(laws: Path, runs: list[Path], json: bool = False) -> CheckReport:
    """Compares the loss the laws predict for runs with the loss the runs achieved.

    Give runs the laws were not fitted on (for example a run of ``recipe --budget C --write-config`` at a
    new budget) to measure how well the laws predict; each run is predicted at its own N and data.

    Args:
        laws: laws file from ``lightning-embed laws fit``.
        runs: run-record files (JSON lines) of the runs to check.
        json: print the report as JSON instead of a table.

    Returns:
        The report: one entry per run, with predicted and achieved loss and the relative error.

    Raises:
        UserError: missing files, or no completed run that any law covers.
    """
    problems = []
    if not Path(laws).is_file():
        problems.append(f"laws file {str(laws)!r} does not exist")
    if not runs:
        problems.append("give at least one run-record file")
    problems += [f"run-record file {str(p)!r} does not exist" for p in runs or [] if not Path(p).is_file()]
    if problems:
        raise UserError("laws check: " + "; ".join(problems) + ".")
    law_file = load_laws(laws)
    observations, _ = read_observations([Path(p) for p in runs])
    report = check_runs(law_file, observations)
    if not report.checks:
        raise UserError(f"laws check: no completed run in {', '.join(str(p) for p in runs)} has a law in {laws} "
                        f"(laws for: {', '.join(law.label for law in law_file.laws)}).")
    if json:
        print(jsonlib.dumps(report.to_dict(), indent=2))
    else:
        _render(report, law_file.data_unit)
    return report
