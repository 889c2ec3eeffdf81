"""benchmarks/gpu_check.py --smoke: the GPU check's code runs on CPU, so it cannot rot between GPU runs."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_smoke_prints_every_part_with_positive_numbers(tmp_path):
    prefix = tmp_path / "check"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--out",
                             str(prefix)], check=False, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = prefix.with_suffix(".txt").read_text()
    header = next(line for line in table.splitlines() if line.startswith("part "))
    for column in ("s/step", "real tok/s", "vs st-bf16", "MFU meas", "MFU sheet", "peak MiB", "note"):
        assert column in header
    assert "bf16 peak: measured" in table and table in result.stdout
    rows = json.loads(prefix.with_suffix(".json").read_text())["rows"]
    by_part: dict[str, list[dict]] = {}
    for row in rows:
        by_part.setdefault(row["part"], []).append(row)
    assert set(by_part) == {"grads", "full", "lora", "gradcache", "fsdp2", "ddp"}
    for part in ("full", "lora"):
        systems = {r["system"] for r in by_part[part] if r["note"] == "ok"}
        assert any("packed" in s for s in systems) and any("padded" in s for s in systems)
        assert any(r["compile"] == "on" and r["note"].startswith("skipped") for r in by_part[part])
    assert "sentence-transformers bf16" in {r["system"] for r in by_part["full"] if r["note"] == "ok"}
    assert by_part["ddp"][0]["note"].startswith("skipped: ")  # a reason, not a crash
    measured = [r for r in rows if r["real_tok_s"] is not None]
    assert len(measured) == 7  # 2 x (padded, packed), sentence-transformers (full), GradCache, FSDP2
    for r in measured:
        assert r["real_tok_s"] > 0 and r["s_per_step"] > 0 and r["mfu_measured"] > 0, r
    assert all(r["peak_mib"] > 0 for r in measured if r["part"] != "fsdp2")
    assert by_part["grads"][0]["note"].startswith("ok: relative difference")


def test_gpu_check_refuses_unknown_parts(tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", gpu_check)  # its dataclasses look their module up there
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # --smoke sets it: restored after the test
    spec.loader.exec_module(gpu_check)
    assert gpu_check.main(["--smoke", "--parts", "full,nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown ['nope']" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    assert gpu_check.datasheet_peak("NVIDIA H100 PCIe") == 756e12
    assert gpu_check.datasheet_peak("NVIDIA L40S") == 362.05e12 and gpu_check.datasheet_peak("NVIDIA L4") == 121e12
    assert gpu_check.datasheet_peak("Some Future GPU") is None
