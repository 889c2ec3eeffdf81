"""The builtin source ``builtin:stdlib-code``: docstring -> code pairs mined from Python's standard library.

There is no retrieval data set on the package registries, but every machine has the standard library: its
functions and methods pair a natural-language summary (the first paragraph of the docstring) with the code
that implements it (the function with its docstring removed). That makes a real code-search task with no
download. The ``.py`` files are parsed with :mod:`ast`, never imported (importing runs code, and some
modules only exist on some platforms).

The held-out split is by module (a stable CRC32 of the dotted module name puts about 10% of the modules in
validation), so no validation function shares a module with a training one. Mined pairs are cached as one
JSON line each under :func:`lightning_embed.models.cache_dir`, so only the first use pays for parsing.
"""

from __future__ import annotations

import ast
import json
import os
import platform
import re
import sysconfig
import tokenize
import warnings
import zlib
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from lightning_embed.cli.outputs import write_text_atomically
from lightning_embed.errors import UserError

#: What ``lightning-embed data`` and error messages say about this source.
DESCRIPTION = (
    "Python standard-library docstring summaries paired with the function's code (docstring removed); "
    "held-out split by module (~10%); hard negatives are other functions of the same file"
)

#: Bump when the mining rules change, so stale caches are not reused.
_FORMAT_VERSION = 1
#: Percent of modules (by CRC32 of the module name) that go to the held-out split.
_VAL_PERCENT = 10
_MIN_QUERY_WORDS = 4
_MAX_QUERY_WORDS = 64

# Folders whose code is tests, demos, GUI glue or vendored third-party code, not library functions.
_SKIP_PARTS = frozenset(
    {"test", "tests", "idle_test", "idlelib", "lib2to3", "tkinter", "turtledemo", "site-packages",
     "dist-packages", "__pycache__", "ensurepip", "pydoc_data", "__phello__", "lib-dynload"}
)
# "name(args) -> result" first lines (C-style signatures) say nothing a search query would.
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)(\s*->.*)?$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")

Split = Literal["train", "val"]


def stdlib_root() -> Path:
    """The folder of the running interpreter's pure-Python standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def cache_path() -> Path:
    """The JSONL cache of mined pairs for this Python version."""
    from lightning_embed.models import cache_dir

    return cache_dir() / f"stdlib-code-{platform.python_version()}-v{_FORMAT_VERSION}.jsonl"


def module_split(module: str) -> Split:
    """Which split a module belongs to; stable across machines and runs (unlike ``hash()``)."""
    return "val" if zlib.crc32(module.encode("utf-8")) % 100 < _VAL_PERCENT else "train"


def _skipped(relative: Path) -> bool:
    parts = relative.parts
    return (
        any(part in _SKIP_PARTS or part.startswith("config-") for part in parts[:-1])
        or parts[-1].startswith(("test_", "_test"))
        or parts[-1].startswith("_sysconfigdata")
    )


def _module_name(relative: Path) -> str:
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def summarize(docstring: str) -> str | None:
    """The query for a docstring: its first paragraph, whitespace-normalised, or None when unusable.

    A first paragraph that is only a call signature gives way to the second; one longer than
    ``_MAX_QUERY_WORDS`` words is cut to its first sentence. Summaries under ``_MIN_QUERY_WORDS`` words
    ("Constructor.", "Return self.") are too vague to retrieve a single function and are dropped.
    """
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", docstring.strip()) if p.strip()]
    if not paragraphs:
        return None
    summary = paragraphs[0]
    if _SIGNATURE.match(summary):
        if len(paragraphs) < 2:
            return None
        summary = paragraphs[1]
    if len(summary.split()) > _MAX_QUERY_WORDS:
        summary = _SENTENCE_END.split(summary, maxsplit=1)[0]
    words = len(summary.split())
    if words < _MIN_QUERY_WORDS or words > _MAX_QUERY_WORDS or summary.startswith(">>>"):
        return None
    return summary


def _is_trivial(body: list[ast.stmt]) -> bool:
    if not body:
        return True
    if len(body) > 1:
        return False
    stmt = body[0]
    if isinstance(stmt, ast.Pass):
        return True
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and stmt.value.value is Ellipsis:
        return True
    if isinstance(stmt, ast.Raise) and stmt.exc is not None:
        exc = stmt.exc.func if isinstance(stmt.exc, ast.Call) else stmt.exc
        return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"
    return False


def _code_without_docstring(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> str | None:
    doc = node.body[0]
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    # A docstring sharing a line with code (`def f(): "doc"; return 1`) cannot be cut out by lines.
    if doc.lineno <= node.lineno or doc.end_lineno is None or node.end_lineno is None:
        return None
    if lines[doc.end_lineno - 1][doc.end_col_offset:].strip() not in ("", ";"):
        return None
    kept = lines[first - 1 : doc.lineno - 1] + lines[doc.end_lineno : node.end_lineno]
    # Dedent by the def's own column, not textwrap.dedent: a multi-line string literal at column 0 inside a
    # method would otherwise stop all dedenting.
    col = node.col_offset
    code = "\n".join(line[col:] if not line[:col].strip() else line for line in kept)
    return code.strip("\n").rstrip() or None


def _functions(body: list[ast.stmt], prefix: str) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Module-level functions and methods (of nested classes too), not functions nested in functions."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node.body, f"{prefix}{node.name}.")
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            # Platform-dependent definitions (`if sys.platform == ...:`, `try: import x except: def ...`).
            for block in (node.body, getattr(node, "orelse", []), getattr(node, "finalbody", [])):
                yield from _functions(block, prefix)
            for handler in getattr(node, "handlers", []):
                yield from _functions(handler.body, prefix)


def parse_python(path: Path) -> tuple[str, ast.Module] | None:
    """A Python file's source and syntax tree, or None when it cannot be read or parsed (it is skipped)."""
    try:
        with tokenize.open(path) as handle:  # honours PEP 263 encoding cookies
            source = handle.read()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in old modules
            return source, ast.parse(source, filename=str(path))
    except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
        return None


