"""Two CPU processes (gloo): cross-device negatives, GradCache under DDP, Lightning's DDP and FSDP2.

Each multi-process check starts its processes once and runs every case inside them (interpreter start-up
dominates on a small machine). ``torch.multiprocessing.spawn`` drives the loss/gradient equalities, where
torch's own ``DistributedDataParallel`` averages the gradients exactly as Lightning's ``ddp`` does;
``torchrun`` launches the Lightning runs, as a user launches them (Lightning then sees the processes as
created externally and does not re-launch anything).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from lightning_embed.data.batches import PairBatch, PairExample
from lightning_embed.testing import assert_close_relative, close_mismatches

WORLD = 2
PER_RANK = 4  # examples per process; the global batch has WORLD * PER_RANK
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def examples(n: int, k: int) -> list[PairExample]:
    """Distinct toy pairs with k hard negatives each (texts of varied lengths, so padding varies)."""
    return [PairExample(f"query {i} " + "word " * (i % 3), f"document {i} about " + "topic " * (1 + i % 4),
                        tuple(f"negative {i} {j} " + "x " * j for j in range(k)), i) for i in range(n)]


def shard(batch: PairBatch, rank: int, world: int) -> PairBatch:
    """This rank's rows of a global batch, in the layout the rank's own collator would give them."""
    total, k = len(batch), batch.num_negatives
    b = total // world
    rows = slice(rank * b, (rank + 1) * b)
    negatives = slice(total + rank * b * k, total + (rank + 1) * b * k)
    docs = {key: torch.cat([v[rows], v[negatives]]) for key, v in batch.documents.items()}
    return PairBatch({key: v[rows] for key, v in batch.queries.items()}, docs, k, batch.positive_ids[rows])


def _grads(module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.requires_grad and p.grad is not None}


LORA = {"name": "lora", "rank": 4}
# (name, architecture, tuning, hard negatives, gradcache chunk size, data-parallel wrapper)
CASES = [
    ("ddp-in-batch", "gpt_neox", "full", 0, None, "ddp"),
    ("ddp-hard-negatives", "gpt_neox", "full", 2, None, "ddp"),
    ("ddp-gradcache", "llama", "full", 1, 3, "ddp"),
    ("ddp-gradcache-lora", "llama", LORA, 2, 3, "ddp"),
    ("ddp-gradcache-bert-one-sided", "bert", "full", 1, 2, "ddp"),
    # FSDP1 as Lightning's FSDPStrategy sets it up (enable_wrap + configure_model's wrap, root wrapped last);
    # Lightning's strategy itself needs a GPU, torch's FSDP runs on CPU.
    ("fsdp1-gradcache-lora", "llama", LORA, 1, 3, "fsdp1"),
    ("fsdp2-gradcache", "gpt_neox", "full", 1, 3, "fsdp2"),
    ("fsdp2-lora", "llama", LORA, 2, None, "fsdp2"),
]


def _wrap(module, wrapper: str, world: int):
    """The module wrapped for data parallelism, and a function returning its full (unsharded) gradients."""
    cpu = torch.device("cpu")
    if wrapper == "ddp":
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(module)
        ddp.allreduce_calls = 0

        def counting_hook(state, bucket):  # DDP's own all-reduce, counted
            ddp.allreduce_calls += 1
            return allreduce_hook(state, bucket)

        ddp.register_comm_hook(None, counting_hook)
        return ddp, lambda: _grads(module)
    if wrapper == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp.wrap import enable_wrap

        with enable_wrap(wrapper_cls=FSDP, use_orig_params=True, device_id=cpu):
            module._wrap_fsdp_units()
        root = FSDP(module, use_orig_params=True, device_id=cpu)

        def full_grads():
            with FSDP.summon_full_params(root, with_grads=True):
                return {n.replace("_fsdp_wrapped_module.", ""): g for n, g in _grads(module).items()}

        return root, full_grads
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule

    module._fully_shard(init_device_mesh("cpu", (world, 1), mesh_dim_names=("data_parallel", "tensor_parallel")))
    module.fsdp_units = sum(isinstance(m, FSDPModule) for m in module.modules())
    return module, lambda: {n: g.full_tensor() for n, g in _grads(module).items()}


@contextlib.contextmanager
def _counting_fsdp2_reductions():
    """Counts FSDP2's gradient reductions (one per unit and backward) into ``counter[0]``; None where this
    torch keeps them elsewhere (a private hook point)."""
    counter: list[int | None] = [None]
    try:
        import torch.distributed.fsdp._fully_shard._fsdp_param_group as group_module

        original = group_module.foreach_reduce
    except (ImportError, AttributeError):
        yield counter
        return
    counter[0] = 0

    def counting(*args, **kwargs):
        counter[0] += 1
        return original(*args, **kwargs)

    group_module.foreach_reduce = counting
    try:
        yield counter
    finally:
        group_module.foreach_reduce = original


def _worker(rank: int, world: int, port: int, backbones: dict[str, str], out: str) -> None:
    import torch.distributed as dist

    from lightning_embed.training.module import EmbeddingModule

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    results = {}
    for name, arch, tuning, k, chunk, wrapper in CASES:
        torch.manual_seed(0)
        # Padded batches on both sides: packing shapes matmuls differently per rank (float rounding only).
        module = EmbeddingModule(backbone=backbones[arch], tuning=tuning, query_max_length=16,
                                 document_max_length=24, symmetric="one-sided" not in name, pack_sequences=False)
        for pname, p in module.named_parameters():
            if "lora_" in pname:  # peft starts B at zero: perturb so every adapter weight gets a gradient
                p.data.normal_(0, 0.05)
        module.backbone.eval()  # no dropout: the concatenated batch must see the same network
        full = module.make_collator()(examples(world * PER_RANK, k))
        # Reference: one process, the concatenated batch, no caching, nothing gathered.
        module.loss_fn.gather_across_devices = False
        reference_loss = module(full)
        reference_loss.backward()
        reference = _grads(module)
        module.zero_grad(set_to_none=True)
        # Distributed: this rank's shard, gathered negatives, optional caching; gradients averaged.
        module.loss_fn.gather_across_devices = True
        module.gradcache_chunk_size = chunk
        wrapped, full_grads = _wrap(module, wrapper, world)
        with _counting_fsdp2_reductions() as reductions:
            loss = wrapped(shard(full, rank, world))
            loss.backward()
        got = full_grads()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        mean_loss /= world
        # Normwise, scaled to each gradient (lightning_embed.testing.tolerances): ranks and the single process
        # sum in other orders, by other BLAS kernels on other CPUs.
        errors = [f"loss {p}" for p in close_mismatches(mean_loss, reference_loss.detach())]
        errors += close_mismatches(got, reference)
        results[name] = {"errors": errors, "parameters": len(reference),
                         "nonzero": sum(bool(g.abs().sum() > 0) for g in reference.values()),
                         "allreduce_calls": getattr(wrapped, "allreduce_calls", None),
                         "reduce_calls": reductions[0], "fsdp_units": getattr(wrapped, "fsdp_units", None)}
        del wrapped
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)  # skip C++ static destructors, which can race gloo's threads at exit (docs/bugs.md)


@pytest.fixture(scope="module")
def distributed_results(tiny_backbones, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ddp") / "results.json"
    torch.multiprocessing.spawn(_worker, args=(WORLD, _free_port(), tiny_backbones, str(out)), nprocs=WORLD,
                                join=True)
    return json.loads(out.read_text())


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_distributed_equals_single_process_on_the_concatenated_batch(distributed_results, case):
    """Loss and every parameter gradient on 2 processes (cross-device negatives gathered with gradients,
    optional GradCache, DDP / FSDP / FSDP2) equal one process on the concatenated batch, within 1e-5."""
    result = distributed_results[case]
    assert result["parameters"] > 0 and result["nonzero"] == result["parameters"]
    assert result["errors"] == []
    if case.startswith("ddp"):
        # Tiny models fill one DDP bucket: one all-reduce per backward, however many GradCache mini-batches.
        assert result["allreduce_calls"] == 1
    if case == "fsdp2-gradcache" and result["reduce_calls"] is not None:
        # One gradient reduce-scatter per FSDP unit (blocks and backbone), however many mini-batches.
        assert result["fsdp_units"] >= 3 and result["reduce_calls"] == result["fsdp_units"]


# ---------------------------------------------------------------------------------------------- Lightning


def _torchrun(script: str, *args: str, timeout: int = 420) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", script, *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


_COMMON = textwrap.dedent('''
    import json, os, sys, warnings
    from pathlib import Path


    def _clean_exit():
        # Everything is written: leave without C++ static destructors, which can race gloo's threads at exit
        # ("terminate called without an active exception", SIGABRT in one rank after a finished run).
        import torch.distributed as dist
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    import lightning as L
    import torch

    from lightning_embed.data.datamodule import PairDataModule
    from lightning_embed.training.module import EmbeddingModule

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")


    def write_pairs(path, n, negatives):
        with open(path, "w") as f:
            for i in range(n):
                row = {"query": f"query {i} " + "word " * (i % 3),
                       "positive": f"document {i} about " + "topic " * (1 + i % 4)}
                if negatives:
                    row["negatives"] = [f"negative {i} {j} " + "x " * j for j in range(negatives)]
                f.write(json.dumps(row) + "\\n")
        return path


    def trainer(strategy, root, **kw):
        return L.Trainer(accelerator="cpu", devices=2, strategy=strategy, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=root, **kw)
''')

_DDP_SCRIPT = _COMMON + textwrap.dedent('''
    class GradRecorder(L.Callback):
        """Saves the (all-reduced) gradients of the first optimizer step, before clipping, on rank zero."""

        def __init__(self, path):
            self.path = path

        def on_before_optimizer_step(self, trainer, module, optimizer):
            if trainer.global_step == 0 and trainer.is_global_zero:
                torch.save({n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None},
                           self.path)


    from lightning_embed.flops.callback import FlopCallback

    backbone, out = sys.argv[1], Path(sys.argv[2])
    L.seed_everything(0)
    pairs = write_pairs(out / "pairs.jsonl", 32, 1)
    module = EmbeddingModule(backbone=backbone, query_max_length=16, document_max_length=24,
                             gradcache_chunk_size=3, warmup_ratio=0.0, lr_schedule="constant")
    # Held-out metrics of the untrained model on 26 pairs: global batches of 8 leave rank 0 two more rows.
    val = PairDataModule(train=str(pairs), val=str(write_pairs(out / "val.jsonl", 26, 1)), num_negatives=1,
                         batch_size=4)
    metrics = trainer("ddp", out, enable_checkpointing=False).validate(module, val, verbose=False)[0]
    if torch.distributed.get_rank() == 0:
        (out / "ddp_val.json").write_text(json.dumps(metrics))
    data = PairDataModule(train=str(pairs), num_negatives=1, batch_size=4)
    trainer("ddp", out, max_steps=2, enable_checkpointing=False, gradient_clip_val=1.0,
            callbacks=[GradRecorder(out / "ddp_grads.pt"),
                       FlopCallback(runs_file=str(out / "runs.jsonl"), log_every_n_steps=1)]).fit(module, data)
    _clean_exit()
''')


def test_lightning_ddp_with_gradcache_equals_one_process(tiny_backbones, tmp_path):
    """Lightning's ``ddp`` on 2 processes with GradCache and clipping: the first step's gradients equal one
    process on both ranks' batches; one run record, written once, counting the FLOP of both ranks; held-out
    retrieval metrics over a set that splits unevenly across ranks equal one process's."""
    import lightning as L

    from lightning_embed.flops.callback import FlopCallback

    script = tmp_path / "ddp.py"
    script.write_text(_DDP_SCRIPT)
    _torchrun(str(script), tiny_backbones["gpt_neox"], str(tmp_path))

    # One process, batch 8 = the two ranks' batches of 4 (the sampler packs the same global batches).
    L.seed_everything(0)
    from lightning_embed.data.datamodule import PairDataModule
    from lightning_embed.training.module import EmbeddingModule

    module = EmbeddingModule(backbone=tiny_backbones["gpt_neox"], query_max_length=16, document_max_length=24,
                             warmup_ratio=0.0, lr_schedule="constant", pack_sequences=False)
    data = PairDataModule(train=str(tmp_path / "pairs.jsonl"), num_negatives=1, batch_size=8)
    recorded = {}

    class Recorder(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if trainer.global_step == 0:
                recorded.update({n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None})

    val = PairDataModule(train=str(tmp_path / "pairs.jsonl"), val=str(tmp_path / "val.jsonl"), num_negatives=1,
                         batch_size=4)
    single_val = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                           enable_model_summary=False).validate(module, val, verbose=False)[0]
    ddp_val = json.loads((tmp_path / "ddp_val.json").read_text())
    retrieval = [k for k in single_val if k != "val/loss"]
    assert len(retrieval) >= 3  # ndcg@10, mrr@10, recall@k over all 26 pairs, gathered from both ranks
    for key in retrieval:
        assert ddp_val[key] == pytest.approx(single_val[key], abs=1e-6), key

    single_runs = tmp_path / "single.jsonl"
    L.Trainer(accelerator="cpu", devices=1, max_steps=2, logger=False, enable_progress_bar=False,
              enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp_path,
              callbacks=[Recorder(), FlopCallback(runs_file=str(single_runs), log_every_n_steps=1)]).fit(module, data)

    ddp = torch.load(tmp_path / "ddp_grads.pt", weights_only=True)
    assert ddp.keys() == recorded.keys() and len(ddp) > 0
    # Ranks pad their own batches, so rows differ from the single process's by float rounding only.
    assert_close_relative(ddp, recorded, what="first step's gradients, DDP against one process")

    records = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    single = json.loads(single_runs.read_text().splitlines()[0])
    assert len(records) == 1, "the run record must be written once, by rank zero"
    record = records[0]
    assert record["world_size"] == 2 and record["steps"] == single["steps"] == 2
    assert record["examples"] == single["examples"] > 0
    assert record["tokens"] == single["tokens"] > 0
    assert record["flops_model"] == pytest.approx(single["flops_model"], rel=1e-9)
    # GradCache's extra forward is hardware FLOP only.
    assert record["flops_hardware"] > single["flops_hardware"]


