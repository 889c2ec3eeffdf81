"""The ``lightning-embed`` command.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI subcommands (configs compose with repeated
``--config``, dotted overrides, ``--print_config``). The other subcommands are typed functions whose
docstrings are their ``--help``.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Literal

from lightning_embed.errors import UserError

TRAINER_COMMANDS = ("fit", "validate", "test", "predict")
#: OSErrors that come from the machine, not from a bug: reported in one line.
_ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)
#: ckpt_path values Lightning resolves itself (to the best, last, SLURM or registry checkpoint).
_LIGHTNING_CKPT_NAMES = ("best", "last", "hpc", "registry")


def _quiet_third_party() -> None:
    """Library chatter off for this command (see :mod:`lightning_embed.cli.quiet`; ``--verbose`` keeps it)."""
    from lightning_embed.cli.quiet import quiet_third_party

    quiet_third_party()


_CLI_CLASS = None


def embedding_cli_class():
    """The LightningCLI subclass of ``lightning-embed`` (built on first use: it imports lightning)."""
    global _CLI_CLASS
    if _CLI_CLASS is not None:
        return _CLI_CLASS
    from lightning.pytorch.callbacks import ModelSummary
    from lightning.pytorch.callbacks.progress import ProgressBar
    from lightning.pytorch.cli import LightningCLI

    from lightning_embed.flops.callback import FlopCallback
    from lightning_embed.training.faults import FaultTolerance

    class EmbeddingCLI(LightningCLI):
        """LightningCLI with a FLOP callback on every run (``--flops.*``) and a before/after report."""

        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument(
                "--compare_before_after", type=bool, default=False,
                help="Validate the untrained backbone before fit and print its metrics beside the trained ones.",
            )
            # Every fit is counted and recorded: the FLOP callback is a group of its own (--flops.max_flops).
            parser.add_lightning_class_args(FlopCallback, "flops")
            # Every fit writes last.ckpt periodically and on a stop signal (--faults.checkpoint_every).
            parser.add_lightning_class_args(FaultTolerance, "faults")

        def _instantiate_trainer(self, config, callbacks):
            user = list(config.get("callbacks") or [])
            if any(isinstance(c, FlopCallback) for c in user):
                # A FlopCallback in trainer.callbacks replaces the `flops` group's (never count twice).
                callbacks = [c for c in callbacks if not isinstance(c, FlopCallback)]
            if any(isinstance(c, FaultTolerance) for c in user):
                callbacks = [c for c in callbacks if not isinstance(c, FaultTolerance)]
            if config.get("enable_model_summary") and not any(
                isinstance(c, ModelSummary) for c in [*callbacks, *user]
            ):
                from lightning_embed.cli.progress import ModelSummaryWithoutFlops

                callbacks = [*callbacks, ModelSummaryWithoutFlops()]  # Lightning's reads "Total FLOPs: 0" here
            if config.get("logger", True) in (True, None):
                from lightning_embed.training.loggers import default_loggers

                # TensorBoard with metrics.csv beside it (Lightning's default would be one of the two).
                config = {**config, "logger": default_loggers(config.get("default_root_dir"))}
            if config.get("enable_progress_bar", True) is not False and not any(
                isinstance(c, ProgressBar) for c in [*callbacks, *user]
            ):
                from lightning_embed.cli.progress import default_progress_bar

                # A live bar on a terminal; plain lines every few seconds in a file or a pipe.
                callbacks = [*callbacks, default_progress_bar()]
            return super()._instantiate_trainer(config, callbacks)

        def _parse_ckpt_path(self) -> None:
            # LightningCLI parses a checkpoint's hyper-parameters over the model config: a fit would silently
            # train the checkpoint's model (and take its trust_remote_code). A fit keeps its config, and is
            # refused if the checkpoint is of another model; validate/test/predict take the checkpoint's
            # model, but never its trust_remote_code.
            subcommand = self.config.get("subcommand")
            config = self.config.get(subcommand) if subcommand else None
            ckpt_path = config.get("ckpt_path") if config is not None else None
            if not ckpt_path or ckpt_path in _LIGHTNING_CKPT_NAMES or Path(ckpt_path).expanduser().is_dir():
                return
            from lightning_embed.training.faults import check_resume

            if subcommand == "fit":
                check_resume(ckpt_path, _plain(config["model"]))
                return
            _check_checkpoint_file(ckpt_path)
            trust = config["model"].get("trust_remote_code", False)
            super()._parse_ckpt_path()
            self.config[subcommand]["model"]["trust_remote_code"] = trust

        def before_fit(self) -> None:
            _check_fit(self.trainer)
            for callback in self.trainer.callbacks:
                if isinstance(callback, FlopCallback) and callback.config is None:
                    callback.config = _plain(self.config[self.subcommand])
            self._before = None
            if self.config[self.subcommand].get("compare_before_after"):
                self._before = _validate_metrics(self.trainer, self.model, self.datamodule)

        def after_fit(self) -> None:
            from lightning_embed.cli.run_summary import print_fit_summary

            if getattr(self, "_before", None) is not None and not self.trainer.interrupted:
                from lightning_embed.cli.reporting import print_metric_comparison

                after = _validate_metrics(self.trainer, self.model, self.datamodule)
                if self.trainer.is_global_zero:
                    print_metric_comparison(self._before, after,
                                            "held-out metrics: backbone before and after training")
            print_fit_summary(self.trainer, _plain(self.config[self.subcommand]))

    _CLI_CLASS = EmbeddingCLI
    return EmbeddingCLI


def _check_fit(trainer) -> None:
    """Refusals before a fit starts: nothing to train, nowhere to write."""
    from lightning_embed.cli.outputs import check_output

    if trainer.max_steps == 0 or trainer.max_epochs == 0:
        raise UserError("trainer.max_steps=0 / max_epochs=0 trains nothing; give a positive number (or -1 / null "
                        "for no limit), or use `lightning-embed validate` to score a model without training.")
    check_output(trainer.default_root_dir, "trainer.default_root_dir", "folder")


def _check_checkpoint_file(ckpt_path: str) -> None:
    from lightning_embed.models.encoder import read_checkpoint

    if not Path(ckpt_path).expanduser().exists():
        raise UserError(f"--ckpt_path {ckpt_path!r} does not exist.")
    read_checkpoint(ckpt_path)


def _plain(namespace) -> dict:
    """A parsed config as plain JSON-able data (for the run record)."""
    import json

    data = namespace.clone().as_dict() if hasattr(namespace, "as_dict") else dict(namespace)
    data.pop("config", None)
    return json.loads(json.dumps(data, default=str))


def _trainer_cli(args: list[str] | None, **kwargs):
    from lightning_embed.data.datamodule import PairDataModule
    from lightning_embed.training.module import EmbeddingModule
    from lightning_embed.training.precision import default_precision

    return embedding_cli_class()(
        EmbeddingModule,
        PairDataModule,
        args=args,
        seed_everything_default=0,
        # bf16 mixed precision where the hardware has it: same held-out loss, about twice the speed.
        trainer_defaults={"enable_model_summary": False, "precision": default_precision()},
        save_config_kwargs={"overwrite": True},
        # Parse errors are raised (and printed as one line by main), not printed under a full usage.
        parser_kwargs={"description": "Contrastive fine-tuning of language models into embedding models.",
                       "exit_on_error": False, **{c: {"exit_on_error": False} for c in TRAINER_COMMANDS}},
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
    from lightning_embed.flops.budget import dry_run, print_report

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
    if "--verbose" in args:  # every command: show library warnings and logs (LIGHTNING_EMBED_VERBOSE=1)
        from lightning_embed.cli.quiet import VERBOSE_ENV

        os.environ[VERBOSE_ENV] = "1"
        args = [a for a in args if a != "--verbose"]
        if argv is None:
            sys.argv[1:] = args
    from lightning_embed.cli.commands import COMMANDS, run_command

    commands = COMMANDS
    if not args or args[0] in ("-h", "--help"):
        print(_usage(commands))
        print("\nTraining: fit, validate, test, predict (LightningCLI; see `lightning-embed fit --help`).")
        print("Other: " + ", ".join(commands))
        print("Every command takes --verbose: library warnings and logs, which are filtered otherwise.")
        raise SystemExit(0 if args else 2)
    parse_errors: tuple[type[Exception], ...] = ()  # jsonargparse's, for the trainer commands only (light start)
    try:
        if args[0] in TRAINER_COMMANDS:
            from jsonargparse import ArgumentError

            parse_errors = (ArgumentError,)
            _check_config_files(args)
            _quiet_third_party()
            # LightningCLI reads sys.argv itself when given None (it warns when given both).
            _trainer_cli(None if argv is None else args)
        elif args[0] in commands:
            run_command(args)
        else:
            raise UserError(f"unknown command {args[0]!r}. {_usage(commands)}")
    except UserError as err:
        _fail(str(err))
    except parse_errors as err:
        _fail(f"{_one_line(str(err))}; see `lightning-embed {args[0]} --help`")
    except OSError as err:
        if err.errno not in _ENVIRONMENT_ERRNOS:
            raise
        # A full disk or a read-only folder met mid-run (e.g. by a checkpoint); the run record says "failed".
        where = f" ({err.filename})" if err.filename else ""
        _fail(f"{err.strerror or err}{where}; free space or choose another output, then resume from the last "
              "checkpoint.")
    except (KeyboardInterrupt, SystemExit) as err:
        # Lightning turns Ctrl+C into sys.exit(1) and SIGTERM into SystemExit(None): exit as a shell expects.
        faults = sys.modules.get("lightning_embed.training.faults")  # not imported: no fit ran, nothing was stopped
        stop = faults.last_stop() if faults is not None else None
        if stop is not None:
            _fail(stop.message(), code=stop.exit_code, prefix="")
        if isinstance(err, KeyboardInterrupt):
            _fail("interrupted", code=130)
        raise


def _one_line(message: str) -> str:
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    text = " ".join(lines).removeprefix("error: ")
    return text if len(text) <= 400 else text[:397] + "..."


def _config_paths(args: list[str]) -> list[str]:
    paths = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            paths.append(args[i + 1])
        elif arg.startswith("--config="):
            paths.append(arg.split("=", 1)[1])
    return paths


def _check_config_files(args: list[str]) -> None:
    """Each ``--config`` file exists and is YAML; a syntax error is named by file, line and column."""
    import yaml

    for path in _config_paths(args):
        file = Path(path).expanduser()
        if not file.is_file():
            raise UserError(f"config file {path!r} does not exist.")
        try:
            yaml.safe_load(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"cannot read config file {path}: {getattr(err, 'strerror', None) or err}.") from None
        except yaml.YAMLError as err:
            marks = [(getattr(err, "context", None), getattr(err, "context_mark", None)),
                     (getattr(err, "problem", None), getattr(err, "problem_mark", None))]
            parts = [f"{text} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else text
                     for text, mark in marks if text]
            raise UserError(f"config file {path} is not valid YAML: {'; '.join(parts) or err}.") from None


def _fail(message: str, code: int = 2, prefix: str = "error: ") -> None:
    print(f"lightning-embed: {prefix}{message}", file=sys.stderr)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
