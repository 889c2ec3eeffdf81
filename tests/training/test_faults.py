"""Never lose a run: exact resume, last.ckpt on signals, clean one-line errors (issue 16).

Tiny BERT backbones (dropout on, so the random state matters), fp32 on CPU. Signals are real: the
subprocess sends them to itself from a callback at a chosen step, so the test does not race the run.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lightning_embed.cli.app import main
from lightning_embed.flops.records import read_runs

ROOT = Path(__file__).resolve().parents[2]
WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()
# Timing fields differ between any two runs; the config names each run's own folder.
_TIMING = ("created", "duration_s", "train_time_s", "config")


class SignalAt(Callback):
    """Sends ``signal`` to this process at the end of optimizer step ``step`` (used by the subprocesses)."""

    def __init__(self, step: int = 3, signal: str = "SIGINT") -> None:
        self.step, self.signal = step, signal

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, self.signal))


def write_pairs(path: Path, n: int = 24) -> Path:
    with path.open("w") as f:
        for i in range(n):
            a, b = WORDS[i % len(WORDS)], WORDS[(i * 7 + 3) % len(WORDS)]
            f.write(json.dumps({"query": f"{a} {b} {i}", "positive": f"the {a} and the {b} number {i} here"}) + "\n")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_backbones):
    root = tmp_path_factory.mktemp("faults")
    return {"backbone": tiny_backbones["bert"], "train": write_pairs(root / "pairs.jsonl"), "root": root}


def fit_args(setup: dict, root: Path, *extra: str) -> list[str]:
    """6 steps: 2 epochs of 3 batches; step checkpoints every 2 steps (mid-epoch) and one per epoch."""
    return [
        "fit", f"--model.backbone={setup['backbone']}", "--model.learning_rate=1e-3", "--model.query_max_length=16",
        "--model.document_max_length=24", f"--data.train={setup['train']}", f"--data.val={setup['train']}",
        "--data.batch_size=8", "--data.max_val_examples=16", "--trainer.max_epochs=2", "--trainer.precision=32-true",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu", f"--trainer.default_root_dir={root}",
        "--trainer.num_sanity_val_steps=0", f"--flops.runs_file={root}/runs.jsonl",
        "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.every_n_train_steps=2",
        "--trainer.callbacks.save_top_k=-1", "--trainer.callbacks.filename=mid-{step}",
        "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.save_top_k=-1",
        "--trainer.callbacks.filename=end-{epoch}", *extra,
    ]


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    code = "from lightning_embed.cli.app import main; main()"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, env=env)


def final(root: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The weights of the final (epoch 1) checkpoint and the run record of a run folder."""
    ckpt = torch.load(next(root.rglob("end-epoch=1*.ckpt")), map_location="cpu", weights_only=True)
    record = read_runs(root / "runs.jsonl")[-1].to_dict()
    return ckpt["state_dict"], {k: v for k, v in record.items() if k not in _TIMING}


def assert_same_run(got: Path, want: Path, same_run_id: bool = True) -> None:
    (weights, record), (ref_weights, ref_record) = final(got), final(want)
    assert weights.keys() == ref_weights.keys()
    worst = max((weights[k] - ref_weights[k]).abs().max().item() for k in weights)
    assert worst == 0.0, f"resumed weights differ from the straight run's by up to {worst}"
    if not same_run_id:  # another run (not a resumption of the reference): its own id
        record.pop("run_id"), ref_record.pop("run_id")
    assert record == ref_record  # losses, metrics, FLOP and token totals, steps, run id


# ---------------------------------------------------------------------------------------------- exact resume

TUNINGS = {"full": [], "lora": ["--model.tuning.name=lora", "--model.tuning.rank=4", "--model.tuning.dropout=0.1"],
           "gradcache": ["--model.gradcache_chunk_size=4"]}


@pytest.fixture(scope="module")
def straight(setup):
    """The uninterrupted full fine-tuning run every interrupted one is compared with."""
    root = setup["root"] / "straight"
    main(fit_args(setup, root))
    return root


@pytest.mark.parametrize("tuning", list(TUNINGS))
def test_resume_is_bit_identical_from_mid_epoch_and_end_of_epoch(setup, straight, tmp_path, tuning):
    extra = TUNINGS[tuning]
    reference = straight if tuning == "full" else tmp_path / "straight"
    if tuning != "full":
        main(fit_args(setup, reference, *extra))
    mid = next(reference.rglob("mid-step=2*.ckpt"))  # step 2 of 3 in epoch 0
    end = next(reference.rglob("end-epoch=0*.ckpt"))  # after epoch 0 and its validation
    for name, ckpt in (("mid", mid), ("end", end)):
        main(fit_args(setup, tmp_path / name, *extra, f"--ckpt_path={ckpt}"))
        assert_same_run(tmp_path / name, reference)


