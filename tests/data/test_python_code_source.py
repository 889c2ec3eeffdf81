"""builtin:python-code: mining a fake standard library + site-packages, split, dedup, fingerprint, cache, CLI."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from lightning_embed.data import python_code_source as pcs
from lightning_embed.data import stdlib_source
from lightning_embed.data.fingerprints import pairs_digest
from lightning_embed.errors import UserError

ALPHA = '''
def add_numbers(a, b):
    """Add two numbers together and return their exact sum."""
    total = a + b
    return total


def scale_vector(vector, factor):
    """Multiply every element of a vector by a constant factor."""
    out = []
    for x in vector:
        out.append(x * factor)
    return out


def forward_call(self, x, y):
    """Forward the call to the private implementation with the same arguments."""
    return self._impl(x, y)


def unfinished(x):
    """This function is not written yet but has a long docstring."""
    raise NotImplementedError


class Stack:
    def push_item(self, item):
        """Push one item onto the top of the stack."""
        self.items.append(item)
        self.size += 1

    def pop_item(self):
        """Remove the top item of the stack and return it."""
        self.size -= 1
        return self.items.pop()
'''

# A copy of alpha.scale_vector under another name, with other formatting and a comment; a repeated query.
GAMMA = '''
def scale_all(vector, factor):
    """Scale a list of numbers by some factor, returning a new list."""
    out = [ ]
    for x in vector:   # same loop
        out.append( x * factor )
    return out


def add_again(p, q):
    """add two numbers together, and return their exact sum!"""
    result = p * q
    return result


def parse_header_line(line):
    """Split an HTTP header line into its name and its value."""
    name, _, value = line.partition(":")
    return name.strip(), value.strip()
'''

BETA = '''
def shortest_path(graph, source, target):
    """Find the shortest path between two nodes of a graph."""
    return _search(graph, source, target, weight=None)


def degree_of(graph, node):
    """Count the edges that touch one node of the graph."""
    count = 0
    for edge in graph.edges:
        count += node in edge
    return count


def node_names(graph):
    """List the names of every node in the graph, sorted."""
    names = [n.name for n in graph.nodes]
    return sorted(names)
'''

STDLIB = '''
def reverse_words(text):
    """Reverse the order of the words in a sentence of text."""
    words = text.split()
    return " ".join(reversed(words))
'''


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


@pytest.fixture
def fake_tree(tmp_path, monkeypatch) -> dict:
    """A fake standard library and site-packages (alpha, gamma: training; beta: held out), wired into the source."""
    stdlib, site = tmp_path / "stdlib", tmp_path / "site-packages"
    _write(stdlib / "textops.py", STDLIB)
    _write(stdlib / "test" / "test_textops.py", STDLIB.replace("reverse_words", "other"))
    _write(site / "alpha" / "__init__.py", "")
    _write(site / "alpha" / "core.py", ALPHA)
    _write(site / "alpha" / "tests" / "test_core.py", BETA)  # tests are not mined
    _write(site / "alpha" / "_vendor" / "copied.py", BETA)  # nor vendored copies
    _write(site / "beta" / "graphs.py", BETA)
    _write(site / "gamma.py", GAMMA)
    _write(site / "alpha-1.2.3.dist-info" / "METADATA", "Metadata-Version: 2.1\nName: alpha\nVersion: 1.2.3\n")
    _write(site / "alpha-1.2.3.dist-info" / "top_level.txt", "alpha\n")
    monkeypatch.setattr(pcs, "site_packages", lambda: site)
    monkeypatch.setattr(stdlib_source, "stdlib_root", lambda: stdlib)
    monkeypatch.setattr(pcs, "PACKAGES", ("alpha", "beta", "gamma", "missing"))
    monkeypatch.setattr(pcs, "HELD_OUT", ("beta",))
    monkeypatch.setenv("LIGHTNING_EMBED_CACHE", str(tmp_path / "cache"))
    return {"stdlib": stdlib, "site": site, "cache": tmp_path / "cache"}


def _mine(tree: dict, **kwargs) -> list[dict]:
    return pcs.mine(tree["stdlib"], tree["site"], packages=("alpha", "beta", "gamma", "missing"),
                    held_out=("beta",), **kwargs)


def test_mining_pairs_split_by_package_and_rules(fake_tree):
    pairs = _mine(fake_tree)
    names = {(p["package"], p["qualname"]) for p in pairs}
    assert names == {("python", "reverse_words"), ("alpha", "add_numbers"), ("alpha", "scale_vector"),
                     ("alpha", "Stack.push_item"), ("alpha", "Stack.pop_item"), ("gamma", "parse_header_line"),
                     ("beta", "degree_of"), ("beta", "node_names")}
    # The wrapper (forward_call), the stub (unfinished), the one-statement forwarding return (shortest_path),
    # tests and vendored folders are not mined; the docstring is cut from the code.
    push = next(p for p in pairs if p["qualname"] == "Stack.push_item")
    assert push["positive"].startswith("def push_item(self, item):") and '"""' not in push["positive"]
    assert push["module"] == "alpha.core" and push["path"] == "site-packages/alpha/core.py"
    by_split = {s: {p["package"] for p in pairs if p["split"] == s} for s in ("train", "val")}
    assert by_split == {"train": {"python", "alpha", "gamma"}, "val": {"beta"}}
    assert not {p["module"] for p in pairs if p["split"] == "val"} & {p["module"] for p in pairs
                                                                      if p["split"] == "train"}