_FSDP2_SCRIPT = _COMMON + textwrap.dedent('''
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.strategies import ModelParallelStrategy
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from torch.distributed.fsdp import FSDPModule

    backbone, out = sys.argv[1], Path(sys.argv[2])
    pairs = write_pairs(out / "pairs.jsonl", 24, 1)
    summary = {}

    class CountBatches(L.Callback):
        batches = 0

        def on_train_batch_end(self, *args):
            self.batches += 1

    def fit(tag, tuning, root, ckpt_path=None, **model_kw):
        L.seed_everything(0)
        module = EmbeddingModule(backbone=backbone, tuning=tuning, query_max_length=16, document_max_length=24,
                                 learning_rate=1e-3, warmup_ratio=0.0, lr_schedule="constant", pack_sequences=False,
                                 **model_kw)
        initial = {n: p.detach().clone() for n, p in module.named_parameters()}
        counter = CountBatches()
        data = PairDataModule(train=str(pairs), val=str(pairs), num_negatives=1, batch_size=3)
        checkpoints = ModelCheckpoint(dirpath=root, every_n_train_steps=2, save_top_k=-1,
                                      filename="{step}")
        strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
        t = trainer(strategy, root, max_steps=4, limit_val_batches=1, val_check_interval=2,
                    num_sanity_val_steps=0, callbacks=[checkpoints, counter])
        t.fit(module, data, ckpt_path=ckpt_path)
        blocks = [m for m in module.backbone.modules() if isinstance(m, FSDPModule)]
        state = {k: v.full_tensor() if hasattr(v, "full_tensor") else v
                 for k, v in get_model_state_dict(module).items()}
        final = {n: p.full_tensor() for n, p in module.named_parameters()}
        moved = {n: not torch.equal(final[n], initial[n]) for n, p in module.named_parameters()}
        trainable = {n for n, p in module.named_parameters() if p.requires_grad}
        summary[tag] = {"global_step": t.global_step, "batches": counter.batches, "fsdp_units": len(blocks),
                        "trainable": len(trainable), "trained": sum(moved[n] for n in trainable),
                        "trainable_numel": sum(final[n].numel() for n in trainable),
                        "frozen_moved": sum(moved[n] for n in moved if n not in trainable),
                        "loss": float(t.callback_metrics["train/loss"]),
                        "checkpoints": sorted(p.name for p in Path(root).iterdir())}
        if t.is_global_zero:
            torch.save(state, out / f"{tag}.pt")

    for tag, tuning, kw in (("full", "full", {"gradient_checkpointing": True}),
                            ("lora", {"name": "lora", "rank": 4}, {"gradcache_chunk_size": 2})):
        fit(f"{tag}-straight", tuning, out / tag, **kw)
        fit(f"{tag}-resumed", tuning, out / f"{tag}-resumed", ckpt_path=str(out / tag / "step=2.ckpt"), **kw)
    if torch.distributed.get_rank() == 0:
        (out / "summary.json").write_text(json.dumps(summary))
    _clean_exit()
''')


