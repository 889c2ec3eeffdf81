"""The builtin:stdlib-code source (lightning_embed/data/stdlib_source.py): mining, the held-out split by module,
hard negatives from the same file, the cache."""

from __future__ import annotations

import ast
import shutil
import sysconfig
import zlib
from pathlib import Path

import pytest

from lightning_embed.data import stdlib_source
from lightning_embed.data.datamodule import PairDataModule
from lightning_embed.data.reading import builtin_sources


@pytest.fixture(scope="session")
def stdlib_pairs() -> list[dict]:
    """The mined stdlib pairs, through the user's cache: mined (~2 s) only on the first run ever."""
    return stdlib_source.load_pairs()


def test_stdlib_source_is_nonempty_and_split_by_module(stdlib_pairs):
    train = [p for p in stdlib_pairs if p["split"] == "train"]
    val = [p for p in stdlib_pairs if p["split"] == "val"]
    assert len(train) > 2000 and len(val) > 100
    assert not {p["module"] for p in train} & {p["module"] for p in val}
    assert all((zlib.crc32(p["module"].encode()) % 100 < 10) == (p["split"] == "val") for p in stdlib_pairs)
    assert not any(part in {"test", "idlelib", "tkinter", "lib2to3", "site-packages"}
                   for p in stdlib_pairs for part in Path(p["path"]).parts)
    assert len({p["query"] for p in stdlib_pairs}) == len({p["positive"] for p in stdlib_pairs}) == len(stdlib_pairs)
    assert all(len(p["query"].split()) >= 4 for p in stdlib_pairs)
    for pair in stdlib_pairs[::20]:  # the code stands alone (dedented) and its docstring is gone
        function = ast.parse(pair["positive"]).body[0]
        assert isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)) and ast.get_docstring(function) is None
    dumps = next(p for p in stdlib_pairs if p["module"] == "json" and p["qualname"] == "dumps")
    assert dumps["positive"].startswith("def dumps(") and "Serialize" not in dumps["positive"]


def test_stdlib_data_module_uses_the_held_out_split_with_negatives(stdlib_pairs):
    assert builtin_sources() == ["python-code", "stdlib-code"]
    dm = PairDataModule(num_negatives=2, batch_size=16, max_val_examples=50, query_column="ignored for builtins")
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.val_examples) == 50 and len(dm.train_examples) > 2000
    assert not {e.positive for e in dm.train_examples} & {e.positive for e in dm.val_examples}
    assert all(len(e.negatives) == 2 and e.positive not in e.negatives for e in dm.train_examples)
    pairs = {p["positive"]: p for p in stdlib_pairs}
    same_file = sum(pairs[e.negatives[0]]["path"] == pairs[e.positive]["path"] for e in dm.train_examples)
    assert same_file > 0.8 * len(dm.train_examples)  # hard negatives come from the same file first
    again = dm._read(dm.train, "train", None)[:50]
    assert [e.negatives for e in dm.train_examples[:50]] == [e.negatives for e in again]


def test_mining_is_deterministic_and_cached_atomically(tmp_path, monkeypatch):
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    root = tmp_path / "lib"
    shutil.copytree(stdlib / "json", root / "json", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(stdlib / "textwrap.py", root / "textwrap.py")
    (root / "test").mkdir()
    shutil.copy(stdlib / "textwrap.py", root / "test" / "test_wrap.py")
    (root / "odd.py").write_text(
        "class A:\n"
        "    @staticmethod\n"
        "    def wrapped(x):\n"
        "        '''Return the value that was passed in unchanged.'''\n"
        "        text = '''\n"
        "column zero\n"
        "'''\n"
        "        return x\n"
        "    def abstract(self):\n"
        "        '''Subclasses must implement this method themselves.'''\n"
        "        raise NotImplementedError\n"
        "def one_line(): '''Docstring and body on one line here.'''; return 1\n"
    )
    first = stdlib_source.mine(root)
    assert first == stdlib_source.mine(root) and len(first) > 10
    assert {p["path"].split("/")[0] for p in first} == {"json", "odd.py", "textwrap.py"}
    odd = [p for p in first if p["path"] == "odd.py"]
    assert [p["qualname"] for p in odd] == ["A.wrapped"]
    assert odd[0]["positive"] == "@staticmethod\ndef wrapped(x):\n    text = '''\ncolumn zero\n'''\n    return x"

    monkeypatch.setenv("LIGHTNING_EMBED_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(stdlib_source, "stdlib_root", lambda: root)
    assert stdlib_source.load_pairs() == first
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [stdlib_source.cache_path().name]
    monkeypatch.setattr(stdlib_source, "mine", lambda root=None: pytest.fail("the cache was not used"))
    assert stdlib_source.load_pairs() == first


def test_summaries():
    assert stdlib_source.summarize("Return the   thing\n  asked for.\n\nMore detail.") == "Return the thing asked for."
    assert stdlib_source.summarize("f(x, y) -> int\n\nAdd the two numbers together.") == "Add the two numbers together."
    assert stdlib_source.summarize("Too short.") is None
    long = "First sentence is here. " + "word " * 80
    assert stdlib_source.summarize(long) == "First sentence is here."
