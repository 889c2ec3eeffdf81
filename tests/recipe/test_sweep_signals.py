"""Stopping a running sweep: the running fit checkpoints before the sweep exits (docs/bugs.md)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lightning_embed.recipe.sweep import sweep_plan

# A stand-in for `lightning-embed fit`: prints steadily; on SIGTERM it keeps printing a while (as Lightning's
# teardown does) and only then writes its checkpoint. With an unread pipe it would die at the first print.
FAKE_FIT = r"""
import signal, sys, time
from pathlib import Path

def stop(signum, frame):
    for i in range(2000):
        print(f"saving checkpoint {i}", flush=True)
    Path("saved").write_text("last.ckpt")
    sys.exit(0)

signal.signal(signal.SIGTERM, stop)
Path("started").write_text("yes")
while True:
    print("step", flush=True)
    time.sleep(0.01)
"""

RUN_SWEEP = r"""
import sys
from lightning_embed.recipe.sweep import run_sweep
run_sweep(sys.argv[1], command=[sys.executable, sys.argv[2]])
"""


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# SIGINT_IGNORED: started as a background job of a script (`cmd &`, nohup), which ignores SIGINT and Python
# then leaves it ignored; `kill -INT` must still stop the sweep (docs/bugs.md).
@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "SIGINT_IGNORED"])
def test_a_stopped_sweep_lets_the_running_fit_write_its_checkpoint(tmp_path, how):
    sweep_plan(tmp_path, budgets=[1e15], models="pythia-14m", methods=["full"])
    fake = tmp_path / "fake_fit.py"
    fake.write_text(FAKE_FIT)
    sweep = subprocess.Popen([sys.executable, "-c", RUN_SWEEP, str(tmp_path), str(fake)], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             preexec_fn=_ignore_sigint if how == "SIGINT_IGNORED" else None,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    deadline = time.monotonic() + 60
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline and sweep.poll() is None, sweep.communicate()[1][-2000:]
        time.sleep(0.05)
    sweep.send_signal(getattr(signal, how.removesuffix("_IGNORED")))  # to the sweep only, as `kill PID` does
    _, err = sweep.communicate(timeout=120)
    assert sweep.returncode != 0  # the sweep stops ...
    assert (tmp_path / "saved").read_text() == "last.ckpt", err[-2000:]  # ... after the fit checkpointed
    assert b"BrokenPipeError" not in err
    (log,) = (tmp_path / "runs").glob("*/fit.log")
    assert b"saving checkpoint 1999" in log.read_bytes()  # every line the fit printed while stopping was kept
