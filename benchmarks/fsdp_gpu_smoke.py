"""GPU check of Lightning's FSDPStrategy (configs/fsdp.yaml): 2 training steps, checkpoint, export, load.

The CPU test suite runs FSDPStrategy everywhere but NCCL (tests/training/test_distributed_workflow.py); this script
is the part that needs GPUs. It trains a tiny random Llama (built locally: no download) on the bundled
``builtin:stdlib-code`` pairs for 2 steps with the config as shipped (FULL_SHARD, bf16-mixed, full state
dict, one process per visible GPU), then with ``state_dict_type: sharded`` (a distributed checkpoint
folder), exports each checkpoint and embeds with the export. Exits 0 after printing ``skipped: no GPU``
where there is none, 1 with the failing step otherwise.

    python benchmarks/fsdp_gpu_smoke.py [--workdir DIR] [--devices N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _fit(workdir: Path, backbone: Path, devices: str, name: str, *extra: str) -> Path:
    """Runs `lightning-embed fit` with configs/fsdp.yaml; returns the checkpoint it wrote."""
    root = workdir / name
    cmd = [sys.executable, "-m", "lightning_embed.cli.app", "fit", "--config", str(ROOT / "configs" / "fsdp.yaml"),
           f"--model.backbone={backbone}", "--model.query_max_length=32", "--model.document_max_length=64",
           "--data.train=builtin:stdlib-code", "--data.batch_size=8", "--data.max_train_examples=256",
           "--trainer.max_steps=2", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
           f"--trainer.devices={devices}", f"--trainer.default_root_dir={root}",
           f"--flops.runs_file={root / 'runs.jsonl'}", *extra]
    start = time.monotonic()
    result = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                            text=True, timeout=900)
    if result.returncode != 0:
        print(result.stdout[-4000:] + result.stderr[-8000:])
        raise SystemExit(f"FAILED: fit ({name}) exited {result.returncode}")
    checkpoints = sorted((root / "checkpoints").glob("*.ckpt"))
    if len(checkpoints) != 1:
        raise SystemExit(f"FAILED: fit ({name}) left {len(checkpoints)} checkpoints, expected 1")
    kind = "folder" if checkpoints[0].is_dir() else "file"
    print(f"ok: fit {name}: 2 steps in {time.monotonic() - start:.0f} s, checkpoint {kind} {checkpoints[0].name}")
    return checkpoints[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--devices", default="auto", help="GPUs to use (default: every visible one)")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("skipped: no GPU (FSDPStrategy needs CUDA; the CPU tests cover the rest)")
        return 0
    print(f"GPUs: {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
    import lightning_embed
    from lightning_embed.models.export import export_checkpoint
    from lightning_embed.testing import make_tiny_backbone

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp).expanduser()
        workdir.mkdir(parents=True, exist_ok=True)
        backbone = make_tiny_backbone("llama", workdir / "tiny-llama")
        texts = ["how do I sort a list?", "sorted(items) returns a new sorted list"]
        embeddings = {}
        for name, extra in (("full", ()), ("sharded", ("--trainer.strategy.init_args.state_dict_type=sharded",))):
            checkpoint = _fit(workdir, backbone, args.devices, name, *extra)
            folder = export_checkpoint(checkpoint, workdir / f"export-{name}", overwrite=True)
            vectors = lightning_embed.load(folder, device="cuda").encode(texts, prompt="query")
            embeddings[name] = torch.as_tensor(vectors).float().cpu()
            if not torch.isfinite(embeddings[name]).all():
                raise SystemExit(f"FAILED: export of {name} embeds to non-finite values")
            print(f"ok: export {name}: loads and embeds ({tuple(embeddings[name].shape)})")
        difference = float((embeddings["full"] - embeddings["sharded"]).norm() / embeddings["full"].norm())
        # Same seed and data; only the checkpoint format differs (bf16-mixed: loose).
        print(f"full vs sharded checkpoint embeddings: relative difference {difference:.2e}")
        if difference > 1e-2:
            raise SystemExit("FAILED: the two checkpoint formats give different models")
    print("passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
