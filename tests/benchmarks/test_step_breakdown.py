"""benchmarks/step_breakdown.py --smoke: the CPU step breakdown runs `fit` and splits its step into parts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_step_breakdown_smoke_splits_each_step_into_parts_that_add_up():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "step_breakdown.py"), "--smoke", "--steps", "2",
                             "--warmup", "1"], check=False, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["workload", "batch", "total"])
    columns = lines[header].split()
    assert "fit finished" not in result.stdout  # fit's own output goes to stderr: stdout is the report
    for workload, line in zip(("full", "lora"), lines[header + 1 :: 2]):
        row = dict(zip(columns, line.split()))
        assert row["workload"] == workload
        parts = [float(row[k]) for k in ("forward", "backward", "optimizer", "data", "callbacks")]
        total = float(row["total"])
        assert total > 0 and parts[0] > 0 and parts[1] > 0 and sum(parts) <= total * 1.05, row
        assert 0 < float(row["MFU"]) < 1 and float(row["tokens/s"]) > 0 and row["batch"] == "8", row
