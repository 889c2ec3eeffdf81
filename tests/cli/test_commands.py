"""The function subcommands: typed signatures become arguments; listings; one-line errors."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

import pytest

from lightning_embed.cli.app import main
from lightning_embed.cli.commands import add_function_arguments


def sample(budget: float, runs: list[Path] | None = None, output: Path = Path("out.yaml"),
           mode: Literal["a", "b"] = "a", verbose: bool = False) -> None:
    """Sample command.

    Args:
        budget: the budget.
        runs: run files.
        output: where to write.
        mode: a choice.
        verbose: talk more.
    """


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_function_arguments(parser, sample)
    return vars(parser.parse_args(argv))


def test_signature_becomes_arguments():
    got = _parse(["1e15", "-o", "x.yaml", "--mode", "b", "--verbose", "--runs", "a.jsonl", "b.jsonl"])
    assert got["positional:budget"] == 1e15 and got["output"] == Path("x.yaml") and got["mode"] == "b"
    assert got["verbose"] is True and got["runs"] == [Path("a.jsonl"), Path("b.jsonl")]
    with pytest.raises(SystemExit):
        _parse(["1", "--mode", "c"])  # not a choice


def test_help_comes_from_the_docstring(capsys):
    with pytest.raises(SystemExit):
        _parse(["--help"])
    out = capsys.readouterr().out
    assert "where to write" in out and "talk more" in out


def test_required_argument_positional_or_option(tmp_path, capsys):
    for argv in (["recipe", "1e17", "--laws", str(tmp_path / "none.yaml")],
                 ["recipe", "--budget", "1e17", "--laws", str(tmp_path / "none.yaml")]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        assert "no laws file" in capsys.readouterr().err  # got past argument parsing: budget was read
    with pytest.raises(SystemExit) as info:
        main(["recipe"])
    assert info.value.code == 2 and "BUDGET" in capsys.readouterr().err


def test_strategies_listing(capsys):
    main(["strategies"])
    out = capsys.readouterr().out
    for name in ("full", "lora", "qlora", "bias", "freeze"):
        assert f"│ {name} " in out
    assert "rank: int = 8" in out


def test_data_listing_and_description(capsys):
    main(["data"])
    assert "stdlib-code" in capsys.readouterr().out
    main(["data", "builtin:stdlib-code", "--split", "val"])
    assert "distinct positives" in capsys.readouterr().out


def test_unknown_command_is_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown command 'frobnicate'" in err


def test_usage_mistakes_are_one_line_without_the_usage(capsys):
    # An unknown option, a bad type, a missing argument and an unknown sub-command: one line, exit 2.
    cases = {("laws", "fit", "runs.jsonl", "--force"): "unrecognized arguments: --force",
             ("recipe", "lots"): "invalid float value: 'lots'",
             ("recipe",): "missing required argument(s): BUDGET",
             ("laws", "refit"): "invalid choice: 'refit'"}
    for argv, message in cases.items():
        with pytest.raises(SystemExit) as info:
            main(list(argv))
        err = capsys.readouterr().err
        assert info.value.code == 2 and err.count("\n") == 1 and message in err and "usage:" not in err, err
        assert f"see `lightning-embed {argv[0]}" in err
    with pytest.raises(SystemExit):
        main(["laws", "validate"])
    assert "see `lightning-embed laws validate --help`" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the sub-command's help lists the options that exist, the group's does not
        main(["laws", "fit", "runs.jsonl", "--force"])
    assert "lightning-embed laws fit: error:" in (err := capsys.readouterr().err)
    assert "see `lightning-embed laws fit --help`" in err


def test_required_arguments_are_forgotten_with_their_parser():
    # Keyed by id(), a dropped parser's required names stayed behind for any later parser at the same address:
    # `strategies` once refused to run for want of `recipe`'s BUDGET.
    import gc

    from lightning_embed.cli import commands

    gc.collect()
    before = len(commands._required)
    parser, _ = commands.build_parser("recipe")
    assert commands._required_of(parser, None) == ["budget"]
    del parser
    gc.collect()
    assert len(commands._required) == before
