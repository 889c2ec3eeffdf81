"""The ``lightning-embed`` command.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI subcommands (configs compose with repeated
``--config``, dotted overrides, ``--print_config``). The other subcommands are typed functions whose
docstrings are their ``--help``.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Literal

from lightning_embed.errors import UserError

TRAINER_COMMANDS = ("fit", "validate", "test", "predict")


def _quiet_third_party() -> None:
    # Library chatter that says nothing to the user of this tool (they are warnings about internals).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for pattern in (".*does not have many workers.*", ".*LeafSpec.*", ".*`isinstance\\(treespec, LeafSpec\\)`.*",
                    ".*Found .* module\\(s\\) in eval mode.*", ".*GPU available but not used.*",
                    ".*tensorboardX.*", ".*is smaller than the logging interval.*", ".*num_workers.*",
                    ".*LightningCLI's args parameter.*", ".*all_gather is deprecated.*"):
        warnings.filterwarnings("ignore", message=pattern)
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers.*")
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    for name in ("transformers", "bitsandbytes", "lightning.pytorch.utilities.rank_zero", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)


_CLI_CLASS = None


def embedding_cli_class():
    """The LightningCLI subclass of ``lightning-embed`` (built on first use: it imports lightning)."""
    global _CLI_CLASS
    if _CLI_CLASS is not None:
        return _CLI_CLASS
    from lightning.pytorch.callbacks import RichProgressBar
    from lightning.pytorch.callbacks.progress import ProgressBar
    from lightning.pytorch.cli import LightningCLI

    from lightning_embed.flop_callback import FlopCallback

    class EmbeddingCLI(LightningCLI):
        """LightningCLI with a FLOP callback on every run (``--flops.*``) and a before/after report."""

        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument(
                "--compare_before_after", type=bool, default=False,
                help="Validate the untrained backbone before fit and print its metrics beside the trained ones.",
            )
            # Every fit is counted and recorded: the FLOP callback is a group of its own (--flops.max_flops).
            parser.add_lightning_class_args(FlopCallback, "flops")

        def _instantiate_trainer(self, config, callbacks):
            user = list(config.get("callbacks") or [])
            if any(isinstance(c, FlopCallback) for c in user):
                # A FlopCallback in trainer.callbacks replaces the `flops` group's (never count twice).
                callbacks = [c for c in callbacks if not isinstance(c, FlopCallback)]
            if config.get("enable_progress_bar", True) is not False and not any(
                isinstance(c, ProgressBar) for c in [*callbacks, *user]
            ):
                callbacks = [*callbacks, RichProgressBar()]
            return super()._instantiate_trainer(config, callbacks)

        def before_fit(self) -> None:
            for callback in self.trainer.callbacks:
                if isinstance(callback, FlopCallback) and callback.config is None:
                    callback.config = _plain(self.config[self.subcommand])
            self._before = None
            if self.config[self.subcommand].get("compare_before_after"):
                self._before = _validate_metrics(self.trainer, self.model, self.datamodule)

        def after_fit(self) -> None:
            if getattr(self, "_before", None) is None or self.trainer.interrupted:
                return
            from lightning_embed.reporting import print_metric_comparison

            after = _validate_metrics(self.trainer, self.model, self.datamodule)
            if self.trainer.is_global_zero:
                print_metric_comparison(self._before, after, "held-out metrics: backbone before and after training")

    _CLI_CLASS = EmbeddingCLI
    return EmbeddingCLI


def _plain(namespace) -> dict:
    """A parsed config as plain JSON-able data (for the run record)."""
    import json

    data = namespace.clone().as_dict() if hasattr(namespace, "as_dict") else dict(namespace)
    data.pop("config", None)
    return json.loads(json.dumps(data, default=str))


def _trainer_cli(args: list[str] | None, **kwargs):
    from lightning_embed.data import PairDataModule
    from lightning_embed.module import EmbeddingModule
    from lightning_embed.precision import default_precision

    return embedding_cli_class()(
        EmbeddingModule,
        PairDataModule,
        args=args,
        seed_everything_default=0,
        # bf16 mixed precision where the hardware has it: same held-out loss, about twice the speed.
        trainer_defaults={"enable_model_summary": False, "precision": default_precision()},
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"description": "Contrastive fine-tuning of language models into embedding models."},
        **kwargs,
    )


def flops(
    config: list[Path] | None = None,
    budget: str | None = None,
    accounting: Literal["exact", "paper"] | None = None,
    query_tokens: float | None = None,
    document_tokens: float | None = None,
    batch_size: int | None = None,
) -> None:
    """Dry run: the FLOP per example and per step of a fit config, and the steps and examples a budget buys.

    Builds the model and data of the config exactly as ``fit`` would, measures sequence lengths on a
    sample of training batches (or takes the lengths given), and prints the cost; nothing trains.

    Args:
        config: one or more fit configs (composed in order, as ``fit --config A --config B``).
        budget: FLOP budget, e.g. 1.5e15; default: the config's ``flops.max_flops``.
        accounting: ``exact`` (derived from the module that trains) or ``paper`` (the study's formulas);
            default: the config's ``flops.accounting``.
        query_tokens: mean query length in tokens instead of measuring the data (the study: 14).
        document_tokens: mean document length in tokens instead of measuring the data (the study: 64).
        batch_size: examples per step instead of the config's ``data.batch_size``.
    """
    from lightning_embed.flop_budget import dry_run, print_report

    _quiet_third_party()
    if not config:
        raise UserError("flops needs a fit config: lightning-embed flops --config configs/lora.yaml [--budget 1e15].")
    for path in config:
        if not Path(path).is_file():
            raise UserError(f"config file {str(path)!r} does not exist.")
    args = [a for path in config for a in ("--config", str(path))]
    cli = _trainer_cli(args, run=False)
    settings = cli.config.get("flops") or {}
    trainer = cli.trainer
    report = dry_run(
        cli.model, cli.datamodule, budget if budget is not None else settings.get("max_flops"),
        accounting=accounting or settings.get("accounting") or "exact",
        query_tokens=query_tokens, document_tokens=document_tokens, batch_size=batch_size,
        world_size=trainer.world_size, accumulate_grad_batches=trainer.accumulate_grad_batches,
    )
    print_report(report)


def _validate_metrics(trainer, model, datamodule) -> dict[str, float]:
    results = trainer.validate(model, datamodule=datamodule, verbose=False)
    return {k: float(v) for k, v in (results[0] if results else {}).items()}


def _usage(commands) -> str:
    names = ", ".join([*TRAINER_COMMANDS, *commands])
    return f"usage: lightning-embed {{{names}}} ... (lightning-embed COMMAND --help for each)"


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``lightning-embed``: user mistakes print one line and exit with status 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    from lightning_embed.commands import COMMANDS, run_command

    commands = COMMANDS
    if not args or args[0] in ("-h", "--help"):
        print(_usage(commands))
        print("\nTraining: fit, validate, test, predict (LightningCLI; see `lightning-embed fit --help`).")
        print("Other: " + ", ".join(commands))
        raise SystemExit(0 if args else 2)
    try:
        if args[0] in TRAINER_COMMANDS:
            _quiet_third_party()
            # LightningCLI reads sys.argv itself when given None (it warns when given both).
            _trainer_cli(None if argv is None else args)
        elif args[0] in commands:
            run_command(args)
        else:
            raise UserError(f"unknown command {args[0]!r}. {_usage(commands)}")
    except UserError as err:
        _fail(str(err))
    except KeyboardInterrupt:
        _fail("interrupted", code=130)


def _fail(message: str, code: int = 2) -> None:
    print(f"lightning-embed: error: {message}", file=sys.stderr)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
