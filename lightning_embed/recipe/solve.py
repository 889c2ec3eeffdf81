"""The recipe solver (``lightning-embed recipe``): for a FLOP budget, which model, how much data, which method.

For every law (a method at one setting) and every candidate model, the budget buys
``budget / FLOP-per-example`` training examples; the law predicts the held-out loss at that (N, D); the
lowest prediction wins. ``--rule paper`` shows the study's Algorithm 1 beside it: full fine-tuning up to
9.06e16 FLOP and LoRA above, then the model size the laws prefer for that method, data from the FLOP
formula. Nothing here builds a model under ``paper`` accounting, so an answer takes well under a second.
"""

from __future__ import annotations

import json as jsonlib
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from lightning_embed.errors import UserError
from lightning_embed.recipe import decide
from lightning_embed.recipe.catalogue import ModelEntry, load_shipped_family, resolve_models, shipped_families
from lightning_embed.recipe.costs import Accounting, flops_per_example, method_problem, trainable_on, tuning_spec
from lightning_embed.recipe.laws import ExtrapolationWarning, Law, LawsFile, load_laws

#: The study's crossover: full fine-tuning is compute-optimal up to here, LoRA above (Ziarko et al. 2024).
PAPER_CROSSOVER_FLOPS = 9.06e16
DEFAULT_LAWS_FILE = Path("laws.yaml")
#: The laws shipped with the package (fitted on the sweep in ``sweeps/python-code``): what ``recipe``
#: uses when no ``--laws`` is given and there is no ./laws.yaml.
SHIPPED_LAWS_FILE = Path(__file__).resolve().parent.parent / "resources" / "laws" / "smollm2-135m-truncated.yaml"
DEFAULT_BATCH_SIZE = 32
DEFAULT_TRAIN = "builtin:stdlib-code"
FLOP_CALLBACK = "lightning_embed.flops.callback.FlopCallback"


@dataclass(eq=False)  # compared by identity: the winner is one of the candidates
class Candidate:
    """One (method setting, model) pair under the budget."""

    law: Law
    model: ModelEntry
    trainable: int | None
    flops_per_example: float | None
    examples: int = 0
    steps: int = 0
    data: float = 0.0
    loss: float | None = None
    note: str | None = None
    extrapolation: str | None = None
    #: Central interval of the bootstrap refits' predictions (``decide.INTERVAL_LEVEL``).
    interval: tuple[float, float] | None = None
    #: Share of bootstrap refits in which the winner's predicted loss is lower than this candidate's.
    p_winner_better: float | None = None
    #: Passes over the training data the budget buys, when more than ``max_passes``.
    repeats: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {**decide.uncertainty_dict(self),
            "method": self.law.method, "setting": self.law.setting, "label": self.law.label,
            "model": self.model.name, "family": self.model.family, "backbone": self.model.backbone,
            "num_layers": self.model.num_layers, "non_embedding_params": self.model.counts.non_embedding,
            "trainable_params": self.trainable, "flops_per_example": self.flops_per_example,
            "examples": self.examples, "steps": self.steps, "data": self.data, "predicted_loss": self.loss,
            "note": self.note, "extrapolation": self.extrapolation,
        }


