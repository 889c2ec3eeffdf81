"""Scaling laws and the recipe solver: which model, how much data and which method for a FLOP budget.

Entry points (each backs a ``lightning-embed`` subcommand; their docstrings are its ``--help``):

- :func:`laws_fit` (``laws fit``): fit a law per method setting to run records, write a laws file.
- :func:`laws_check` (``laws check``): predicted against achieved loss of runs (held-out budgets).
- :func:`laws_baseline` (``laws baseline``): the held-out loss of each model before training (L0).
- :func:`laws_validate` (``laws validate``): leave-one-budget-out decisions, leave-one-out fit, seed noise.
- :func:`laws_plot` (``laws plot``): loss against FLOP with the optimal frontier, and iso-FLOP curves.
- :func:`recipe` (``recipe``): rank method settings x candidate models under a budget, write the config.
- :func:`sweep_plan` / :func:`sweep_run` (``sweep plan`` / ``sweep run``): iso-FLOP sweeps of fits.

Nothing imported here pulls torch, scipy or matplotlib: ``recipe`` must answer in well under 2 s.
"""

from lightning_embed.recipe.baseline import laws_baseline
from lightning_embed.recipe.check import laws_check
from lightning_embed.recipe.fit import laws_fit
from lightning_embed.recipe.laws import ExtrapolationWarning, InitialLoss, Law, LawsFile, load_laws, save_laws
from lightning_embed.recipe.plot import laws_plot
from lightning_embed.recipe.solve import Recipe, recipe, solve
from lightning_embed.recipe.sweep import sweep_plan, sweep_run
from lightning_embed.recipe.validate import laws_validate

__all__ = [
    "ExtrapolationWarning", "InitialLoss", "Law", "LawsFile", "Recipe", "laws_baseline", "laws_check", "laws_fit",
    "laws_plot", "laws_validate", "load_laws", "recipe", "save_laws", "solve", "sweep_plan", "sweep_run",
]
