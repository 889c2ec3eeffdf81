"""Would the laws have chosen well? (``lightning-embed laws validate``)

Two checks on run records, for one or more law forms:

- **Fit**: leave-one-out error of log L (every run predicted by the fit without it: RMSE and the largest
  error) and the ranking accuracy: the share of pairs of runs at the same budget whose order the
  leave-one-out predictions get right.
- **Decisions**: each budget in turn is left out, the laws are refitted on the other budgets, and the run
  with the lowest predicted loss among the runs measured at that budget is "picked". Regret is how much
  worse its measured loss is than the best measured run at that budget (relative); the model size (and
  the method) hit when the pick has the best run's. The error of those predictions is reported too (at
  the largest budget it is extrapolation in FLOP, what the recipe does). This is the recipe's job, scored on
  choices that can be checked: it never picks a point that was not run.

The seed noise (standard deviation of the loss across runs identical but for the seed, pooled) says how
far any of this can be trusted; with one seed per point it is unknown, and said so.
"""

from __future__ import annotations

import json as jsonlib
import math
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from lightning_embed.errors import UserError
from lightning_embed.recipe.laws import FORMS, DataUnit, FormName, setting_label
from lightning_embed.recipe.records import Observation, group_key, read_observations


def _budget(o: Observation) -> float | None:
    # The planned budget when recorded; else the FLOP spent, to 2 significant digits (same plan, same key).
    if o.budget:
        return float(o.budget)
    return float(f"{o.flops:.2g}") if o.flops else None


def seed_noise(observations: list[Observation]) -> dict[str, Any]:
    """Pooled standard deviation of the loss (and of log L) across runs that differ only in the seed."""
    groups: dict[tuple, list[Observation]] = {}
    for o in observations:
        # Same planned budget, same point: a seed changes the data order, so the run stops at its budget
        # after a few more or fewer examples (real token counts); without a planned budget, same examples.
        where = ("budget", float(o.budget)) if o.budget else ("examples", o.data("examples"))
        groups.setdefault((group_key(o.method, o.setting), o.n, where), []).append(o)
    repeated = [g for g in groups.values() if len(g) > 1 and len({o.seed for o in g}) == len(g)]
    if not repeated:
        return {"points": 0, "sd": None, "sd_log": None, "note": "unknown: one seed per point"}
    dof = sum(len(g) - 1 for g in repeated)
    var = sum(float(np.var([o.loss for o in g], ddof=1)) * (len(g) - 1) for g in repeated) / dof
    var_log = sum(float(np.var(np.log([o.loss for o in g]), ddof=1)) * (len(g) - 1) for g in repeated) / dof
    return {"points": len(repeated), "sd": math.sqrt(var), "sd_log": math.sqrt(var_log), "note": None}


def fit_quality(laws: list, observations: list[Observation]) -> dict[str, Any]:
    """Pooled leave-one-out RMSE and max of log L, and the pairwise ranking accuracy within budgets."""
    predicted: dict[int, float] = {}
    for law in laws:
        mine = [o for o in observations if group_key(o.method, o.setting) == group_key(law.method, law.setting)]
        for o, r in zip(mine, law.loo_residuals):
            predicted[id(o)] = o.loss / math.exp(r)
    resid = np.array([math.log(o.loss / predicted[id(o)]) for o in observations if id(o) in predicted])
    right = total = 0
    for budget in {_budget(o) for o in observations}:
        at = [o for o in observations if _budget(o) == budget and id(o) in predicted]
        for a, b in combinations(at, 2):
            if a.loss != b.loss:
                total += 1
                right += (a.loss < b.loss) == (predicted[id(a)] < predicted[id(b)])
    return {"runs": int(len(resid)), "loo_rmse_log": float(np.sqrt(np.mean(resid**2))),
            "loo_max_abs_log": float(np.max(np.abs(resid))), "ranking_pairs": total,
            "ranking_accuracy": right / total if total else None}


