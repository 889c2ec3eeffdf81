"""Which rank failed first, for rank zero's run record (the 2-process runs are in test_distributed_workflow)."""

from __future__ import annotations

import time

from lightning_embed.training.rank_failures import error_line, first_failure, leave_note

GLOO = "DistBackendError: [gloo/transport/tcp/pair.cc:537] Read error: Connection closed by peer"


def test_rank_zero_records_the_failing_rank_not_the_broken_collective(tmp_path):
    runs = tmp_path / "runs.jsonl"
    start = time.time()
    leave_note(runs, 1, "failed", "RuntimeError: out of memory")
    status, error = first_failure(runs, start, (time.time(), "failed", GLOO))
    assert (status, error) == ("failed", "rank 1: RuntimeError: out of memory")
    assert list(tmp_path.iterdir()) == []  # notes are removed once read


def test_rank_zero_failing_first_keeps_its_own_error(tmp_path):
    runs = tmp_path / "runs.jsonl"
    start = time.time()
    own = (time.time(), "failed", "ValueError: bad batch")
    leave_note(runs, 1, "failed", GLOO)  # rank 1 only saw rank 0 go
    assert first_failure(runs, start, own) == ("failed", "ValueError: bad batch")


def test_notes_of_earlier_runs_are_ignored(tmp_path):
    runs = tmp_path / "runs.jsonl"
    leave_note(runs, 1, "failed", "RuntimeError: an earlier run")
    start = time.time() + 1
    assert first_failure(runs, start, (start + 1, "failed", GLOO), wait_s=0.2) == ("failed", GLOO)


def test_error_line_is_the_first_line():
    assert error_line(RuntimeError("out of cheese\ndetails")) == "RuntimeError: out of cheese"
    assert error_line(KeyboardInterrupt()) == "KeyboardInterrupt:"