def _mine_file(path: Path, relative: Path) -> Iterator[dict]:
    parsed = parse_python(path)
    if parsed is None:
        return
    source, tree = parsed
    lines = source.splitlines()
    module = _module_name(relative)
    for qualname, node in _functions(tree.body, ""):
        docstring = ast.get_docstring(node, clean=True)
        if not docstring or _is_trivial(node.body[1:]):
            continue
        query = summarize(docstring)
        code = _code_without_docstring(node, lines) if query else None
        if query and code:
            yield {"module": module, "path": relative.as_posix(), "qualname": qualname, "line": node.lineno,
                   "split": module_split(module), "query": query, "positive": code}


def mine(root: str | os.PathLike | None = None) -> list[dict]:
    """Mines every usable (docstring summary, code) pair under a standard-library folder.

    Deterministic: files in sorted path order, functions in source order; an exact repeat of an earlier
    pair's query or code is dropped (a repeated query is ambiguous to retrieve, a repeated body would be
    a false negative of its twin).

    Args:
        root: the standard-library folder; the running interpreter's when None.

    Returns:
        One dict per pair with keys ``module``, ``path``, ``qualname``, ``line``, ``split``, ``query`` and
        ``positive``.
    """
    base = Path(root) if root is not None else stdlib_root()
    if not base.is_dir():
        raise UserError(f"the Python standard library folder {str(base)!r} does not exist; builtin:stdlib-code "
                        "needs the .py sources of the standard library (some minimal Python images strip them).")
    seen_queries: set[str] = set()
    seen_code: set[str] = set()
    pairs = []
    for path in sorted(base.rglob("*.py"), key=lambda p: p.relative_to(base).as_posix()):
        relative = path.relative_to(base)
        if _skipped(relative):
            continue
        for pair in _mine_file(path, relative):
            if pair["query"] in seen_queries or pair["positive"] in seen_code:
                continue
            seen_queries.add(pair["query"])
            seen_code.add(pair["positive"])
            pairs.append(pair)
    return pairs


def load_pairs(*, refresh: bool = False) -> list[dict]:
    """All mined pairs of this interpreter's standard library, from the cache or mined (and cached) now.

    Args:
        refresh: mine again even when a cache file exists.
    """
    path = cache_path()
    if not refresh and path.is_file():
        try:
            with path.open(encoding="utf-8") as handle:
                return [json.loads(line) for line in handle]
        except (OSError, ValueError):
            pass  # a damaged cache is rebuilt below
    pairs = mine()
    if not pairs:
        raise UserError(f"no docstring/code pairs found under {str(stdlib_root())!r}; builtin:stdlib-code needs "
                        "the .py sources of the standard library.")
    write_text_atomically(path, "".join(json.dumps(pair, ensure_ascii=False) + "\n" for pair in pairs))
    return pairs


def prepare() -> None:
    """Mines and caches the pairs (run once, on one process, before the splits are loaded)."""
    load_pairs()


def hard_negatives(pairs: list[dict], num_negatives: int) -> list[list[str]]:
    """For each pair, ``num_negatives`` other functions' code: same file first, then same package, then any.

    Candidates are taken cyclically from the pair's own position (the functions just after it in the same
    file are the most alike: neighbouring methods of one class), so the choice is deterministic. Pass the
    pairs of one split, so negatives never leak across splits.
    """
    if num_negatives <= 0:
        return [[] for _ in pairs]
    by_file: dict[str, list[int]] = defaultdict(list)
    by_package: dict[str, list[int]] = defaultdict(list)
    for i, pair in enumerate(pairs):
        by_file[pair["path"]].append(i)
        by_package[pair["module"].split(".")[0]].append(i)
    everything = list(range(len(pairs)))

    def cyclic(group: list[int], i: int) -> Iterator[int]:
        start = bisect_left(group, i)  # groups list indices in increasing order
        return (group[(start + step) % len(group)] for step in range(1, len(group)))

    result = []
    for i, pair in enumerate(pairs):
        chosen: list[str] = []
        taken = {pair["positive"]}
        for group in (by_file[pair["path"]], by_package[pair["module"].split(".")[0]], everything):
            for j in cyclic(group, i):
                if len(chosen) == num_negatives:
                    break
                if pairs[j]["positive"] not in taken:
                    taken.add(pairs[j]["positive"])
                    chosen.append(pairs[j]["positive"])
            if len(chosen) == num_negatives:
                break
        result.append(chosen)
    return result


def load(split: Split, num_negatives: int = 0) -> list[tuple[str, dict]]:
    """The rows of one split, in the shape a JSONL file would give them.

    Args:
        split: ``"train"`` or the held-out ``"val"`` modules.
        num_negatives: hard negatives per row (under the ``negatives`` key).

    Returns:
        ``(location, row)`` pairs; location (``module:qualname``) names the pair in error messages.
    """
    pairs = [pair for pair in load_pairs() if pair["split"] == split]
    negatives = hard_negatives(pairs, num_negatives)
    return [
        (f"{pair['module']}:{pair['qualname']}", {"query": pair["query"], "positive": pair["positive"],
                                                   "negatives": negs})
        for pair, negs in zip(pairs, negatives)
    ]