def decisions(observations: list[Observation], *, form: str, initial, data_unit: str, min_runs: int) -> dict[str, Any]:
    """Leave each budget out, refit, pick among its measured runs: regret and hit rates."""
    from lightning_embed.recipe.fit import fit_laws

    rows = []
    for budget in sorted({_budget(o) for o in observations}):
        held = [o for o in observations if _budget(o) == budget]
        rest = [o for o in observations if _budget(o) != budget]
        try:
            laws, _, _ = fit_laws(rest, form=form, data_unit=data_unit, min_runs=min_runs, initial=initial,
                                  leave_one_out=False)  # type: ignore[arg-type]
        except UserError as err:  # e.g. a model size whose only other run was at this budget
            rows.append({"budget": budget, "runs": len(held), "note": f"no fit without this budget: {err}"})
            continue
        by_key = {group_key(law.method, law.setting): law for law in laws}
        scored = [(float(by_key[group_key(o.method, o.setting)].predict(o.n, o.data(data_unit))), o)
                  for o in held if group_key(o.method, o.setting) in by_key]
        if not scored:
            rows.append({"budget": budget, "runs": len(held), "note": "no method at this budget has a law without it"})
            continue
        pick = min(scored, key=lambda x: x[0])[1]
        best = min((o for _, o in scored), key=lambda o: o.loss)
        errors = np.array([math.log(o.loss / predicted) for predicted, o in scored])
        rows.append({
            "budget": budget, "runs": len(scored), "picked": _describe(pick), "best": _describe(best),
            "rmse_log": float(np.sqrt(np.mean(errors**2))), "max_abs_log": float(np.max(np.abs(errors))),
            "picked_predicted": min(x[0] for x in scored), "regret": pick.loss / best.loss - 1.0,
            "size_hit": pick.n == best.n, "method_hit": group_key(pick.method, pick.setting)
            == group_key(best.method, best.setting),
        })
    scored_rows = [r for r in rows if "regret" in r]
    regrets = [r["regret"] for r in scored_rows]
    top = scored_rows[-1] if scored_rows and scored_rows[-1]["budget"] == rows[-1]["budget"] else None
    return {
        "budgets": rows,
        # Fitted on the smaller budgets only: the error of extrapolating in FLOP, as the recipe does.
        "largest_budget_rmse_log": top["rmse_log"] if top else None,
        "mean_regret": float(np.mean(regrets)) if regrets else None,
        "max_regret": float(np.max(regrets)) if regrets else None,
        "size_hits": sum(r["size_hit"] for r in scored_rows), "method_hits": sum(r["method_hit"] for r in scored_rows),
        "scored_budgets": len(scored_rows),
    }


def _describe(o: Observation) -> dict[str, Any]:
    return {"label": setting_label(o.method, o.setting), "N": o.n, "num_layers": o.num_layers, "loss": o.loss,
            "examples": o.examples}


def _check_spread(observations: list[Observation]) -> None:
    sizes = {o.n for o in observations}
    if len(sizes) < 2:
        raise UserError(f"laws validate: every run uses one model size (N={next(iter(sizes)):,.0f}); choosing a "
                        "model size needs runs of two sizes or more.")
    budgets = {_budget(o) for o in observations}
    if None in budgets:
        raise UserError("laws validate: some runs record neither a budget nor FLOP; they cannot be grouped by budget.")
    if len(budgets) < 2:
        raise UserError(f"laws validate: every run is at one budget ({next(iter(budgets)):.3g} FLOP); leaving a "
                        "budget out needs runs at two budgets or more.")


def validate_forms(observations: list[Observation], forms: list[str], *, initial, data_unit: DataUnit = "examples",
                   min_runs: int = 5) -> dict[str, Any]:
    """Fit quality and decision check of every form on the same runs (what ``laws validate`` reports)."""
    from lightning_embed.recipe.fit import fit_laws

    _check_spread(observations)
    out: dict[str, Any] = {"runs": len(observations), "seed_noise": seed_noise(observations), "forms": {}}
    for form in forms:
        laws, skipped, _ = fit_laws(observations, form=form, data_unit=data_unit, min_runs=min_runs,  # type: ignore
                                    initial=initial)
        if not laws:
            raise UserError(f"laws validate: the runs cannot support a {form} law for any method setting: "
                            + "; ".join(s["reason"] for s in skipped) + ".")
        out["forms"][form] = {"formula": FORMS[form].formula, "fit": fit_quality(laws, observations),
                              "decisions": decisions(observations, form=form, initial=initial, data_unit=data_unit,
                                                     min_runs=min_runs)}
    return out


