"""The distributed workflow end to end on 2 CPU processes (gloo), through the CLI as a user runs it.

One ``torchrun`` launch runs several ``lightning-embed fit`` commands in the same two processes
(interpreter start-up dominates on a small machine): data too small for the processes (refused before
training), DDP, FSDP2 (ModelParallelStrategy, a distributed checkpoint folder) and Lightning's
FSDPStrategy (configs/fsdp.yaml, sharded state dict). The checks then export and evaluate the folders
directly. Two more launches make rank 1 fail: in its training step, and while writing a checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
WORLD = 2
PARITY = 1e-5  # normwise relative difference of embeddings

# Runs lightning-embed commands separated by "::" in this process, records each one's exit code, then
# leaves without C++ static destructors (they can race gloo's threads at exit; see docs/bugs.md).
_RUNNER = textwrap.dedent('''
    import json, os, sys

    out, args = sys.argv[1], sys.argv[2:]
    commands, current = [], []
    for arg in args:
        if arg == "::":
            commands.append(current)
            current = []
        else:
            current.append(arg)
    commands.append(current)
    exec(os.environ.get("INJECT", ""))  # the failure tests' fault, on one rank

    from lightning_embed.cli.app import main

    codes = []
    for command in commands:
        try:
            main(command)
            codes.append(0)
        except SystemExit as exit_info:
            codes.append(exit_info.code if isinstance(exit_info.code, int) else int(exit_info.code is not None))
        except BaseException:
            import traceback

            traceback.print_exc()
            codes.append(1)
    with open(os.path.join(out, "codes.rank" + os.environ["RANK"] + ".json"), "w") as handle:
        json.dump(codes, handle)
    import torch.distributed as dist

    if not any(codes) and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(max(codes))
''')

# Lightning's FSDPStrategy, unchanged but for the device: the trainer accepts FSDP only on GPUs (by exact
# type, so a subclass passes) and Lightning hands torch's FSDP device_id=None on CPU, where it wants "cpu".
_CPU_FSDP = textwrap.dedent('''
    import torch
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp import FullyShardedDataParallel

    _init = FullyShardedDataParallel.__init__


    def _cpu_init(self, *args, **kwargs):
        if kwargs.get("device_id") is None:
            kwargs["device_id"] = torch.device("cpu")
        _init(self, *args, **kwargs)


    FullyShardedDataParallel.__init__ = _cpu_init


    class CPUFSDPStrategy(FSDPStrategy):
        def _determine_device_ids(self):
            return None  # gloo barriers take no device ids
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_pairs(path: Path, n: int, tag: str) -> Path:
    with path.open("w") as handle:
        for i in range(n):
            handle.write(json.dumps({"query": f"{tag} query {i} " + "word " * (i % 3),
                                     "positive": f"{tag} document {i} about " + "topic " * (1 + i % 4)}) + "\n")
    return path


def _launch(root: Path, commands: list[list[str]], inject: str = "", timeout: int = 300):
    """Starts 2 processes with torchrun running the commands; returns (result, codes per rank, seconds)."""
    (root / "runner.py").write_text(_RUNNER)
    (root / "cpu_fsdp.py").write_text(_CPU_FSDP)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": f"{ROOT}{os.pathsep}{root}", "INJECT": inject}
    args = [a for i, command in enumerate(commands) for a in ([] if i == 0 else ["::"]) + command]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(root / "runner.py"), str(root), *args]
    start = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=root)
    seconds = time.monotonic() - start
    codes = {}
    for rank in range(WORLD):
        path = root / f"codes.rank{rank}.json"
        codes[rank] = json.loads(path.read_text()) if path.is_file() else None
    return result, codes, seconds


def _fit(backbone: str, root: Path, name: str, config: str, train: Path, val: Path | None, *extra: str) -> list[str]:
    args = ["fit", "--config", str(ROOT / "configs" / config), f"--model.backbone={backbone}",
            "--model.learning_rate=1e-3", "--model.warmup_ratio=0", "--model.lr_schedule=constant",
            "--model.query_max_length=16", "--model.document_max_length=24", f"--data.train={train}",
            "--data.batch_size=4", "--trainer.max_epochs=1", "--trainer.logger=false",
            "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu", f"--trainer.devices={WORLD}",
            "--trainer.precision=32-true", f"--trainer.default_root_dir={root / name}",
            f"--flops.runs_file={root / name / 'runs.jsonl'}"]
    if val is not None:
        args += [f"--data.val={val}", "--data.val_batch_size=16"]
    return args + list(extra)


def _checkpoint(root: Path, name: str) -> Path:
    (found,) = (root / name / "checkpoints").glob("*.ckpt")
    return found


def _record(root: Path, name: str) -> dict:
    (line,) = (root / name / "runs.jsonl").read_text().splitlines()
    return json.loads(line)


TEXTS = [f"held query {i} word" for i in range(6)] + ["held document 3 about topic topic"]


def _relative(a, b) -> float:
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def workflow(tiny_backbones, tmp_path_factory) -> dict:
    """One torchrun launch: the refused inputs, then DDP, FSDP2 and FSDP fits of the same 2 steps."""
    root = tmp_path_factory.mktemp("workflow")
    backbone = tiny_backbones["llama"]
    train = _write_pairs(root / "train.jsonl", 16, "train")  # batch 4 x 2 processes: 2 steps per epoch
    val = _write_pairs(root / "val.jsonl", 16, "held")  # one val batch of 16 for 2 processes: too few before
    tiny = _write_pairs(root / "tiny.jsonl", 6, "tiny")
    one = _write_pairs(root / "one.jsonl", 1, "one")
    fsdp = ["--trainer.strategy.class_path=cpu_fsdp.CPUFSDPStrategy",
            "--trainer.strategy.init_args.state_dict_type=sharded"]  # "full" crashes gloo on CPU: docs/bugs.md
    commands = [_fit(backbone, root, "too-few-train", "ddp.yaml", tiny, None),
                _fit(backbone, root, "too-few-val", "ddp.yaml", train, one),
                _fit(backbone, root, "ddp", "ddp.yaml", train, val),
                _fit(backbone, root, "fsdp2", "fsdp2.yaml", train, val),
                _fit(backbone, root, "fsdp", "fsdp.yaml", train, val, *fsdp)]
    result, codes, seconds = _launch(root, commands)
    return {"root": root, "result": result, "codes": codes, "seconds": seconds, "val": val}


def test_too_small_data_fails_before_training_on_every_rank(workflow):
    """Training data without one global batch, or a held-out set with fewer pairs than processes: every
    rank exits 2 with one line saying how many are needed, before any training step (no run record)."""
    codes, stderr = workflow["codes"], workflow["result"].stderr
    assert codes[0] is not None and codes[1] is not None, stderr[-3000:]
    assert codes[0][:2] == codes[1][:2] == [2, 2]
    assert stderr.count("has 6 training examples, fewer than one batch (batch_size=4 x 2 process(es))") == WORLD
    assert stderr.count("has 1 pair, too few to give each of the 2 processes a batch (a batch holds distinct "
                        "positives): it needs at least 2") == WORLD
    # No traceback from the ranks (torchrun prints its own, naming the exit codes).
    assert not re.search(r'File "[^"]*(lightning|lightning_embed)/', stderr), stderr[-3000:]
    for name in ("too-few-train", "too-few-val"):
        assert not (workflow["root"] / name / "runs.jsonl").exists()
        assert not (workflow["root"] / name / "checkpoints").exists()


def test_small_validation_set_is_spread_over_ranks_and_scored_once(workflow):
    """16 held-out pairs with val_batch_size 16 on 2 processes (no full batch per rank): every rank gets a
    batch, and the retrieval metrics equal one process scoring all 16 pairs with the saved model."""
    import lightning as L

    from lightning_embed.data.datamodule import PairDataModule
    from lightning_embed.models.encoder import load_module

    assert workflow["codes"][0][2] == workflow["codes"][1][2] == 0, workflow["result"].stderr[-3000:]
    root = workflow["root"]
    record = _record(root, "ddp")
    assert record["status"] == "completed" and record["steps"] == 2 and record["world_size"] == 2
    module = load_module(_checkpoint(root, "ddp"))
    data = PairDataModule(train=str(workflow["val"]), val=str(workflow["val"]), batch_size=16)
    single = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                       enable_model_summary=False).validate(module, data, verbose=False)[0]
    assert set(record["metrics"]) == {k.removeprefix("val/") for k in single if k != "val/loss"}
    for key, value in record["metrics"].items():
        assert value == pytest.approx(single[f"val/{key}"], abs=1e-6), key


def test_fsdp2_folder_exports_and_evaluates_like_ddp(workflow, tmp_path, capsys):
    """FSDP2 writes a distributed checkpoint folder; `export`, `evaluate` and `load` take it as it is,
    and its embeddings equal the same 2 steps under DDP (same seed and data) within 1e-5."""
    import lightning_embed
    from lightning_embed.cli.app import main

    assert workflow["codes"][0][3] == workflow["codes"][1][3] == 0, workflow["result"].stderr[-3000:]
    root = workflow["root"]
    folder = _checkpoint(root, "fsdp2")
    assert folder.is_dir() and sorted(p.name for p in folder.iterdir() if p.suffix == ".distcp") == \
        ["__0_0.distcp", "__1_0.distcp"]
    ddp = lightning_embed.load(_checkpoint(root, "ddp"), device="cpu").encode(TEXTS, prompt="query")
    untrained = lightning_embed.load(lightning_embed.load(folder, device="cpu").info["hparams"]["backbone"],
                                     device="cpu").encode(TEXTS, prompt="query")
    assert _relative(untrained, ddp) > 100 * PARITY  # the 2 steps moved the model: the parity means something

    loaded = lightning_embed.load(folder, device="cpu")
    assert loaded.info["kind"] == "checkpoint" and loaded.info["global_step"] == 2
    assert _relative(loaded.encode(TEXTS, prompt="query"), ddp) < PARITY

    main(["export", str(folder), "-o", str(tmp_path / "model")])
    assert "exported" in capsys.readouterr().out
    exported = lightning_embed.load(tmp_path / "model", device="cpu")
    assert _relative(exported.encode(TEXTS, prompt="query"), ddp) < PARITY
    meta = json.loads((tmp_path / "model" / "lightning_embed.json").read_text())
    assert meta["training"]["global_step"] == 2 and meta["training"]["flops"]["examples"] == 16

    results = tmp_path / "scores.json"
    main(["evaluate", str(folder), "--tasks", f"retrieval:{workflow['val']}", "-o", str(results)])
    main(["evaluate", str(tmp_path / "model"), "--tasks", f"retrieval:{workflow['val']}", "-o",
          str(tmp_path / "scores-export.json")])
    from_folder = json.loads(results.read_text())["main_scores"]
    from_export = json.loads((tmp_path / "scores-export.json").read_text())["main_scores"]
    assert len(from_folder) == 1 and from_folder == pytest.approx(from_export, abs=1e-6)
    assert 0 < next(iter(from_folder.values())) <= 1


def test_fsdp_strategy_config_trains_and_saves_a_complete_folder_on_cpu(workflow, tmp_path):
    """configs/fsdp.yaml's FSDPStrategy (FULL_SHARD, use_orig_params, activation checkpointing, the module's
    own wrapping policy) on 2 CPU processes, all but NCCL: 2 steps train, the sharded state dict is a
    complete distributed checkpoint folder (both shards, index, Lightning's meta.pt), and export reads it."""
    import lightning_embed
    from lightning_embed.models.export import export_checkpoint

    assert workflow["codes"][0][4] == workflow["codes"][1][4] == 0, workflow["result"].stderr[-3000:]
    root = workflow["root"]
    folder = _checkpoint(root, "fsdp")
    assert (folder / ".metadata").is_file() and (folder / "meta.pt").is_file()
    assert len(list(folder.glob("*.distcp"))) == WORLD
    record = _record(root, "fsdp")
    assert record["status"] == "completed" and record["steps"] == 2 and record["world_size"] == WORLD
    assert record["hparams"]["gradient_checkpointing"] is True
    exported = lightning_embed.load(export_checkpoint(folder, tmp_path / "model"), device="cpu")
    untrained = lightning_embed.load(record["hparams"]["backbone"], device="cpu")
    assert _relative(exported.encode(TEXTS, prompt="query"), untrained.encode(TEXTS, prompt="query")) > 100 * PARITY


def test_fsdp_strategy_matches_ddp_on_cpu(workflow):
    """The same 2 steps under FSDPStrategy and DDP give the same embeddings within 1e-5."""
    import lightning_embed

    root = workflow["root"]
    fsdp = lightning_embed.load(_checkpoint(root, "fsdp"), device="cpu").encode(TEXTS, prompt="query")
    ddp = lightning_embed.load(_checkpoint(root, "ddp"), device="cpu").encode(TEXTS, prompt="query")
    assert _relative(fsdp, ddp) < PARITY


# --------------------------------------------------------------------------------------------- failures

_FAIL_IN_STEP = textwrap.dedent('''
    if os.environ["RANK"] == "1":
        from lightning_embed.training.module import EmbeddingModule

        _step = EmbeddingModule.training_step

        def _failing_step(self, batch, batch_idx):
            if self.trainer.global_step == 1:
                raise RuntimeError("injected failure on rank 1 at step 1")
            return _step(self, batch, batch_idx)

        EmbeddingModule.training_step = _failing_step
''')

_FAIL_IN_SAVE = textwrap.dedent('''
    if os.environ["RANK"] == "1":
        from torch.distributed.checkpoint import FileSystemWriter

        _write, _calls = FileSystemWriter.write_data, []

        def _failing_write(self, plan, planner):
            _calls.append(1)
            if len(_calls) == 2:  # the step-2 checkpoint: rank 0 writes its shard, rank 1 cannot
                raise OSError("No space left on device (injected on rank 1)")
            return _write(self, plan, planner)

        FileSystemWriter.write_data = _failing_write
''')


@pytest.mark.parametrize("where", ["step", "save"])
def test_failure_on_one_rank_stops_every_rank(tiny_backbones, tmp_path, where):
    """Rank 1 raises (in its training step at step 1, or writing its shard of the step-2 checkpoint): both
    processes exit non-zero within seconds, the one run record says `failed` with rank 1's error line,
    and the checkpoint folder holds only complete shard sets (step 1's)."""
    train = _write_pairs(tmp_path / "train.jsonl", 16, "train")
    fit = _fit(tiny_backbones["llama"], tmp_path, "run", "fsdp2.yaml", train, None, "--trainer.max_steps=4",
               "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
               "--trainer.callbacks.every_n_train_steps=1", "--trainer.callbacks.save_top_k=-1",
               f"--trainer.callbacks.dirpath={tmp_path / 'ckpt'}")
    result, codes, seconds = _launch(tmp_path, [fit], inject=_FAIL_IN_STEP if where == "step" else _FAIL_IN_SAVE,
                                     timeout=240)
    assert result.returncode != 0
    assert codes[1] == [1], result.stderr[-3000:]
    assert codes[0] != [0]  # rank 0 raised too (its collective broke), or torchrun ended it
    assert seconds < 120  # no collective waits out its timeout
    record = _record(tmp_path, "run")
    assert record["status"] == "failed"
    expected = ("rank 1: RuntimeError: injected failure on rank 1 at step 1" if where == "step" else
                "rank 1: CheckpointException (rank 1): OSError: No space left on device (injected on rank 1)")
    assert record["error"] == expected
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["epoch=0-step=1.ckpt"]
    assert not list(tmp_path.glob("runs.jsonl.rank*.error")) and not list((tmp_path / "run").glob("*.error"))


def test_weight_decay_groups_survive_fsdp1_flat_views(tiny_backbones):
    """FSDP1 (use_orig_params) makes every parameter a 1-D view of its shard before configure_optimizers:
    the weight matrices must still get weight decay, norms and biases none (as without FSDP)."""
    from types import SimpleNamespace

    from lightning_embed.training.module import EmbeddingModule

    module = EmbeddingModule(backbone=tiny_backbones["llama"], weight_decay=0.1)
    module._trainer = SimpleNamespace(estimated_stepping_batches=10, strategy=None)  # one process
    unsharded = module.configure_optimizers()["optimizer"].param_groups
    module.configure_model()  # Lightning's hook, before any wrapping: notes the matrices
    with torch.no_grad():
        for p in module.backbone.parameters():
            p.data = p.data.flatten()  # what FSDP1's sharded views look like
    sharded = module.configure_optimizers()["optimizer"].param_groups
    assert [(g["weight_decay"], len(g["params"])) for g in sharded] == \
        [(g["weight_decay"], len(g["params"])) for g in unsharded]
    assert unsharded[0]["weight_decay"] == 0.1 and len(unsharded[0]["params"]) > len(unsharded[1]["params"]) > 0
