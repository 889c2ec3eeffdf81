"""Quiet by default: a tiny full fit, its export and a load print no library warning, bar or report;
``--verbose`` (or ``LIGHTNING_EMBED_VERBOSE=1``) shows them again."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from lightning_embed.cli.quiet import VERBOSE_ENV, bitsandbytes_note, install_library_filters
from tests.cli.pair_files import write_pairs

# What a user cannot act on: warnings, deprecations, load reports and bars, Lightning's tips, bnb's kernel note.
NOISE = re.compile(r"warn|deprecat|LOAD REPORT|MISSING|Loading weights|Tip:|kernels|Total FLOPs|it/s\]", re.I)


def _run(args: list[str], cwd: Path, **env: str) -> str:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=cwd,
                          env={**os.environ, "PYTHONWARNINGS": "default", **env})
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def _fit(backbone: str, tmp_path: Path, *extra: str, **env: str) -> str:
    train = write_pairs(tmp_path / "pairs.jsonl", n=16)
    code = "from lightning_embed.cli.app import main; main()"
    return _run(["-c", code, "fit", f"--model.backbone={backbone}", "--model.query_max_length=16",
                 "--model.document_max_length=24", f"--data.train={train}", f"--data.val={train}",
                 "--data.batch_size=8", f"--trainer.default_root_dir={tmp_path / 'run'}", "--trainer.max_epochs=1",
                 "--trainer.accelerator=cpu", f"--flops.runs_file={tmp_path / 'runs.jsonl'}", *extra], tmp_path, **env)


def test_fit_export_and_load_print_no_noise(tiny_backbones, tmp_path):
    out = _fit(tiny_backbones["bert"], tmp_path)  # BERT: its export drops the pooler (the load report case)
    ckpt = next((tmp_path / "run").rglob("*.ckpt"))
    out += _run(["-c", "from lightning_embed.cli.app import main; main()", "export", str(ckpt), "-o",
                 str(tmp_path / "export")], tmp_path)
    out += _run(["-c", "import sys, lightning_embed\n"
                 "for path in sys.argv[1:]:\n    lightning_embed.load(path, device='cpu').encode(['a text'])\n",
                 str(tmp_path / "export"), str(ckpt)], tmp_path)
    noise = [line for line in out.splitlines() if NOISE.search(line)]
    assert not noise, "\n".join(noise)
    assert "fit finished" in out and "exported" in out  # the run did talk: what it did, where things went


def test_model_summary_shows_no_flops_it_did_not_count(tiny_backbones, tmp_path):
    out = _fit(tiny_backbones["llama"], tmp_path, "--trainer.enable_model_summary=true", "--trainer.max_steps=1")
    assert "Trainable params" in out  # the summary is there
    noise = [line for line in out.splitlines() if NOISE.search(line) or "Flops" in line or "FLOPs" in line]
    assert not noise, "\n".join(noise)


def test_verbose_shows_library_messages(tiny_backbones, tmp_path):
    out = _fit(tiny_backbones["bert"], tmp_path, "--verbose")
    assert NOISE.search(out), out  # e.g. Lightning's tips and its logging-interval warning


def test_verbose_environment_variable(monkeypatch):
    from lightning_embed.cli.quiet import verbose

    monkeypatch.setenv(VERBOSE_ENV, "1")
    assert verbose()
    monkeypatch.setenv(VERBOSE_ENV, "0")
    assert not verbose()


def test_bitsandbytes_kernel_note_waits_for_4bit_layers(caplog, monkeypatch):
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    install_library_filters()
    source = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        source.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s.", "no kernels")
        assert "gemm_4bit_forward" not in caplog.text  # held back on import
        bitsandbytes_note()  # what QLoRA's apply calls
        assert "gemm_4bit_forward" in caplog.text and "no kernels" in caplog.text


def test_bert_export_carries_the_base_pooler_so_loaders_report_nothing_missing(tiny_backbones, tmp_path, capfd):
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    from lightning_embed.models.export import export_checkpoint
    from tests.models.checkpoints import train_checkpoint

    ckpt, module = train_checkpoint(tiny_backbones["bert"], tmp_path / "run", steps=1)
    assert module.backbone.pooler is None  # training drops it
    out = export_checkpoint(ckpt, tmp_path / "export")
    assert module.backbone.pooler is None  # and the export leaves the module as it was
    hf_logging.set_verbosity_warning()
    capfd.readouterr()
    exported = AutoModel.from_pretrained(str(out))
    base = AutoModel.from_pretrained(tiny_backbones["bert"])
    report = capfd.readouterr()
    assert "MISSING" not in report.out + report.err and "LOAD REPORT" not in report.out + report.err
    assert torch.equal(exported.pooler.dense.weight, base.pooler.dense.weight)