# ---------------------------------------------------------------------------------------------- signals


def test_sigkill_mid_run_then_resume_from_last_ckpt_equals_the_straight_run(setup, straight, tmp_path):
    killed = run_cli(fit_args(setup, tmp_path, "--faults.checkpoint_every=2steps",
                              "--trainer.callbacks+=tests.training.test_faults.SignalAt", "--trainer.callbacks.step=5",
                              "--trainer.callbacks.signal=SIGKILL"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 4  # lost one step, not more
    assert not list(last.parent.glob(".last.ckpt*"))  # no temporary file left behind
    main(fit_args(setup, tmp_path, f"--ckpt_path={last}"))
    assert_same_run(tmp_path, straight, same_run_id=False)


def test_sigint_writes_last_ckpt_exits_130_and_the_printed_command_resumes_exactly(setup, straight, tmp_path):
    result = run_cli(fit_args(setup, tmp_path, "--trainer.callbacks+=tests.training.test_faults.SignalAt",
                              "--trainer.callbacks.step=2", "--trainer.callbacks.signal=SIGINT"))
    assert result.returncode == 130, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = tmp_path / "checkpoints" / "last.ckpt"
    step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert step in (2, 3)  # the step under way when the signal came is finished, then saved
    record = read_runs(tmp_path / "runs.jsonl")[-1]
    assert record.status == "interrupted" and str(last) in record.error and record.steps == step
    command = result.stderr.split("resume with: ")[-1].strip()
    assert command.startswith("lightning-embed fit --config ") and command.endswith(f"--ckpt_path {last}")
    main(command.split()[1:])  # in this process: the fit itself is the same
    assert_same_run(tmp_path, straight, same_run_id=False)


def test_sigterm_writes_last_ckpt_and_exits_143(setup, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:  # in this process (a real SIGTERM to itself): saves a start-up
        main(fit_args(setup, tmp_path, "--trainer.callbacks+=tests.training.test_faults.SignalAt",
                      "--trainer.callbacks.step=2", "--trainer.callbacks.signal=SIGTERM"))
    assert exit_.value.code == 143
    assert "interrupted by SIGTERM" in capsys.readouterr().err
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] in (2, 3)
    assert read_runs(tmp_path / "runs.jsonl")[-1].status == "interrupted"


@pytest.mark.parametrize("failing", [2, 3])  # saves: 1 last.ckpt@1, 2 last.ckpt@2, 3 ModelCheckpoint's mid-step=2
def test_a_full_disk_loses_no_earlier_checkpoint_or_run_record(setup, straight, tmp_path, monkeypatch, capsys,
                                                               failing):
    import shutil

    root = tmp_path / "run"
    (root / "checkpoints").mkdir(parents=True)
    shutil.copy(straight / "runs.jsonl", root / "runs.jsonl")
    before = (root / "runs.jsonl").read_bytes()
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):  # from the `failing`-th checkpoint on, the disk is full
        calls.append(f)
        if len(calls) >= failing:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(SystemExit) as exit_:
        main(fit_args(setup, root, "--faults.checkpoint_every=1"))
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "No space left on device" in error and "Traceback" not in error
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == failing - 1
    assert (root / "runs.jsonl").read_bytes().startswith(before)
    assert [r.status for r in read_runs(root / "runs.jsonl")][-1] == "failed"


# ---------------------------------------------------------------------------------------------- refusals


def expect_user_error(args: list[str], capsys, *fragments: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("lightning-embed: error:")]
    assert len(lines) == 1 and "Traceback" not in err and "usage:" not in err, err[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_ckpt_path_of_another_model_is_refused_listing_the_differences(setup, straight, tmp_path, capsys):
    ckpt = str(next(straight.rglob("mid-step=2*.ckpt")))
    expect_user_error(fit_args(setup, tmp_path, f"--ckpt_path={ckpt}", "--model.pooling=cls",
                               "--model.tuning.name=lora"), capsys, "pooling: checkpoint 'mean', config 'cls'",
                      "tuning:")
    assert not (tmp_path / "runs.jsonl").exists()  # refused before anything ran


@pytest.mark.parametrize("kind", ["missing", "truncated", "not a checkpoint"])
def test_bad_ckpt_path_is_one_line(setup, straight, tmp_path, capsys, kind):
    path = tmp_path / "bad.ckpt"
    if kind == "truncated":
        data = next(straight.rglob("mid-step=2*.ckpt")).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "not a checkpoint":
        path.write_text("hello\n")
    expect_user_error(fit_args(setup, tmp_path / "run", f"--ckpt_path={path}"), capsys, "bad.ckpt")


def test_unwritable_outputs_are_refused_before_any_work(setup, straight, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    expect_user_error(fit_args(setup, blocker / "run"), capsys, "trainer.default_root_dir")
    ckpt = str(next(straight.rglob("mid-step=2*.ckpt")))
    expect_user_error(["export", ckpt, "-o", str(blocker / "model")], capsys, "--output")
    import lightning_embed.evaluation.evaluate as evaluate

    monkeypatch.setattr(evaluate, "run_mteb", lambda *a, **k: pytest.fail("scored before checking --output"))
    task = ROOT / "examples" / "tasks" / "stdlib-code-retrieval.jsonl"
    expect_user_error(["evaluate", ckpt, "--tasks", f"retrieval:{task}", "-o", str(blocker / "x" / "r.json")],
                      capsys, "r.json")
    expect_user_error(["recipe", "--budget", "1e15", "--write_config", str(blocker / "c.yaml")], capsys, "c.yaml")
    laws = ROOT / "lightning_embed" / "resources" / "laws"
    laws_file = next(laws.glob("*.yaml"))
    expect_user_error(["laws", "plot", str(laws_file), "-o", str(blocker / "p.png")], capsys, "p.png")


def test_data_file_io_error_is_one_line(setup, tmp_path, capsys, monkeypatch):
    real_open = Path.open

    def failing_open(self, *args, **kwargs):
        if self.name == "pairs.jsonl":
            raise OSError(errno.EIO, "Input/output error")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", failing_open)
    expect_user_error(fit_args(setup, tmp_path), capsys, "Input/output error", "pairs.jsonl")


def test_max_steps_zero_is_refused(setup, tmp_path, capsys):
    expect_user_error(fit_args(setup, tmp_path, "--trainer.max_steps=0"), capsys, "max_steps=0")
    assert not (tmp_path / "runs.jsonl").exists()


def test_config_mistakes_are_one_line_without_the_usage(setup, tmp_path, capsys):
    line = expect_user_error(fit_args(setup, tmp_path, "--model.no_such_option=1"), capsys, "no_such_option")
    assert line.endswith("see `lightning-embed fit --help`")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  backbone: [oops\ntrainer: {}\n")
    expect_user_error(["fit", "--config", str(bad)], capsys, str(bad), "line 2")


# ---------------------------------------------------------------------------------------------- security


def test_trust_remote_code_is_never_read_from_a_checkpoint_or_export(setup, straight, tmp_path, monkeypatch):
    import transformers

    import lightning_embed.training.module as module
    from lightning_embed import load
    from lightning_embed.models.export import export_checkpoint

    ckpt = torch.load(next(straight.rglob("mid-step=2*.ckpt")), map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["trust_remote_code"] = True  # a crafted checkpoint
    crafted = tmp_path / "crafted.ckpt"
    torch.save(ckpt, crafted)
    seen = []
    for name in ("load_backbone", "load_tokenizer"):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _real=real, **k: seen.append(k["trust_remote_code"])
                            or _real(*a, **k))
    load(crafted, device="cpu")
    folder = export_checkpoint(crafted, tmp_path / "export")
    assert seen and not any(seen)
    from lightning_embed.models.encoder import EXPORT_CONFIG

    assert json.loads((folder / EXPORT_CONFIG).read_text())["hparams"]["trust_remote_code"] is True
    real_auto = transformers.AutoModel.from_pretrained
    asked = []
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained",
                        lambda *a, **k: asked.append(k.get("trust_remote_code")) or real_auto(*a, **k))
    load(folder, device="cpu")
    assert asked == [False]


def test_slurm_requeue_signal_writes_last_ckpt_and_training_goes_on(setup, tmp_path, monkeypatch):
    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "faults", "SLURM_JOB_ID": "1", "SLURM_PROCID": "0",
                       "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol: Lightning's requeue fails with a warning, harmlessly
    main(fit_args(setup, tmp_path, "--trainer.plugins=lightning.fabric.plugins.environments.SLURMEnvironment",
                  "--trainer.callbacks+=tests.training.test_faults.SignalAt", "--trainer.callbacks.step=2",
                  "--trainer.callbacks.signal=SIGUSR1"))
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] in (2, 3)
    assert read_runs(tmp_path / "runs.jsonl")[-1].status == "completed"  # the requeue signal does not stop the run
