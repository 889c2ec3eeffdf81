"""Run records: schema round trip, atomic concurrent appends, damaged lines reported and never rewritten."""

from __future__ import annotations

import json

import pytest

from lightning_embed.errors import UserError
from lightning_embed.flops.records import SCHEMA_VERSION, RunRecord, append_run, check_runs_file, read_runs


def _record(**overrides) -> RunRecord:
    fields = dict(backbone="smollm2-135m", tuning="lora", tuning_args={"rank": 32}, total_params=135_000_000,
                  non_embedding_params=106_000_000, trainable_params=2_000_000, steps=10, examples=320,
                  tokens=25_000, padded_tokens=30_000, flops_model=1.5e15, flops_hardware=2.0e15, budget=1.5e15,
                  val_loss=1.25, metrics={"ndcg@10": 0.5, "recall@1": 0.3}, metrics_step=10, seed=0,
                  versions={"torch": "2.13.0"}, hparams={"learning_rate": 1e-4}, config={"model": {"backbone": "x"}})
    fields.update(overrides)
    return RunRecord(**fields)


def test_round_trip(tmp_path):
    path = tmp_path / "runs.jsonl"
    records = [_record(), _record(status="failed", error="RuntimeError: boom", val_loss=None, budget=None)]
    for r in records:
        append_run(path, r)
    assert read_runs(path) == records
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["schema_version"] == SCHEMA_VERSION for line in lines)


def test_non_finite_numbers_become_null_and_odd_objects_strings(tmp_path):
    path = tmp_path / "runs.jsonl"
    append_run(path, _record(val_loss=float("nan"), metrics={"ndcg@10": float("inf")}, config={"path": tmp_path}))
    (back,) = read_runs(path)
    assert back.val_loss is None and back.metrics == {"ndcg@10": None} and back.config == {"path": str(tmp_path)}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({**_record().to_dict(), "steps": "ten"}), "'steps' must be int"),
        (json.dumps({k: v for k, v in _record().to_dict().items() if k != "backbone"}), "'backbone' is missing"),
        (json.dumps({**_record().to_dict(), "schema_version": 2}), "newer"),
        (json.dumps({**_record().to_dict(), "status": "paused"}), "status must be one of"),
    ],
)
def test_damaged_line_is_reported_by_number_and_never_rewritten(tmp_path, line, reason):
    path = tmp_path / "runs.jsonl"
    append_run(path, _record())
    with path.open("a") as f:
        f.write(line + "\n")
    append_run(path, _record())
    before = path.read_bytes()
    with pytest.raises(UserError, match=rf"runs.jsonl.*line 2: .*{reason}"):
        read_runs(path)
    assert path.read_bytes() == before


def test_a_truncated_last_line_does_not_swallow_the_next_record(tmp_path):
    path = tmp_path / "runs.jsonl"
    append_run(path, _record())
    with path.open("a") as f:
        f.write('{"schema_version": 1, "backb')  # a writer died mid-line
    append_run(path, _record(run_id="after"))
    with pytest.raises(UserError, match="line 2:") as err:
        read_runs(path)
    assert "line 3" not in str(err.value)
    assert json.loads(path.read_text().splitlines()[2])["run_id"] == "after"


def _writer(path: str, who: int) -> None:
    for i in range(60):
        # ~40 kB lines: far beyond a pipe's atomic size, so only O_APPEND + one write keeps them whole.
        append_run(path, RunRecord(backbone="b", tuning="full", run_id=f"{who}-{i}", config={"pad": "x" * 40000}))


def test_concurrent_appends_never_interleave(tmp_path):
    import multiprocessing

    path = tmp_path / "runs.jsonl"
    # fork: the writers inherit the imports (a fresh interpreter would spend seconds importing torch).
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_writer, args=(str(path), w)) for w in range(4)]
    for p in writers:
        p.start()
    for p in writers:
        p.join(timeout=120)
    assert [p.exitcode for p in writers] == [0, 0, 0, 0]
    records = read_runs(path)
    assert len(records) == 240
    assert sorted(r.run_id for r in records) == sorted(f"{w}-{i}" for w in range(4) for i in range(60))


def test_runs_file_checks(tmp_path):
    nested = check_runs_file(tmp_path / "new" / "dir" / "runs.jsonl")
    assert nested.is_file() and nested.read_text() == ""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot append run records"):
        check_runs_file(blocker / "runs.jsonl")
    with pytest.raises(UserError, match="cannot read runs file"):
        read_runs(tmp_path / "missing.jsonl")


def test_laws_reader_understands_the_records(tmp_path):
    from lightning_embed.recipe.records import read_observations

    path = tmp_path / "runs.jsonl"
    append_run(path, _record())
    append_run(path, _record(status="interrupted"))
    observations, files = read_observations([path])
    assert files[0]["records"] == 2 and files[0]["completed"] == 1
    (obs,) = observations
    assert (obs.method, obs.setting, obs.n, obs.examples, obs.loss, obs.flops) == (
        "lora", {"rank": 32}, 106_000_000, 320, 1.25, 1.5e15)


def test_records_without_the_data_field_still_read(tmp_path):
    path = tmp_path / "runs.jsonl"
    data = {"train": {"source": "builtin:python-code", "split": "train", "pairs": 44_399, "sha256": "0123456789abcdef",
                      "versions": {"python": "3.11.7"}}, "val": None, "test": None}
    append_run(path, _record(data=data))
    old = _record().to_dict()
    del old["data"]  # written before the field existed
    with path.open("a") as handle:
        handle.write(json.dumps(old) + "\n")
    new, before = read_runs(path)
    assert new.data == data and before.data == {}
    with path.open("a") as handle:
        handle.write(json.dumps({**old, "data": "abc"}) + "\n")
    with pytest.raises(UserError, match="'data' must be dict"):
        read_runs(path)
