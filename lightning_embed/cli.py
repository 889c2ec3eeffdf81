"""The ``lightning-embed`` command.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI subcommands (configs compose with repeated
``--config``, dotted overrides, ``--print_config``). The other subcommands are typed functions whose
docstrings are their ``--help``.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

TRAINER_COMMANDS = ("fit", "validate", "test", "predict")


def _quiet_third_party() -> None:
    # Library chatter that says nothing to the user of this tool (they are warnings about internals).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for pattern in (".*does not have many workers.*", ".*LeafSpec.*", ".*`isinstance\\(treespec, LeafSpec\\)`.*",
                    ".*Found .* module\\(s\\) in eval mode.*", ".*GPU available but not used.*",
                    ".*tensorboardX.*", ".*is smaller than the logging interval.*", ".*num_workers.*"):
        warnings.filterwarnings("ignore", message=pattern)
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    for name in ("transformers", "bitsandbytes", "lightning.pytorch.utilities.rank_zero", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _trainer_cli(args: list[str]) -> None:
    from lightning.pytorch.callbacks import RichProgressBar
    from lightning.pytorch.cli import LightningCLI

    from lightning_embed.data import PairDataModule
    from lightning_embed.module import EmbeddingModule

    class EmbeddingCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument(
                "--compare_before_after", type=bool, default=False,
                help="Validate the untrained backbone before fit and print its metrics beside the trained ones.",
            )

        def _instantiate_trainer(self, config, callbacks):
            # A rich progress bar unless the user turned bars off or chose their own.
            from lightning.pytorch.callbacks.progress import ProgressBar

            if config.get("enable_progress_bar", True) is not False and not any(
                isinstance(c, ProgressBar) for c in [*callbacks, *(config.get("callbacks") or [])]
            ):
                callbacks = [*callbacks, RichProgressBar()]
            return super()._instantiate_trainer(config, callbacks)

        def before_fit(self) -> None:
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

    EmbeddingCLI(
        EmbeddingModule,
        PairDataModule,
        args=args,
        seed_everything_default=0,
        trainer_defaults={"enable_model_summary": False},
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"description": "Contrastive fine-tuning of language models into embedding models."},
    )


def _validate_metrics(trainer, model, datamodule) -> dict[str, float]:
    results = trainer.validate(model, datamodule=datamodule, verbose=False)
    return {k: float(v) for k, v in (results[0] if results else {}).items()}


def _usage(commands) -> str:
    names = ", ".join([*TRAINER_COMMANDS, *commands])
    return f"usage: lightning-embed {{{names}}} ... (lightning-embed COMMAND --help for each)"


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``lightning-embed``: user mistakes print one line and exit with status 2."""
    from lightning_embed.errors import UserError

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
            _trainer_cli(args)
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