@dataclass
class Recipe:
    """The solver's answer: every candidate (best first), the winner, and the rule's pick."""

    budget: float
    accounting: Accounting
    query_tokens: int
    document_tokens: int
    batch_size: int
    data_unit: str
    candidates: list[Candidate]
    winner: Candidate
    rule: Candidate | None = None
    rule_method: str | None = None
    warnings: list[str] = field(default_factory=list)
    laws_path: str | None = None
    #: The options the laws cannot separate from the winner, cheapest to run first (empty: no tie).
    tie: list[Candidate] = field(default_factory=list)
    extrapolate: bool = False
    available_examples: int | None = None
    max_passes: float = decide.DEFAULT_MAX_PASSES

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``recipe --json``)."""
        return {
            "tie": bool(self.tie), "tied": [c.to_dict() for c in self.tie], "extrapolate": self.extrapolate,
            "available_examples": self.available_examples, "max_passes": self.max_passes,
            "budget": self.budget, "accounting": self.accounting, "query_tokens": self.query_tokens,
            "document_tokens": self.document_tokens, "batch_size": self.batch_size, "data_unit": self.data_unit,
            "laws": self.laws_path, "winner": self.winner.to_dict(),
            "rule": None if self.rule_method is None else {
                "name": "paper", "method": self.rule_method, "crossover_flops": PAPER_CROSSOVER_FLOPS,
                "pick": self.rule.to_dict() if self.rule else None,
            },
            "candidates": [c.to_dict() for c in self.candidates],
            "warnings": self.warnings,
        }


def default_family(laws: LawsFile) -> str:
    """The shipped family the laws were fitted on (by backbone), else ``pythia`` (the study's suite)."""
    fitted = set(laws.provenance.get("backbones") or [])
    best, hits = "pythia", 0
    for name in shipped_families():
        n = sum(m.backbone in fitted for m in load_shipped_family(name).models)
        if n > hits:
            best, hits = name, n
    return best


def solve(
    budget: float, laws: LawsFile, models: list[ModelEntry], *, accounting: Accounting = "paper",
    query_tokens: int = 14, document_tokens: int = 64, batch_size: int | None = None,
    rule: Literal["paper"] | None = None, extrapolate: bool = False, available_examples: int | None = None,
    max_passes: float = decide.DEFAULT_MAX_PASSES,
) -> Recipe:
    """Ranks every method setting x model under a FLOP budget by the loss the laws predict.

    Args:
        budget: training FLOP (model FLOP, as run records and the FLOP callback count them).
        laws: the fitted laws.
        models: the candidate backbones.
        accounting: ``paper`` (the study's per-token formulas) or ``exact`` (the FLOP model).
        query_tokens: tokens of an average query (the study's data: 14).
        document_tokens: tokens of an average document (the study's data: 64).
        batch_size: examples per step; None takes the batch size the laws' runs used, else 32.
        rule: ``paper`` also reports the study's Algorithm 1 decision.
        extrapolate: answer even when the winner lies far outside the laws' evidence (marked, warned).
        available_examples: training pairs the data holds; candidates buying more than ``max_passes``
            passes over them are marked and ranked after those that do not. None: not checked.
        max_passes: passes over the data a candidate may buy before it counts as repeating data.

    Returns:
        The recipe, with intervals and P(winner better) where the laws carry bootstrap samples. An
        extrapolated winner is reported in ``warnings`` (and as ExtrapolationWarning).

    Raises:
        UserError: a budget too small to buy one batch for any candidate, or (without ``extrapolate``) a
            winner more than 4x outside the fitted N, D or FLOP range or without a measured L0.
    """
    batch = batch_size or _shared_hparam(laws.laws, "batch_size") or DEFAULT_BATCH_SIZE
    pairs = [(law, m) for law in laws.laws for m in models]
    costs = flops_per_example([(m, law.method, law.setting) for law, m in pairs], accounting, query_tokens,
                              document_tokens)
    tokens_per_example = laws.provenance.get("tokens_per_example") or (query_tokens + document_tokens)
    trainable = trainable_on([(m, law.method, law.setting) for law, m in pairs])
    candidates = []
    for (law, model), cost, n_t in zip(pairs, costs, trainable):
        c = Candidate(law, model, n_t, cost)
        if cost is None and method_problem(law.method):
            c.note = method_problem(law.method)
        elif cost is None:
            c.note = f"{law.method} cannot tune {model.name}" + (" (no biases)" if law.method == "bias" else "")
        else:
            c.examples = int(budget // cost)
            c.steps = c.examples // batch
            if c.steps < 1:
                c.note = f"buys {c.examples:,} examples, less than one batch of {batch}"
            else:
                c.data = float(c.examples) if laws.data_unit == "examples" else c.examples * tokens_per_example
                c.loss = float(law.predict(model.counts.non_embedding, c.data))
                c.extrapolation = law.extrapolation(model.counts.non_embedding, c.data, flops=budget,
                                                    backbone=model.backbone)
        candidates.append(c)
    decide.mark_repeats(candidates, available_examples, max_passes)
    feasible = sorted((c for c in candidates if c.loss is not None), key=decide.rank_key)
    if not feasible:
        cheapest = min((c for c in candidates if c.flops_per_example), key=lambda c: c.flops_per_example, default=None)
        need = f" The smallest useful budget is {cheapest.flops_per_example * batch:.3g} FLOP ({cheapest.law.label} " \
               f"on {cheapest.model.name}, one batch of {batch})." if cheapest else ""
        raise UserError(f"a budget of {budget:.3g} FLOP buys less than one batch of {batch} examples for every "
                        f"candidate.{need} Raise --budget, lower the batch size, or add smaller models.")
    ordered = feasible + [c for c in candidates if c.loss is None]
    result = Recipe(budget, accounting, query_tokens, document_tokens, batch, laws.data_unit, ordered, feasible[0],
                    laws_path=str(laws.path) if laws.path else None, extrapolate=extrapolate,
                    available_examples=available_examples, max_passes=max_passes)
    if result.winner.extrapolation and not extrapolate:
        raise decide.refuse(result.winner, budget, laws)
    decide.add_uncertainty(feasible, result.winner)
    result.tie = decide.tied(feasible, result.winner, decide.seed_noise_log(laws))
    if rule == "paper":
        result.rule_method = "full" if budget <= PAPER_CROSSOVER_FLOPS else "lora"
        picks = [c for c in feasible if c.law.method == result.rule_method]
        result.rule = picks[0] if picks else None
    for c in dict.fromkeys(x for x in (result.winner, result.rule) if x is not None):
        if c.extrapolation:
            msg = (f"{c.law.label} on {c.model.name}: the law is extrapolated far outside the runs it was "
                   f"fitted on ({c.extrapolation}); treat the predicted loss as a rough guess.")
            result.warnings.append(msg)
            warnings.warn(msg, ExtrapolationWarning, stacklevel=2)
    return result


def _available(train: str | None, laws: LawsFile) -> int | None:
    """Training pairs to check repeats against: counted from ``train``, else the laws' recorded count."""
    if train:
        from lightning_embed.data.reading import read_examples  # imports torch: only when --train is given

        return len(read_examples(train))
    recorded = laws.provenance.get("train_examples")
    return int(recorded) if recorded else None


def _shared_hparam(laws: list[Law], key: str) -> Any:
    values = {law.hparams.get(key) for law in laws}
    return values.pop() if len(values) == 1 else None


# ---- the config to fit with -----------------------------------------------------------------------------


def build_fit_config(
    model: ModelEntry, method: str, setting: dict[str, Any], budget: float, *, batch_size: int,
    accounting: Accounting = "paper", hparams: dict[str, Any] | None = None, train: str | None = None,
    runs_file: str = "runs.jsonl", seed: int = 0,
) -> dict[str, Any]:
    """A LightningCLI config that ``lightning-embed fit --config`` runs as is, with the FLOP budget set.

    ``hparams`` (a law's shared training settings: learning rate, temperature, lengths, data) are reused
    so the run matches those the law was fitted on. The FLOP callback sizes the run: it measures the cost
    of a step on the real data, sets the steps the budget buys (and the learning-rate schedule with
    them), stops at the budget, and appends the run record. It counts in the same ``accounting`` the
    recipe used, so the budget means the same FLOP in both.
    """
    hp = hparams or {}
    return {
        "seed_everything": seed,
        "model": {
            "backbone": model.backbone,
            "num_layers": model.num_layers,
            "pooling": hp.get("pooling", "mean"),
            "temperature": hp.get("temperature", 0.025),
            "learning_rate": hp.get("learning_rate", 1.0e-4),
            "tuning": tuning_spec(method, setting),
            "query_max_length": hp.get("query_max_length", 32),
            "document_max_length": hp.get("document_max_length", 128),
        },
        "data": {"train": train or hp.get("train") or DEFAULT_TRAIN, "batch_size": batch_size,
                 # A file-based train source needs its validation set for the run record's val_loss.
                 **({"val": hp["val"]} if hp.get("val") and not train else {})},
        "trainer": {
            # The callback sets the steps the budget buys; -1 here only spares Lightning's "max_epochs was
            # not set" warning (a small data set repeats rather than ending the run early).
            "max_epochs": -1,
            "precision": "bf16-mixed",
        },
        # The FLOP callback (`fit`'s `flops` group): sizes the run to the budget and records it.
        "flops": {"max_flops": float(budget), "accounting": accounting, "runs_file": runs_file},
    }


def fit_config(candidate: Candidate, budget: float, *, batch_size: int, accounting: Accounting = "paper",
               train: str | None = None, runs_file: str = "runs.jsonl") -> dict[str, Any]:
    """The fit config of a recipe candidate (see :func:`build_fit_config`)."""
    return build_fit_config(candidate.model, candidate.law.method, candidate.law.setting, budget,
                            batch_size=batch_size, accounting=accounting, hparams=candidate.law.hparams,
                            train=train, runs_file=runs_file)


def save_config(config: dict[str, Any], path: Path, header: str = "") -> Path:
    """Writes a fit config as YAML, with ``header`` as comment lines on top."""
    from lightning_embed.cli.outputs import write_text_atomically

    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return write_text_atomically(path, comment + yaml.safe_dump(config, sort_keys=False, width=110))


# ---- presentation ---------------------------------------------------------------------------------------


def si(x: float | None) -> str:
    """``18.9M``, ``1.21G``: short numbers for tables."""
    if x is None:
        return "-"
    for factor, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.3g}{suffix}"
    return f"{x:.3g}"


def summary(recipe: Recipe) -> str:
    """One paragraph: the winner, and the rule's decision beside it."""
    w = recipe.winner
    interval = (f" ({100 * decide.INTERVAL_LEVEL:.0f}% interval {w.interval[0]:.3f}-{w.interval[1]:.3f})"
                if w.interval else " (no interval: the laws carry no bootstrap samples)")
    text = (f"Budget {recipe.budget:.3g} FLOP ({recipe.accounting} accounting): {w.law.label} on {w.model.name} "
            f"(N = {w.model.counts.non_embedding:,}), {w.examples:,} examples = {w.steps:,} steps of "
            f"{recipe.batch_size}; predicted loss {w.loss:.4f}{interval}.")
    if recipe.tie:
        text += (f"\nTie: the laws cannot separate {len(recipe.tie)} options (P(winner better) < "
                 f"{decide.TIE_PROBABILITY:g}, or a difference within the runs' seed noise); cheapest to run first: "
                 + "; ".join(f"{c.law.label} on {c.model.name} ({c.loss:.4f})" for c in recipe.tie) + ".")
    else:
        close = [c for c in recipe.candidates if c.p_winner_better is not None
                 and c.p_winner_better < decide.CLOSE_PROBABILITY][:3]
        if close:
            text += "\nClose: " + "; ".join(f"{c.law.label} on {c.model.name} (P(winner better) = "
                                             f"{c.p_winner_better:.2f})" for c in close) + "."
    if w.extrapolation:
        text += f"\nExtrapolated (--extrapolate): {w.extrapolation}; the choice is a guess outside the laws' evidence."
    if w.repeats:
        text += (f"\nEvery candidate repeats data: the winner buys {w.repeats:.1f} passes over "
                 f"{recipe.available_examples:,} training pairs (limit --max-passes {recipe.max_passes:g}).")
    if recipe.rule_method:
        side = "at or below" if recipe.rule_method == "full" else "above"
        text += f"\nStudy's Algorithm 1: {recipe.rule_method} ({side} {PAPER_CROSSOVER_FLOPS:.3g} FLOP)"
        r = recipe.rule
        if r is None:
            text += f"; the laws hold no {recipe.rule_method} law, so it cannot size the model."
        elif r is w:
            text += " agrees."
        else:
            text += (f" -> {r.law.label} on {r.model.name}, {r.examples:,} examples; predicted loss {r.loss:.4f} "
                     f"({100 * (r.loss / w.loss - 1):+.2f}% against the laws' optimum).")
    return text


def wide_console():
    """A rich console; natural width when writing to a file or pipe (rich would assume 80 and wrap)."""
    from lightning_embed.cli.terminal import console

    return console()


def render(recipe: Recipe, console=None, max_rows: int = 20) -> None:
    """Prints the candidates table (best first, ``max_rows`` of them) and the summary."""
    from rich import box
    from rich.table import Table

    console = console or wide_console()
    table = Table(title=f"Recipe for {recipe.budget:.3g} FLOP ({recipe.accounting} accounting, D = "
                  f"{recipe.data_unit})", box=box.SIMPLE_HEAD, pad_edge=False)
    shown = recipe.candidates[:max_rows]
    if recipe.rule is not None and recipe.rule not in shown:
        shown.append(recipe.rule)
    # Names and numbers never truncate (they are what the user copies); a narrow terminal drops the
    # trainable and FLOP columns (--json has them) and the note folds.
    compact = console.width < 100
    rows = []
    for c in shown:
        # An extrapolated winner loses its star: it is the laws' guess, not a recommendation.
        mark = ("?" if c.extrapolation else "★") if c is recipe.winner else ("rule" if c is recipe.rule else "")
        cells = [mark, c.law.label, c.model.name, si(c.model.counts.non_embedding), si(c.trainable),
                 si(c.flops_per_example), si(c.examples) if c.examples else "-", si(c.steps) if c.steps else "-",
                 "-" if c.loss is None else f"{c.loss:.4f}",
                 f"{c.interval[0]:.3f}-{c.interval[1]:.3f}" if c.interval else "-", _note(c, recipe)]
        rows.append((cells, "bold green" if c is recipe.winner else ("cyan" if c is recipe.rule else None)))
    header = ["", "method", "model", "N", "N_t", "FLOP/ex", "examples", "steps", "loss",
              f"{100 * decide.INTERVAL_LEVEL:.0f}% int.", "note"]
    keep = [i for i, h in enumerate(header) if not (compact and h in ("N_t", "FLOP/ex"))]
    for i in keep:
        width = max(len(header[i]), *(len(r[0][i]) for r in rows))
        if header[i] == "note":
            table.add_column("note", overflow="fold")
        else:
            table.add_column(header[i], no_wrap=True, min_width=width,
                             justify="left" if i < 3 else "right")
    for cells, style in rows:
        table.add_row(*(cells[i] for i in keep), style=style)
    console.print(table)
    if len(recipe.candidates) > len(shown):
        console.print(f"... and {len(recipe.candidates) - len(shown)} more candidates (--json lists all).")
    if any("P=" in _note(c, recipe) for c in shown):  # the legend only where a note shows a P
        console.print("P: the share of the laws' bootstrap refits in which the winner beats that candidate.")
    console.print(summary(recipe), highlight=False)


def _note(c: Candidate, recipe: Recipe) -> str:
    notes = [c.note] if c.note else []
    if c.extrapolation:
        notes.append("extrapolated")
    if c.repeats:
        notes.append(f"repeats data x{c.repeats:.1f}")
    if c in recipe.tie:
        notes.append("tie")
    if c.p_winner_better is not None and c.p_winner_better < decide.CLOSE_PROBABILITY:
        notes.append(f"P={c.p_winner_better:.2f}")
    return ", ".join(notes)


def recipe(
    budget: float,
    laws: Path | None = None,
    models: str | None = None,
    accounting: Accounting = "paper",
    rule: Literal["paper"] | None = None,
    json: bool = False,
    write_config: Path | None = None,
    query_tokens: int | None = None,
    document_tokens: int | None = None,
    batch_size: int | None = None,
    train: str | None = None,
    methods: list[str] | None = None,
    extrapolate: bool = False,
    available_examples: int | None = None,
    max_passes: float = decide.DEFAULT_MAX_PASSES,
) -> Recipe:
    """Recommends the model, data quantity and fine-tuning method for a FLOP budget.

    Ranks every fitted method setting on every candidate model by the held-out loss its law predicts at
    the data the budget buys, prints the ranking and the winner, and optionally writes the config to fit.
    Shows how sure it is: the winner's 80% interval over the laws' bootstrap refits, P(winner better) for
    close alternatives, and "tie" (cheapest first) when the laws cannot separate the top options. Refuses
    a winner more than 4x outside the N, D or FLOP range the laws were fitted on (or on a model whose
    untrained loss was not measured) unless --extrapolate; ranks candidates that would repeat the
    training data more than --max-passes times after those that do not.

    Args:
        budget: training compute in FLOP (e.g. 1e17).
        laws: laws file from ``lightning-embed laws fit`` (default: ./laws.yaml if it exists, else the
            laws shipped with lightning-embed, fitted on truncated SmolLM2-135M and the python-code data).
        models: candidate families or models, comma-separated: a shipped family (pythia, smollm2,
            qwen2.5, bert, smollm2-135m-truncated), a model of one (pythia-410m), ``all``, a family file
            (.yaml) or a local model folder. Default: the family the laws were fitted on, else pythia.
        accounting: FLOP per example: ``paper`` (the study's 6N / 2N+4N_t / 4N+2N_t per token) or
            ``exact`` (the FLOP model with attention and the real backward; first use builds and caches).
        rule: ``paper`` also shows the study's Algorithm 1 (full up to 9.06e16 FLOP, LoRA above).
        json: print the recipe as JSON instead of a table.
        write_config: write the winner's fit config (runs with ``lightning-embed fit --config FILE``).
        query_tokens: tokens of an average query. Default: the study's 14 and 64 for query and document,
            scaled to the tokens per example the laws' runs measured (their data's), if recorded.
        document_tokens: tokens of an average document (see ``query_tokens``).
        batch_size: examples per step (default: the laws' runs' batch size, else 32).
        train: training data for the written config (default: the laws' runs' data, else
            builtin:stdlib-code).
        methods: only these tuning methods (e.g. ``lora`` when full fine-tuning does not fit in memory);
            default: every method the laws file has.
        extrapolate: answer even when the winner lies far outside the laws' evidence: every extrapolated
            candidate is marked, the winner loses its star and the written config starts with the caveat.
        available_examples: training pairs your data holds (default: counted from --train, else the count
            the laws file recorded for its runs' data).
        max_passes: passes over the training data a budget may buy before its candidate counts as
            repeating data (ranked after those that do not).

    Returns:
        The recipe.

    Raises:
        UserError: bad arguments, a missing laws file, unknown models, or a budget too small to use.
    """
    problems = []
    if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
        problems.append(f"--budget must be a positive number of FLOP, got {budget!r}")
    if accounting not in ("paper", "exact"):
        problems.append(f"--accounting must be 'paper' or 'exact', not {accounting!r}")
    if rule not in (None, "paper"):
        problems.append(f"--rule must be 'paper', not {rule!r}")
    for name, value in (("query_tokens", query_tokens), ("document_tokens", document_tokens)):
        if value is not None and not (isinstance(value, int) and value > 0):
            problems.append(f"--{name} must be a positive integer, got {value!r}")
    if batch_size is not None and not (isinstance(batch_size, int) and batch_size > 0):
        problems.append(f"--batch_size must be a positive integer, got {batch_size!r}")
    if not (isinstance(max_passes, (int, float)) and math.isfinite(max_passes) and max_passes > 0):
        problems.append(f"--max-passes must be a positive number of passes over the data, got {max_passes!r}")
    if available_examples is not None and not (isinstance(available_examples, int) and available_examples > 0):
        problems.append(f"--available-examples must be a positive integer, got {available_examples!r}")
    laws_path = Path(laws) if laws is not None else DEFAULT_LAWS_FILE
    if laws is None and not laws_path.is_file() and SHIPPED_LAWS_FILE.is_file():
        laws_path = SHIPPED_LAWS_FILE
        print(f"recipe: no --laws and no ./laws.yaml; using the laws shipped with lightning-embed ({laws_path.name}: "
              "truncated SmolLM2-135M on python-code, CPU sweep). Fit laws on your own runs for your setting.",
              file=sys.stderr)
    if not laws_path.is_file():
        problems.append(
            f"no laws file at {str(laws_path)!r}; fit one from your runs with `lightning-embed laws fit "
            "runs.jsonl -o laws.yaml` (or plan runs with `lightning-embed sweep plan`), then pass --laws")
    if write_config is not None and Path(write_config).is_dir():
        problems.append(f"--write_config {str(write_config)!r} is a directory; give a file name")
    if problems:
        raise UserError("recipe: " + "; ".join(problems) + ".")
    if write_config is not None:  # before solving: the config must be writable
        from lightning_embed.cli.outputs import check_output

        check_output(write_config, "recipe --write_config")
    law_file = load_laws(laws_path)
    if methods:
        unknown = sorted(set(methods) - set(law_file.methods()))
        if unknown:
            raise UserError(f"recipe: the laws file {laws_path} has no law for method(s) {', '.join(unknown)}; "
                            f"it has {', '.join(law_file.methods())}.")
        law_file.laws = [law for law in law_file.laws if law.method in methods]
    candidates = resolve_models(models, default_family(law_file))
    measured = law_file.provenance.get("tokens_per_example")
    scale = measured / 78.0 if (measured and query_tokens is None and document_tokens is None) else 1.0
    query_tokens = query_tokens or max(1, round(14 * scale))
    document_tokens = document_tokens or max(1, round(64 * scale))
    available = available_examples or _available(train, law_file)
    with warnings.catch_warnings(record=True):  # shown once below, not also as a Python warning
        warnings.simplefilter("always")
        result = solve(budget, law_file, candidates, accounting=accounting, query_tokens=query_tokens,
                       document_tokens=document_tokens, batch_size=batch_size, rule=rule, extrapolate=extrapolate,
                       available_examples=available, max_passes=max_passes)
    if json:
        print(jsonlib.dumps(result.to_dict(), indent=2))
    else:
        render(result)
    for msg in result.warnings:
        print(f"warning: {msg}", file=sys.stderr)
    if write_config is not None:
        cfg = fit_config(result.winner, budget, batch_size=result.batch_size, accounting=accounting, train=train)
        top = decide.caveat(result.winner, law_file) + "\n" if result.winner.extrapolation else ""
        save_config(cfg, Path(write_config), header=top + summary(result).splitlines()[0]
                    + "\nWritten by `lightning-embed recipe`; run with `lightning-embed fit --config "
                    f"{Path(write_config).name}`.\nThe FLOP callback measures the step cost on the data and "
                    "sets the steps the budget buys.")
        if not json:
            print(f"wrote {write_config}")
    return result
