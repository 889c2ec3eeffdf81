"""The builtin source ``builtin:python-code``: docstring -> code pairs mined from the standard library and
the project's own installed dependencies.

``builtin:stdlib-code`` holds a few thousand training pairs, too few for a scaling-law sweep that must never
repeat its data. This source applies the same pair rules (:func:`lightning_embed.data.stdlib_source.summarize`,
functions and methods with their docstring cut out, hard negatives from the same file) to the standard
library *and* a fixed, documented list of top-level packages installed beside lightning-embed
(:data:`PACKAGES`: torch, transformers, numpy, scipy, sympy, ...). Files are parsed with :mod:`ast`, never
imported.

Rules on top of stdlib-code's:

- **Deduplication.** A pair is dropped when an earlier one (standard library first, then :data:`PACKAGES` in
  order) has the same query up to case and punctuation, the same code, or the same code up to formatting,
  comments and the function's name (the syntax tree of its arguments and body): copies of one function
  across packages, vendored modules and versions.
- **Trivial pairs.** Besides empty bodies (``pass``, ``...``, ``raise NotImplementedError``), a body of one
  statement that only forwards its arguments (``return self._impl(x, y)``) or returns a name or attribute
  (a getter) says almost nothing a query could find, and is dropped.
- **Held-out split by package.** Every pair of :data:`HELD_OUT` (whole top-level packages) is held out and
  no other, so no held-out pair shares a package, module or file with a training pair. The held-out set is
  capped at :data:`VAL_SIZE` pairs chosen by a stable hash of ``module:qualname``, so evaluation stays cheap
  and the same pairs are chosen on every machine.

Which pairs exist depends on the installed versions, so every mined set carries a :func:`fingerprint`: a
short sha256 of each split's pairs plus the Python and package versions. Run records store it, so runs on
different mined data are never pooled silently. Pairs are cached as JSON lines (with a metadata file) under
:func:`lightning_embed.models.cache_dir`, keyed by the versions: only the first use pays for mining.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import sysconfig
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from lightning_embed.cli.outputs import write_text_atomically
from lightning_embed.data import stdlib_source
from lightning_embed.data.fingerprints import pairs_digest as digest
from lightning_embed.errors import UserError

#: What ``lightning-embed data`` and error messages say about this source.
DESCRIPTION = (
    "docstring summaries paired with the function's code, from the standard library and lightning-embed's "
    "installed dependencies (torch, transformers, numpy, sympy, ...), deduplicated; held out by package "
    "(networkx, rich, jinja2, dateutil; 1,000 pairs); hard negatives from the same file"
)

#: Top-level packages mined (in this order, after the standard library), all dependencies of lightning-embed
#: (direct or transitive). ``pytorch_lightning`` and ``lightning_fabric`` are left out: ``lightning`` ships
#: the same code; ``multiprocess`` too (a copy of the standard library's ``multiprocessing``).
PACKAGES: tuple[str, ...] = (
    "torch", "lightning", "lightning_utilities", "torchmetrics", "transformers", "tokenizers", "peft",
    "accelerate", "bitsandbytes", "safetensors", "huggingface_hub", "datasets", "sentence_transformers", "mteb",
    "numpy", "scipy", "sklearn", "pandas", "pyarrow", "polars", "narwhals", "sympy", "mpmath", "matplotlib",
    "fontTools", "PIL", "fsspec", "jsonargparse", "pydantic", "yaml", "requests", "urllib3", "click", "typer",
    "pygments", "markdown_it", "packaging", "tqdm", "joblib", "dill", "filelock", "anyio", "psutil", "gguf",
    "networkx", "rich", "jinja2", "dateutil",
)
#: Packages whose pairs form the held-out split (distinct domains: graphs, terminal output, templates, dates).
HELD_OUT: tuple[str, ...] = ("networkx", "rich", "jinja2", "dateutil")
#: Held-out pairs kept (the lowest stable hashes of ``module:qualname``).
VAL_SIZE = 1000
#: The package name of standard-library pairs (its version is the Python version).
STDLIB = "python"

#: Bump when the mining rules change, so stale caches are not reused.
_FORMAT_VERSION = 1
# Folders of vendored copies, tests, examples and benchmarks inside third-party packages.
_PACKAGE_SKIP_PARTS = frozenset({"_vendor", "vendor", "_vendored", "vendored", "externals", "_externals",
                                 "benchmarks", "examples", "testing", "_testing"})
_WORD = re.compile(r"\w+")
# In-process memos: versions per (site-packages, packages); the last cache read, by file modification times.
_VERSIONS: dict[tuple[str, tuple[str, ...]], dict[str, str]] = {}
_LOADED: dict[Path, tuple[tuple[int, int], tuple[list[dict], dict]]] = {}

Split = Literal["train", "val"]


def site_packages() -> Path:
    """The running interpreter's site-packages folder (where lightning-embed's dependencies are installed)."""
    return Path(sysconfig.get_paths()["purelib"])


def package_versions(root: str | os.PathLike, packages: Iterable[str]) -> dict[str, str]:
    """Installed version of each top-level package found under ``root`` (read from ``*.dist-info``).

    A package folder without distribution metadata gets ``"unknown"``; a missing package is left out.
    """
    root = Path(root)
    owner: dict[str, str] = {}
    for dist in importlib.metadata.distributions(path=[str(root)]):
        tops = (dist.read_text("top_level.txt") or "").split()
        if not tops:
            tops = {Path(f).parts[0] for f in dist.files or () if Path(f).parts and ".dist-info" not in f.parts[0]}
        for top in tops:
            owner.setdefault(top.removesuffix(".py"), dist.version)
    return {p: owner.get(p, "unknown") for p in packages if (root / p).is_dir() or (root / f"{p}.py").is_file()}


def _wrapper_or_getter(body: list[ast.stmt]) -> bool:
    """One statement that returns a name/attribute/constant or only forwards plain arguments to a call."""
    if len(body) != 1 or not isinstance(body[0], (ast.Return, ast.Expr)) or body[0].value is None:
        return False
    value = body[0].value
    plain = (ast.Name, ast.Attribute, ast.Constant)
    if isinstance(value, plain):
        return True
    if not isinstance(value, ast.Call):
        return False
    args = [a.value if isinstance(a, ast.Starred) else a for a in value.args] + [k.value for k in value.keywords]
    return all(isinstance(a, plain) for a in args)


def _shape_key(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    # The syntax tree without positions, docstring, decorators or name: equal for copies that differ only in
    # formatting, comments or the function's name.
    return hashlib.sha256((ast.dump(node.args) + ast.dump(ast.Module(node.body[1:], []))).encode()).hexdigest()


def _query_key(query: str) -> str:
    return " ".join(_WORD.findall(query.lower()))


def _files(base: Path, package: str | None) -> Iterator[tuple[Path, Path]]:
    """(path, path relative to ``base``) of the .py files to mine, in sorted order."""
    top = base / package if package else base
    paths = [top.with_suffix(".py")] if package and not top.is_dir() else sorted(top.rglob("*.py"))
    for path in sorted(paths, key=lambda p: p.relative_to(base).as_posix()):
        relative = path.relative_to(base)
        if not path.is_file() or stdlib_source._skipped(relative) or relative.name == "conftest.py":
            continue
        if package and _PACKAGE_SKIP_PARTS.intersection(relative.parts[:-1]):
            continue
        yield path, relative


def _mine_tree(base: Path, package: str | None, origin: str) -> Iterator[tuple[dict, str]]:
    """Pairs of one package (or the whole standard library when ``package`` is None), with their shape key."""
    for path, relative in _files(base, package):
        parsed = stdlib_source.parse_python(path)
        if parsed is None:
            continue
        source, tree = parsed
        lines = source.splitlines()
        module = stdlib_source._module_name(relative)
        for qualname, node in stdlib_source._functions(tree.body, ""):
            docstring = ast.get_docstring(node, clean=True)
            if not docstring or stdlib_source._is_trivial(node.body[1:]) or _wrapper_or_getter(node.body[1:]):
                continue
            query = stdlib_source.summarize(docstring)
            code = stdlib_source._code_without_docstring(node, lines) if query else None
            if query and code:
                yield ({"package": package or STDLIB, "module": module, "path": f"{origin}/{relative.as_posix()}",
                        "qualname": qualname, "line": node.lineno, "query": query, "positive": code},
                       _shape_key(node))


def _stable_rank(pair: dict) -> str:
    return hashlib.sha256(f"{pair['module']}:{pair['qualname']}".encode()).hexdigest()


def mine(stdlib: str | os.PathLike | None = None, packages_root: str | os.PathLike | None = None,
         packages: Iterable[str] = PACKAGES, held_out: Iterable[str] = HELD_OUT,
         val_size: int = VAL_SIZE) -> list[dict]:
    """Mines, deduplicates and splits every usable pair.

    Deterministic: the standard library, then ``packages`` in the given order; files in sorted path order,
    functions in source order; the first of duplicate pairs is kept.

    Args:
        stdlib: the standard-library folder (the running interpreter's when None); ``""``: leave it out.
        packages_root: folder holding the packages (this interpreter's site-packages when None).
        packages: top-level packages to mine; those not installed are skipped.
        held_out: packages whose pairs form the held-out split.
        val_size: most held-out pairs kept (lowest stable hashes of ``module:qualname``).

    Returns:
        One dict per pair with keys ``package``, ``module``, ``path``, ``qualname``, ``line``, ``split``,
        ``query`` and ``positive``.
    """
    root = Path(packages_root) if packages_root is not None else site_packages()
    held = set(held_out)
    trees: list[tuple[Path, str | None, str]] = []
    if stdlib != "":
        base = Path(stdlib) if stdlib is not None else stdlib_source.stdlib_root()
        if base.is_dir():
            trees.append((base, None, "stdlib"))
    trees += [(root, p, "site-packages") for p in packages if (root / p).is_dir() or (root / f"{p}.py").is_file()]
    seen_queries: set[str] = set()
    seen_code: set[str] = set()
    pairs = []
    for base, package, origin in trees:
        for pair, shape in _mine_tree(base, package, origin):
            query, code = _query_key(pair["query"]), pair["positive"]
            if query in seen_queries or code in seen_code or shape in seen_code:
                continue
            seen_queries.add(query)
            seen_code.update((code, shape))
            pair["split"] = "val" if pair["package"] in held else "train"
            pairs.append(pair)
    val = [p for p in pairs if p["split"] == "val"]
    keep = {id(p) for p in sorted(val, key=_stable_rank)[:val_size]}
    return [p for p in pairs if p["split"] == "train" or id(p) in keep]


def versions() -> dict[str, str]:
    """Python's version and the version of each mined package installed now (the cache key's inputs)."""
    key = (str(site_packages()), PACKAGES)
    if key not in _VERSIONS:  # reading every dist-info takes most of a second; a fit asks several times
        _VERSIONS[key] = {STDLIB: platform.python_version(), **package_versions(site_packages(), PACKAGES)}
    return dict(_VERSIONS[key])


def _cache_key(found: dict[str, str]) -> str:
    spec = json.dumps([_FORMAT_VERSION, found, list(PACKAGES), list(HELD_OUT), VAL_SIZE, str(site_packages()),
                       str(stdlib_source.stdlib_root())])
    return hashlib.sha256(spec.encode()).hexdigest()[:12]


def cache_path(found: dict[str, str] | None = None) -> Path:
    """The JSONL cache of mined pairs for these package versions (its metadata sits beside it, ``.meta.json``)."""
    from lightning_embed.models import cache_dir

    return cache_dir() / f"python-code-{_cache_key(found if found is not None else versions())}.jsonl"


def _meta_path(path: Path) -> Path:
    return path.with_suffix(".meta.json")


def _read_cache(path: Path) -> tuple[list[dict], dict] | None:
    try:
        stamp = (path.stat().st_mtime_ns, _meta_path(path).stat().st_mtime_ns)
        if _LOADED.get(path, (None,))[0] == stamp:
            return _LOADED[path][1]
        meta = json.loads(_meta_path(path).read_text(encoding="utf-8"))
        with path.open(encoding="utf-8") as handle:
            pairs = [json.loads(line) for line in handle]
    except (OSError, ValueError):
        return None
    counts = {s: sum(p.get("split") == s for p in pairs) for s in ("train", "val")}
    if meta.get("counts") != counts:
        return None  # a half-written or edited cache is redone
    _LOADED.clear()
    _LOADED[path] = (stamp, (pairs, meta))
    return pairs, meta


def load_with_metadata(*, refresh: bool = False) -> tuple[list[dict], dict]:
    """All mined pairs and their metadata (versions, counts, fingerprint, mining time), mined now if not cached.

    Args:
        refresh: mine again even when a cache exists.
    """
    found = versions()
    path = cache_path(found)
    cached = None if refresh else _read_cache(path)
    if cached is not None:
        return cached
    start = time.perf_counter()
    pairs = mine(packages_root=site_packages(), packages=PACKAGES, held_out=HELD_OUT, val_size=VAL_SIZE)
    seconds = time.perf_counter() - start
    if not any(p["split"] == "train" for p in pairs) or not any(p["split"] == "val" for p in pairs):
        raise UserError(f"builtin:python-code found no usable pairs for one of its splits under "
                        f"{str(site_packages())!r} (held-out packages: {', '.join(HELD_OUT)}); it needs the .py "
                        "sources of the standard library and of lightning-embed's installed dependencies.")
    meta = {"format_version": _FORMAT_VERSION, "versions": found, "packages": list(PACKAGES),
            "held_out": list(HELD_OUT), "val_size": VAL_SIZE,
            "counts": {s: sum(p["split"] == s for p in pairs) for s in ("train", "val")},
            "fingerprint": _fingerprint(pairs, found), "mining_seconds": round(seconds, 1),
            "mined": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_text_atomically(path, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    write_text_atomically(_meta_path(path), json.dumps(meta, indent=1) + "\n")
    return pairs, meta


def load_pairs(*, refresh: bool = False) -> list[dict]:
    """All mined pairs (both splits), from the cache or mined (and cached) now.

    Args:
        refresh: mine again even when a cache exists.
    """
    return load_with_metadata(refresh=refresh)[0]


def prepare() -> None:
    """Mines and caches the pairs (run once, on one process, before the splits are loaded)."""
    if not is_cached():
        from lightning_embed.cli.reporting import print_training_notes

        # Minutes of silence at the start of a first fit would look like a hang.
        print_training_notes([f"mining builtin:python-code once into {cache_path()} (parsing many .py files: "
                              "minutes on a small CPU)..."])
    load_with_metadata()


def _fingerprint(pairs: list[dict], found: dict[str, str]) -> dict:
    return {"train": digest(p for p in pairs if p["split"] == "train"),
            "val": digest(p for p in pairs if p["split"] == "val"), "versions": found}


def is_cached() -> bool:
    """Whether the pairs for the installed versions are mined and cached already (loading is then fast)."""
    return _read_cache(cache_path()) is not None


def fingerprint() -> dict:
    """``{"train": sha, "val": sha, "versions": {...}}``: what identifies the mined data of a run."""
    pairs, meta = load_with_metadata()
    return _fingerprint(pairs, meta["versions"])


def sizes() -> dict[str, int]:
    """Pairs per split (``{"train": n, "val": m}``)."""
    return dict(load_with_metadata()[1]["counts"])


def load(split: Split, num_negatives: int = 0) -> list[tuple[str, dict]]:
    """The rows of one split, in the shape a JSONL file would give them.

    Args:
        split: ``"train"`` or the held-out ``"val"`` packages.
        num_negatives: hard negatives per row (under the ``negatives`` key): other functions of the same file
            first, then of the same package (:func:`lightning_embed.data.stdlib_source.hard_negatives`).

    Returns:
        ``(location, row)`` pairs; location (``module:qualname``) names the pair in error messages.
    """
    pairs = [pair for pair in load_pairs() if pair["split"] == split]
    negatives = stdlib_source.hard_negatives(pairs, num_negatives)
    return [
        (f"{pair['module']}:{pair['qualname']}", {"query": pair["query"], "positive": pair["positive"],
                                                   "negatives": negs})
        for pair, negs in zip(pairs, negatives)
    ]
