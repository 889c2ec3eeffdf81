"""Output a log file can read: plain progress lines of a fit piped to a file, and the end-of-run summary."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_embed.cli.terminal import EVERY_ENV, Heartbeat, console, progress_every
from lightning_embed.errors import UserError
from tests.cli.pair_files import write_pairs


def _fit_piped(backbone: str, tmp_path: Path, every: str) -> subprocess.CompletedProcess:
    train = write_pairs(tmp_path / "pairs.jsonl", n=48)
    args = ["fit", f"--model.backbone={backbone}", "--model.query_max_length=16", "--model.document_max_length=24",
            f"--data.train={train}", f"--data.val={train}", "--data.batch_size=8",
            f"--trainer.default_root_dir={tmp_path / 'run'}", "--trainer.max_epochs=1", "--trainer.accelerator=cpu",
            f"--flops.runs_file={tmp_path / 'runs.jsonl'}"]
    env = {**os.environ, EVERY_ENV: every}
    code = "from lightning_embed.cli.app import main; main()"
    # stdout is a pipe here, as in `lightning-embed fit ... > log.txt` or a cluster log.
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          env=env, cwd=tmp_path)


def test_piped_fit_prints_progress_lines_and_a_summary(tiny_backbones, tmp_path):
    done = _fit_piped(tiny_backbones["llama"], tmp_path, every="0")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    steps = [int(m.group(1)) for m in re.finditer(r"^step (\d+)/6 · epoch 1/1 · loss [\d.]+ · [\d,.]+ tokens/s · "
                                                  r"elapsed \d+:\d\d", out, re.M)]
    assert steps[0] == 1 and steps[-1] == 6 and len(steps) >= 6, out  # every step with a 0 s interval
    assert re.search(r"^held-out at step 6: loss [\d.]+ · .*ndcg@10 [\d.]+", out, re.M), out
    assert "Epoch 0/0" not in out and "it/s" not in out  # no live bar frame in a file

    summary = out[out.index("fit finished after 6 steps"):]
    ckpt = re.search(r"checkpoint \(best\): (\S+)", summary).group(1)
    assert (tmp_path / ckpt).is_file()
    line = int(re.search(r"run record: runs\.jsonl line (\d+) \(run_id (\w+)\)", summary).group(1))
    run_id = re.search(r"run_id (\w+)", summary).group(1)
    records = (tmp_path / "runs.jsonl").read_text().splitlines()
    assert json.loads(records[line - 1])["run_id"] == run_id
    assert re.search(r"resolved config: (\S+config\.yaml)", summary)
    assert (tmp_path / re.search(r"resolved config: (\S+)", summary).group(1)).is_file()
    logs = re.search(r"logs \(TensorBoard, CSV metrics\.csv\): (\S+)", summary)  # both by default, one folder
    assert logs and (tmp_path / logs.group(1) / "metrics.csv").is_file()
    assert list((tmp_path / logs.group(1)).glob("events.out.tfevents.*"))
    assert f"lightning-embed export {ckpt} -o " in summary
    assert re.search(r"lightning-embed evaluate \S+ --tasks retrieval:pairs\.jsonl", summary)


def test_default_interval_prints_first_and_last_step_only(tiny_backbones, tmp_path):
    done = _fit_piped(tiny_backbones["bert"], tmp_path, every="30")
    assert done.returncode == 0, done.stderr
    steps = re.findall(r"^step (\d+)/6 ", done.stdout, re.M)
    assert steps == ["1", "6"], done.stdout


def test_heartbeat_lines_are_rate_limited_and_close_with_a_total():
    stream = io.StringIO()
    beat = Heartbeat("encode", total=10, unit="texts", every=3600, stream=stream, always=True)
    for _ in range(10):
        beat(1)
    beat.done()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("encode: 1/10 texts") and "ETA" in lines[0]
    assert lines[1].startswith("encode: 10/10 texts") and lines[1].endswith("done")


def test_heartbeat_is_silent_on_a_terminal_stream():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    beat = Heartbeat("x", stream=stream, every=0)
    beat(5)
    beat.done()
    assert stream.getvalue() == ""


def test_tables_in_a_file_keep_their_natural_width(capsys):
    from rich.table import Table

    table = Table("name", "value")
    long_value = "x" * 300
    table.add_row("a-very-long-key-name", long_value)
    console().print(table)
    out = capsys.readouterr().out
    assert any(long_value in line for line in out.splitlines())


def test_bad_interval_is_a_user_error(monkeypatch):
    monkeypatch.setenv(EVERY_ENV, "soon")
    with pytest.raises(UserError, match=EVERY_ENV):
        progress_every()