def test_dedup_drops_copies_across_packages(fake_tree):
    pairs = _mine(fake_tree)
    qualnames = [p["qualname"] for p in pairs]
    # scale_all: same code up to name, formatting and comments; add_again: same query up to case/punctuation.
    assert "scale_all" not in qualnames and "add_again" not in qualnames
    # The first copy (in mining order: standard library, then packages as listed) is the one kept.
    site = fake_tree["site"]
    _write(site / "beta" / "graphs.py", BETA + "\n" + textwrap.dedent(ALPHA).split("def forward_call")[0])
    again = pcs.mine(fake_tree["stdlib"], site, packages=("beta", "alpha"), held_out=("beta",))
    assert {p["package"] for p in again if p["qualname"] == "add_numbers"} == {"beta"}
    assert len({p["positive"] for p in again}) == len(again)


def test_held_out_cap_is_a_stable_choice(fake_tree):
    full = [p for p in _mine(fake_tree) if p["split"] == "val"]
    capped = [p for p in _mine(fake_tree, val_size=1) if p["split"] == "val"]
    assert len(full) == 2 and len(capped) == 1 and capped[0] in full
    assert capped == [p for p in _mine(fake_tree, val_size=1) if p["split"] == "val"]


def test_order_and_fingerprint_are_deterministic(fake_tree):
    first, second = _mine(fake_tree), _mine(fake_tree)
    assert first == second
    train = [p for p in first if p["split"] == "train"]
    assert pairs_digest(train) == pairs_digest([p for p in second if p["split"] == "train"])
    assert len(pairs_digest(train)) == 16
    _write(fake_tree["site"] / "alpha" / "core.py", ALPHA.replace("exact sum", "exact arithmetic sum"))
    changed = [p for p in _mine(fake_tree) if p["split"] == "train"]
    assert pairs_digest(changed) != pairs_digest(train)


def test_versions_come_from_dist_info(fake_tree):
    found = pcs.versions()
    assert found["alpha"] == "1.2.3" and found["gamma"] == "unknown" and "missing" not in found
    assert found["python"] and "beta" in found


def test_cache_is_reused_and_keyed_by_versions(fake_tree, monkeypatch):
    pairs, meta = pcs.load_with_metadata()
    path = pcs.cache_path()
    assert path.is_file() and path.with_suffix(".meta.json").is_file()
    assert meta["counts"] == {"train": 6, "val": 2}
    assert meta["fingerprint"]["train"] == pairs_digest(p for p in pairs if p["split"] == "train")
    assert pcs.fingerprint() == meta["fingerprint"] and pcs.sizes() == meta["counts"]

    def no_mining(*args, **kwargs):
        raise AssertionError("mined again although the cache is there")

    monkeypatch.setattr(pcs, "mine", no_mining)
    pcs._LOADED.clear()  # a fresh process: read from the file
    assert pcs.load_pairs() == pairs
    rows = pcs.load("val", num_negatives=1)
    assert [loc for loc, _ in rows] == ["beta.graphs:degree_of", "beta.graphs:node_names"]
    assert rows[0][1]["negatives"] == [rows[1][1]["positive"]]  # the other function of the same file
    # Another installed version is another cache (mined anew).
    _write(fake_tree["site"] / "alpha-1.2.3.dist-info" / "METADATA", "Metadata-Version: 2.1\nName: alpha\n"
           "Version: 1.3.0\n")
    pcs._VERSIONS.clear()
    assert pcs.cache_path() != path
    with pytest.raises(AssertionError, match="mined again"):
        pcs.load_pairs()