def test_fsdp2_model_parallel_strategy_trains_and_resumes(tiny_backbones, tmp_path):
    """FSDP2 through Lightning's ModelParallelStrategy on 2 CPU processes: full fine-tuning (with activation
    checkpointing) and LoRA (with GradCache) train, save distributed checkpoint folders, and resuming
    from step 2 ends with the weights of the straight 4-step run."""
    script = tmp_path / "fsdp2.py"
    script.write_text(_FSDP2_SCRIPT)
    _torchrun(str(script), tiny_backbones["llama"], str(tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    for tag in ("full", "lora"):
        straight, resumed = summary[f"{tag}-straight"], summary[f"{tag}-resumed"]
        assert straight["global_step"] == resumed["global_step"] == 4
        assert (straight["batches"], resumed["batches"]) == (4, 2)  # the resumed run starts at step 2
        assert straight["trained"] == straight["trainable"] > 0 and straight["frozen_moved"] == 0
        assert straight["fsdp_units"] >= 3  # every block and the backbone
        assert straight["checkpoints"] == ["step=2.ckpt", "step=4.ckpt"]
        assert (tmp_path / tag / "step=2.ckpt").is_dir()  # Lightning's distributed checkpoint folder
        a = torch.load(tmp_path / f"{tag}-straight.pt", weights_only=True)
        b = torch.load(tmp_path / f"{tag}-resumed.pt", weights_only=True)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)
    assert summary["lora-straight"]["trainable_numel"] < summary["full-straight"]["trainable_numel"] / 4


# --------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("config", ["ddp", "fsdp", "fsdp2"])
def test_distributed_configs_parse(tiny_backbones, config, capsys):
    from lightning_embed.cli.app import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs" / f"{config}.yaml"),
              f"--model.backbone={tiny_backbones['llama']}", "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "strategy" in printed
