"""Plots of fitted laws (``lightning-embed laws plot``): the optimal frontier and iso-FLOP curves.

- **Frontier** (the study's Figure 1): loss against training FLOP. Each method setting's law gives its
  compute-optimal loss, min over N of L(N, D(C, N)), drawn dashed; the best of them at each budget is the
  optimal frontier (solid black). Runs are drawn as dots, the best run of each method at each budget as X.
- **Iso-FLOP**: loss against model size at fixed budgets, one panel per method setting: the law's curve
  per budget and the runs at that budget. The minimum of each curve is the compute-optimal model size.

Curves need D(C, N), the examples a budget buys on a model of size N: C / (k N), with k the law's
``flops_per_example_per_param`` (the median of its runs' recorded FLOP / (examples x N)), so the plot uses
the runs' own accounting; without it, the paper formula at 78 tokens per example.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

import numpy as np

from lightning_embed.errors import UserError
from lightning_embed.recipe.laws import FORMS, Law, LawsFile, load_laws
from lightning_embed.recipe.records import Observation, group_key, read_observations

PlotKind = Literal["both", "frontier", "isoflop"]
_PAPER_K = {"full": 6 * 78, "freeze": 4 * 78}  # FLOP per example per parameter, a fallback (lora, bias ~ 4N)


def _k(law: Law) -> float:
    return law.flops_per_example_per_param or _PAPER_K.get(law.method, 4 * 78)


def _data(laws: LawsFile, law: Law, budget: np.ndarray, n: np.ndarray) -> np.ndarray:
    examples = budget / (_k(law) * n)
    if laws.data_unit == "tokens":
        return examples * (laws.provenance.get("tokens_per_example") or 78.0)
    return examples


def _n_grid(law: Law) -> np.ndarray:
    lo, hi = law.range.get("N", (1e6, 1e10))
    if law.initial is not None and FORMS[law.form].anchored:
        # L0 (and S) is unknown beyond the measured models: an anchored law is drawn only where it is known.
        lo, hi = law.initial.n[0], law.initial.n[-1]
        if law.scale is not None:
            lo, hi = max(lo, law.scale.n[0]), min(hi, law.scale.n[-1])
        return np.logspace(math.log10(lo), math.log10(hi), 200)
    return np.logspace(math.log10(lo / 3), math.log10(hi * 3), 200)


def optimal_loss(laws: LawsFile, law: Law, budgets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Compute-optimal loss and model size of a law at each budget (N searched over 1/3x..3x its range)."""
    n = _n_grid(law)
    loss = law.predict(n[None, :], _data(laws, law, budgets[:, None], n[None, :]))
    best = np.argmin(loss, axis=1)
    return loss[np.arange(len(budgets)), best], n[best]


def _budget_range(laws: LawsFile, obs: list[Observation]) -> tuple[float, float]:
    values = [o.flops or o.budget for o in obs if (o.flops or o.budget)]
    for law in laws.laws:
        values += list(law.range.get("flops", []))
    if not values:
        return 1e15, 1e19
    return min(values) / 2, max(values) * 2


def _frontier(ax, laws: LawsFile, obs: list[Observation], colors: dict[str, str]) -> None:
    lo, hi = _budget_range(laws, obs)
    budgets = np.logspace(math.log10(lo), math.log10(hi), 200)
    curves = []
    for law in laws.laws:
        loss, _ = optimal_loss(laws, law, budgets)
        curves.append(loss)
        ax.plot(budgets, loss, "--", color=colors[law.label], lw=1.5, label=f"{law.label} (law)")
        mine = [o for o in obs if group_key(o.method, o.setting) == group_key(law.method, law.setting)]
        if mine:
            flops = np.array([o.flops or o.budget or np.nan for o in mine])
            losses = np.array([o.loss for o in mine])
            ax.scatter(flops, losses, s=12, color=colors[law.label], alpha=0.35, lw=0)
            best: dict[float, float] = {}
            for o, f in zip(mine, flops):
                key = float(f"{o.budget or f:.3g}")  # group by budget: runs stop within a step of it
                best[key] = min(best.get(key, math.inf), o.loss)
            ax.scatter(list(best), list(best.values()), marker="x", s=45, color=colors[law.label])
    # Under the dashed law curves (zorder), so the method that forms the frontier stays visible.
    ax.plot(budgets, np.min(np.array(curves), axis=0), "-", color="black", lw=3, alpha=0.55, zorder=1,
            label="optimal frontier")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training FLOP")
    ax.set_ylabel("held-out contrastive loss")
    _plain_log_axes(ax)
    ax.set_title("Loss against compute: compute-optimal loss per method and the optimal frontier")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="upper right")