def test_a_damaged_cache_is_mined_again(fake_tree):
    pairs, _ = pcs.load_with_metadata()
    path = pcs.cache_path()
    path.write_text(path.read_text().splitlines()[0] + "\n")  # a cache cut short
    pcs._LOADED.clear()
    assert pcs.load_pairs() == pairs


def test_no_usable_pairs_is_a_user_error(fake_tree, monkeypatch):
    monkeypatch.setattr(pcs, "HELD_OUT", ("nothing",))
    with pytest.raises(UserError, match="no usable pairs"):
        pcs.load_pairs()


def test_the_data_module_and_listing_know_the_source(fake_tree, capsys):
    from lightning_embed.cli.reporting import data
    from lightning_embed.data.datamodule import PairDataModule
    from lightning_embed.data.reading import builtin_sources

    assert "python-code" in builtin_sources()
    data()  # the listing does not spend minutes mining: it says how to
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("│ builtin:python-code"))
    assert "not mined yet" in line
    assert not pcs.cache_path().exists()
    dm = PairDataModule(train="builtin:python-code", batch_size=2)
    dm.prepare_data()
    assert "mining builtin:python-code once" in capsys.readouterr().out  # a first fit says why it waits
    dm.setup("fit")
    assert len(dm.train_examples) == 6 and len(dm.val_examples) == 2
    data()
    listing = capsys.readouterr().out
    line = next(line for line in listing.splitlines() if line.startswith("│ builtin:python-code"))
    cells = [cell.strip() for cell in line.split("│")]
    assert cells[2:4] == ["6", "2"] and cells[4].startswith(pcs.fingerprint()["train"])


def test_fit_on_the_source_writes_the_fingerprint_into_the_run_record(fake_tree, tiny_backbones, tmp_path):
    from lightning_embed.cli.app import main
    from lightning_embed.flops.records import read_runs

    root = tmp_path / "run"
    main(["fit", f"--model.backbone={tiny_backbones['llama']}", "--model.query_max_length=16",
          "--model.document_max_length=24", "--data.train=builtin:python-code", "--data.batch_size=2",
          f"--trainer.default_root_dir={root}", "--trainer.max_steps=2", "--trainer.logger=false",
          "--trainer.enable_progress_bar=false", "--trainer.enable_checkpointing=false",
          "--trainer.accelerator=cpu", f"--flops.runs_file={root}/runs.jsonl"])
    (record,) = read_runs(root / "runs.jsonl")
    fp = pcs.fingerprint()
    assert record.data["train"] == {"source": "builtin:python-code", "split": "train", "pairs": 6,
                                    "sha256": fp["train"], "versions": fp["versions"]}
    assert record.data["val"]["sha256"] == fp["val"] and record.data["val"]["pairs"] == 2
    assert record.data["test"] is None


@pytest.mark.slow
def test_the_real_source_is_large_and_split_by_package():
    """On the cached real source (mining takes minutes: `lightning-embed data` mines it once)."""
    import json

    path = pcs.cache_path()
    meta_path = path.with_suffix(".meta.json")
    if not meta_path.is_file():
        pytest.skip(f"builtin:python-code is not mined yet ({path}); run `lightning-embed data` once")
    meta = json.loads(meta_path.read_text())
    assert meta["counts"]["train"] >= 30_000 and meta["counts"]["val"] == pcs.VAL_SIZE
    assert set(meta["held_out"]) == set(pcs.HELD_OUT) and meta["versions"] == pcs.versions()
    pairs = pcs.load_pairs()
    val_packages = {p["package"] for p in pairs if p["split"] == "val"}
    assert val_packages <= set(pcs.HELD_OUT)
    assert not val_packages & {p["package"] for p in pairs if p["split"] == "train"}
    assert pcs.fingerprint() == meta["fingerprint"]
