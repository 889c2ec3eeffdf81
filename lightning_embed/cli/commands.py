"""Typed functions as subcommands: the signature is the interface, the Google docstring is ``--help``.

Each non-trainer subcommand of ``lightning-embed`` is a plain function. Required parameters become
positional arguments (a ``list`` one takes one or more values), the others ``--options``; a ``bool``
becomes ``--flag/--no-flag``, a ``Literal`` a choice. Only the chosen command's module is imported, so
light commands (``recipe``, ``laws``) start without torch.

argparse rather than jsonargparse here: these commands want positionals with ``nargs="+"``, short
aliases (``-o``) and plain flags, which jsonargparse's function CLI does not offer.
"""

from __future__ import annotations

import argparse
import inspect
import types
import typing
import weakref
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any, Literal, NoReturn, Union

#: command -> "module:function", or sub-command -> "module:function" for command groups.
COMMANDS: dict[str, str | dict[str, str]] = {
    "strategies": "lightning_embed.cli.reporting:strategies",
    "data": "lightning_embed.cli.reporting:data",
    "flops": "lightning_embed.cli.app:flops",
    "recipe": "lightning_embed.recipe:recipe",
    "laws": {"fit": "lightning_embed.recipe:laws_fit", "plot": "lightning_embed.recipe:laws_plot",
             "check": "lightning_embed.recipe:laws_check", "validate": "lightning_embed.recipe:laws_validate",
             "baseline": "lightning_embed.recipe:laws_baseline"},
    "sweep": {"plan": "lightning_embed.recipe:sweep_plan", "run": "lightning_embed.recipe:sweep_run"},
    "export": "lightning_embed.models.export:export",
    "evaluate": "lightning_embed.evaluation.evaluate:evaluate",
    "mine": "lightning_embed.data.mining:mine",
}

#: Short aliases shared by every command.
SHORT = {"output": "-o"}


def _load(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(import_module(module), name)


def _parse_docstring(fn: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    from docstring_parser import parse

    doc = parse(inspect.getdoc(fn) or "")
    description = "\n\n".join(p for p in (doc.short_description, doc.long_description) if p)
    return description, {p.arg_name: (p.description or "") for p in doc.params}


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _converter(tp: Any) -> tuple[Callable[[str], Any] | None, list[Any] | None]:
    """(type converter, choices) for a scalar annotation."""
    if typing.get_origin(tp) is Literal:
        choices = list(typing.get_args(tp))
        return type(choices[0]), choices
    if tp in (int, float, Path, str):
        return tp, None
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):  # e.g. str | list[str]: take text
        return str, None
    return str, None


# Required parameters per parser, forgotten with the parser: keyed by id(), a later parser at a recycled
# address inherited another command's (`strategies` asked for `recipe`'s BUDGET in one CI run).
_required: weakref.WeakKeyDictionary[argparse.ArgumentParser, list[str]] = weakref.WeakKeyDictionary()
_POSITIONAL = "positional:"


def add_function_arguments(parser: argparse.ArgumentParser, fn: Callable[..., Any]) -> None:
    """Adds one argument per parameter of ``fn`` to ``parser`` (help from its docstring)."""
    _, helps = _parse_docstring(fn)
    hints = typing.get_type_hints(fn)
    # Optional parameters a function wants positional (e.g. `data [SOURCE]`), named in `fn.positional`.
    optional_positional = set(getattr(fn, "positional", ()))
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        tp, optional = _unwrap_optional(hints.get(name, str))
        help_text = helps.get(name, "")
        is_list = typing.get_origin(tp) in (list, tuple)
        item = typing.get_args(tp)[0] if is_list and typing.get_args(tp) else tp
        convert, choices = _converter(item)
        required = param.default is inspect.Parameter.empty
        if tp is bool:
            parser.add_argument(f"--{name.replace('_', '-')}", dest=name, action=argparse.BooleanOptionalAction,
                                default=param.default if not required else False, help=help_text)
            continue
        if required or name in optional_positional:
            # Positional, and also accepted as --name (`recipe 1e17` and `recipe --budget 1e17` alike).
            nargs = "*" if is_list else "?"
            default = None if required else param.default
            # argparse always assigns an empty nargs="?" positional, so it gets a dest of its own.
            parser.add_argument(f"{_POSITIONAL}{name}", type=convert, choices=choices, nargs=nargs,
                                default=default, metavar=name.upper(), help=help_text)
            parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=convert, choices=choices,
                                nargs="+" if is_list else None, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
            if required:
                _required.setdefault(parser, []).append(name)
            continue
        flags = [f"--{name.replace('_', '-')}"]
        if "_" in name:
            flags.append(f"--{name}")
        if name in SHORT:
            flags.insert(0, SHORT[name])
        default = param.default
        shown = "" if default is None or default == [] else f" (default: {default})"
        parser.add_argument(*flags, dest=name, type=convert, choices=choices, nargs="+" if is_list else None,
                            default=default, help=help_text + shown)


class OneLineParser(argparse.ArgumentParser):
    """A parser whose usage mistakes are one line and exit 2 (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`.\n")


def build_parser(command: str, prog: str = "lightning-embed") -> tuple[argparse.ArgumentParser, dict[str, str]]:
    """The parser of one command (a group gets one sub-parser per sub-command)."""
    target = COMMANDS[command]
    if isinstance(target, str):
        fn = _load(target)
        description, _ = _parse_docstring(fn)
        parser = OneLineParser(prog=f"{prog} {command}", description=description,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        add_function_arguments(parser, fn)
        parser.set_defaults(_target=target)
        return parser, {}
    parser = OneLineParser(prog=f"{prog} {command}")
    subs = parser.add_subparsers(dest="_sub", required=True, metavar="{" + ",".join(target) + "}")
    for sub, sub_target in target.items():
        fn = _load(sub_target)
        description, _ = _parse_docstring(fn)
        sub_parser = subs.add_parser(sub, help=description.split("\n")[0], description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
        add_function_arguments(sub_parser, fn)
        sub_parser.set_defaults(_target=sub_target)
    return parser, dict(target)


def run_command(args: list[str]) -> Any:
    """Parses ``args`` (``[command, ...]``) and calls the command's function."""
    parser, subs = build_parser(args[0])
    parsed, extra = parser.parse_known_args(args[1:])
    namespace = vars(parsed)
    if extra:  # named by the sub-command's parser, whose --help lists the options that exist
        _sub_parser(parser, namespace.get("_sub")).error("unrecognized arguments: " + " ".join(extra))
    target = namespace.pop("_target")
    for key in [k for k in namespace if k.startswith(_POSITIONAL)]:
        value = namespace.pop(key)
        name = key[len(_POSITIONAL):]
        if namespace.get(name) in (None, []) or name not in namespace:
            namespace[name] = value
    missing = [n for n in _required_of(parser, namespace.get("_sub")) if namespace.get(n) in (None, [])]
    if missing:
        _sub_parser(parser, namespace.get("_sub")).error(
            "missing required argument(s): " + ", ".join(m.upper() for m in missing))
    namespace.pop("_sub", None)
    return _load(target)(**namespace)


def _sub_parser(parser: argparse.ArgumentParser, sub: str | None) -> argparse.ArgumentParser:
    """The parser of a group's sub-command (``laws fit``), or the command's own."""
    for action in parser._actions if sub is not None else ():
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[sub]
    return parser


def _required_of(parser: argparse.ArgumentParser, sub: str | None) -> list[str]:
    return _required.get(_sub_parser(parser, sub), [])