def _render(report: dict[str, Any]) -> None:
    from rich import box
    from rich.table import Table

    from lightning_embed.recipe.solve import wide_console

    console = wide_console()
    table = Table(title=f"Leave-one-out fit and leave-one-budget-out decisions ({report['runs']} runs)",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("form", "LOO RMSE", "LOO max", "ranking", "mean regret", "max regret", "size hits", "method hits",
                "top budget RMSE"):
        table.add_column(col, justify="left" if col == "form" else "right", no_wrap=True)
    for form, r in report["forms"].items():
        f, d = r["fit"], r["decisions"]
        n = d["scored_budgets"]
        table.add_row(form, f"{f['loo_rmse_log']:.4f}", f"{f['loo_max_abs_log']:.4f}",
                      "-" if f["ranking_accuracy"] is None else f"{100 * f['ranking_accuracy']:.0f}%",
                      "-" if d["mean_regret"] is None else f"{100 * d['mean_regret']:.2f}%",
                      "-" if d["max_regret"] is None else f"{100 * d['max_regret']:.2f}%",
                      f"{d['size_hits']}/{n}", f"{d['method_hits']}/{n}",
                      "-" if d.get("largest_budget_rmse_log") is None else f"{d['largest_budget_rmse_log']:.4f}")
    console.print(table)
    console.print("LOO: log L of each run predicted without it. Ranking: pairs of runs at one budget ordered "
                  "right. Regret: the picked run's loss over the best measured run's, at a budget left out. "
                  "Top budget RMSE: log L of the runs at the largest budget, predicted by the fit on the others.")
    for form, r in report["forms"].items():
        for row in r["decisions"]["budgets"]:
            if "regret" not in row:
                console.print(f"{form} {row['budget']:.3g}: {row['note']}")
                continue
            p, b = row["picked"], row["best"]
            console.print(f"{form} {row['budget']:.3g} FLOP: picked {p['label']} N={p['N']:.3g} ({p['loss']:.4f}), "
                          f"best {b['label']} N={b['N']:.3g} ({b['loss']:.4f}): regret {100 * row['regret']:.2f}%; "
                          f"its {row['runs']} runs predicted to RMSE {row['rmse_log']:.4f} (log L)", highlight=False)
    noise = report["seed_noise"]
    measured = None if noise["sd"] is None else (
        f"sd {noise['sd']:.4f} (log L: {noise['sd_log']:.4f}) over {noise['points']} points")
    console.print("seed noise: " + (measured or noise["note"]))


def laws_validate(
    runs: list[Path],
    initial_losses: Path | None = None,
    forms: list[FormName] | None = None,
    data_unit: DataUnit = "examples",
    min_runs: int = 5,
    json: bool = False,
    output: Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Checks whether laws fitted on the runs would have chosen well, and how well each form predicts.

    Leaves each budget out in turn, refits, picks among the runs measured at that budget by predicted loss
    and reports the regret against the best measured run (mean, max, per budget) and how often the model
    size and the method were right; reports each form's leave-one-out error of log L and the share of
    run pairs within a budget it orders right; and the seed noise (runs identical but for the seed).

    Args:
        runs: run-record files (runs at two budgets or more, of two model sizes or more).
        initial_losses: L0 per model from ``lightning-embed laws baseline`` (for the anchored form, when the
            runs do not record ``initial_val_loss``).
        forms: the law forms to compare (default: the form ``laws fit`` would choose).
        data_unit: what D counts: ``examples`` or ``tokens``.
        min_runs: fewest runs a method setting needs to be fitted.
        json: print the report as JSON.
        output: also write the report as JSON to this file.
        overwrite: replace an existing ``output`` (without it, an existing file is refused before any refit).

    Returns:
        The report: per form, ``fit`` and ``decisions``; and ``seed_noise``.

    Raises:
        UserError: missing files, runs of one model size, every run at one budget, an unknown form, an
            existing ``output`` without ``overwrite``.
    """
    from lightning_embed.recipe.baseline import initial_loss_table, read_initial_losses
    from lightning_embed.recipe.fit import default_form

    problems = [f"run-record file {str(p)!r} does not exist" for p in runs if not Path(p).is_file()]
    if not runs:
        problems.append("give at least one run-record file")
    problems += [f"unknown form {f!r} (known: {', '.join(FORMS)})" for f in forms or [] if f not in FORMS]
    if initial_losses is not None and not Path(initial_losses).is_file():
        problems.append(f"initial-loss file {str(initial_losses)!r} does not exist")
    if output is not None and (Path(output).is_dir() or not Path(output).parent.exists()):
        problems.append(f"output {str(output)!r} is a directory or its folder does not exist")
    if problems:
        raise UserError("laws validate: " + "; ".join(problems) + ".")
    if output is not None:
        from lightning_embed.cli.outputs import check_output

        check_output(output, "laws validate -o", overwrite=overwrite)
    observations, _ = read_observations([Path(p) for p in runs])
    observations = [o for o in observations if math.isfinite(o.loss) and o.loss > 0]
    if not observations:
        raise UserError("laws validate: no completed run with a finite val_loss in the given files.")
    initial = initial_loss_table(observations, read_initial_losses(initial_losses) if initial_losses else [])
    if not forms:
        forms = [default_form(observations, initial)]
    report = validate_forms(observations, list(forms), initial=initial, data_unit=data_unit, min_runs=min_runs)
    report["runs_files"] = [str(p) for p in runs]
    if output is not None:
        from datetime import datetime, timezone

        from lightning_embed.recipe.baseline import cpu_name

        report["cpu"] = cpu_name()
        report["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        from lightning_embed.cli.outputs import write_text_atomically

        write_text_atomically(output, jsonlib.dumps(report, indent=2) + "\n")
    if json:
        print(jsonlib.dumps(report, indent=2))
    else:
        _render(report)
    return report