def _plain_log_axes(ax) -> None:
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    # Losses span about a decade: label 0.6, 0.7, ..., 2, 3 rather than only 10^0.
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 3, 4, 5, 6, 7, 8, 9)))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _isoflop_budgets(laws: LawsFile, obs: list[Observation], count: int = 4) -> list[float]:
    budgets = sorted({float(f"{o.budget:.3g}") for o in obs if o.budget})
    if budgets:
        if len(budgets) > 6:  # keep the plot readable: an even spread of at most six
            budgets = [budgets[i] for i in np.linspace(0, len(budgets) - 1, 6).round().astype(int)]
        return budgets
    lo, hi = _budget_range(laws, obs)
    return list(np.logspace(math.log10(lo * 2), math.log10(hi / 2), count))


def _isoflop(ax, laws: LawsFile, law: Law, obs: list[Observation], budgets: list[float]) -> None:
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    n = _n_grid(law)
    mine = [o for o in obs if group_key(o.method, o.setting) == group_key(law.method, law.setting)]
    for i, budget in enumerate(budgets):
        color = cmap(i / max(1, len(budgets) - 1) * 0.9)
        loss = law.predict(n, _data(laws, law, np.full_like(n, budget), n))
        ax.plot(n, loss, color=color, lw=1.5, label=f"{budget:.2g} FLOP")
        j = int(np.argmin(loss))
        ax.plot([n[j]], [loss[j]], "o", color=color, ms=5, mfc="white")
        at = [o for o in mine if o.budget and abs(math.log(o.budget / budget)) < 0.05]
        if at:
            ax.scatter([o.n for o in at], [o.loss for o in at], color=color, s=22, marker="x")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("held-out contrastive loss")
    _plain_log_axes(ax)
    ax.set_title(f"Iso-FLOP: {law.label}")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, title="budget (o = optimum)", title_fontsize=7)


def plot_laws(laws: LawsFile, observations: list[Observation], output: Path, kind: PlotKind = "both") -> Path:
    """Draws the plots of ``kind`` into one PNG file."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, works on headless machines
    import matplotlib.pyplot as plt

    palette = plt.get_cmap("tab10")
    colors = {law.label: palette(i % 10) for i, law in enumerate(laws.laws)}
    iso = kind in ("both", "isoflop")
    cols = min(3, len(laws.laws)) if iso else 1
    iso_rows = math.ceil(len(laws.laws) / cols) if iso else 0
    front_rows = 1 if kind in ("both", "frontier") else 0
    fig = plt.figure(figsize=(5.2 * max(cols, 2), 4.6 * (front_rows * 1.3 + iso_rows)))
    grid = fig.add_gridspec(front_rows + iso_rows, cols, height_ratios=[1.3] * front_rows + [1.0] * iso_rows)
    if front_rows:
        _frontier(fig.add_subplot(grid[0, :]), laws, observations, colors)
    if iso:
        budgets = _isoflop_budgets(laws, observations)
        for i, law in enumerate(laws.laws):
            _isoflop(fig.add_subplot(grid[front_rows + i // cols, i % cols]), laws, law, observations, budgets)
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")  # written whole, then renamed: never a half PNG
    try:
        fig.savefig(tmp, dpi=110, format="png")
        os.replace(tmp, output)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {output}: {err.strerror or err}.") from None
    finally:
        plt.close(fig)
    return output


def laws_plot(
    laws: Path,
    runs: list[Path] | None = None,
    output: Path = Path("laws.png"),
    kind: PlotKind = "both",
) -> Path:
    """Plots fitted laws: loss against FLOP with the optimal frontier, and iso-FLOP curves (PNG).

    Args:
        laws: laws file from ``lightning-embed laws fit``.
        runs: run-record files to draw as points (optional; the fitted runs are the natural choice).
        output: the PNG file to write.
        kind: ``frontier`` (loss against FLOP per method, the study's Figure 1), ``isoflop`` (loss against
            model size at fixed budgets, per method) or ``both``.

    Returns:
        The PNG written.

    Raises:
        UserError: bad arguments or unreadable files.
    """
    problems = []
    if not Path(laws).is_file():
        problems.append(f"laws file {str(laws)!r} does not exist")
    problems += [f"run-record file {str(p)!r} does not exist" for p in runs or [] if not Path(p).is_file()]
    if kind not in ("both", "frontier", "isoflop"):
        problems.append(f"kind must be both, frontier or isoflop, not {kind!r}")
    if Path(output).suffix.lower() != ".png":
        problems.append(f"output {str(output)!r} must be a .png file")
    if problems:
        raise UserError("laws plot: " + "; ".join(problems) + ".")
    from lightning_embed.cli.outputs import check_output

    check_output(output, "laws plot -o")
    law_file = load_laws(laws)
    observations = read_observations([Path(p) for p in runs])[0] if runs else []
    observations = [o for o in observations if math.isfinite(o.loss) and o.loss > 0]
    path = plot_laws(law_file, observations, Path(output), kind)
    print(f"wrote {path}")
    return path
