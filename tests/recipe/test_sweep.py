"""``sweep plan`` and ``sweep run`` (lightning_embed/recipe/sweep.py): configs per point, skips, resumes, failures."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from lightning_embed.errors import UserError
from lightning_embed.recipe.sweep import load_manifest, run_sweep, sweep_plan


def test_sweep_plan_writes_one_config_per_point(tmp_path):
    points = sweep_plan(tmp_path, budgets=[1e14, 1e15], models="smollm2-135m-truncated",
                        methods=["full", "lora", "bias"], lora_ranks=[8, 32], min_steps=10)
    manifest = yaml.safe_load((tmp_path / "sweep.yaml").read_text())
    # bias cannot tune Llama-style models (no biases): those points are left out, with the reason.
    assert any("bias cannot tune" in s for s in manifest["skipped"])
    assert len(points) == len(manifest["points"]) == len(list((tmp_path / "configs").glob("*.yaml")))
    assert {p.method for p in points} == {"full", "lora"} and {p.setting.get("rank") for p in points} >= {8, 32}
    p = next(p for p in points if p.method == "lora" and p.setting == {"rank": 32} and p.budget == 1e15)
    config = yaml.safe_load((tmp_path / p.config).read_text())
    assert config["model"]["tuning"] == {"name": "lora", "rank": 32}
    assert config["trainer"]["default_root_dir"] == f"runs/{p.name}"
    (ckpt,) = config["trainer"]["callbacks"]
    flop = config["flops"]
    assert flop["max_flops"] == 1e15 and flop["runs_file"] == "runs.jsonl"
    assert ckpt["init_args"]["save_last"] is True and ckpt["init_args"]["dirpath"] == f"runs/{p.name}/checkpoints"
    import inspect

    from lightning.pytorch.callbacks import ModelCheckpoint

    assert ckpt["class_path"] == "lightning.pytorch.callbacks.ModelCheckpoint"
    assert set(ckpt["init_args"]) <= set(inspect.signature(ModelCheckpoint.__init__).parameters)
    with pytest.raises(UserError, match="exists"):
        sweep_plan(tmp_path, budgets=[1e15])
    with pytest.raises(UserError) as err:
        sweep_plan(tmp_path / "b", budgets=[], lora_ranks=[0], freeze_shares=[1.5])
    assert "at least one budget" in str(err.value) and "rank 0" in str(err.value) and "1.5" in str(err.value)


def test_sweep_plan_keeps_base_settings_and_sets_rates_per_method(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"model": {"learning_rate": 3e-5, "document_max_length": 64, "temperature": 0.05},
                                    "trainer": {"num_sanity_val_steps": 0}}))
    points = sweep_plan(tmp_path / "s", budgets=[1e14], methods=["full", "lora"], lora_ranks=[8],
                        learning_rates=["lora=5e-4"], base_config=base, min_steps=1, max_examples=10_000)
    # Points that would repeat the data beyond max_examples are left out, with the reason.
    manifest = yaml.safe_load((tmp_path / "s" / "sweep.yaml").read_text())
    assert all(p.examples <= 10_000 for p in points) and any("max_examples" in s for s in manifest["skipped"])
    assert "smollm2-135m-l4" not in {p.model for p in points} and "smollm2-135m-l30" in {p.model for p in points}
    models = {p.method: yaml.safe_load((tmp_path / "s" / p.config).read_text())["model"] for p in points}
    # The base config's settings survive (the point only sets backbone, tuning, steps and budget) ...
    assert models["full"]["learning_rate"] == 3e-5 and models["full"]["document_max_length"] == 64
    assert models["full"]["temperature"] == 0.05 and models["lora"]["temperature"] == 0.05
    # ... and a per-method rate overrides it for that method only.
    assert models["lora"]["learning_rate"] == 5e-4
    with pytest.raises(UserError) as err:
        sweep_plan(tmp_path / "t", budgets=[1e14], methods=["full"], learning_rates=["lora=1e-4", "full=x"])
    assert "'lora=1e-4'" in str(err.value) and "'full=x'" in str(err.value)


FAKE_FIT = """
import sys, pathlib, json
args = sys.argv[1:]
config = args[args.index("--config") + 1]
name = pathlib.Path(config).stem
with open("calls.jsonl", "a") as f:
    f.write(json.dumps(args) + "\\n")
if pathlib.Path("mode").read_text() == "fail" and name.startswith("1e15"):
    sys.exit(3)
"""


def test_sweep_run_skips_finished_resumes_interrupted_and_reports_failures(tmp_path):
    points = sweep_plan(tmp_path, budgets=[1e15, 1e16], models="pythia-14m,pythia-31m", methods=["full"])
    assert len(points) == 4
    fake = tmp_path / "fake_fit.py"
    fake.write_text(FAKE_FIT)
    (tmp_path / "mode").write_text("fail")
    # An interrupted point left a checkpoint: it resumes from it.
    resumed = next(p for p in points if p.budget == 1e16)
    (tmp_path / "runs" / resumed.name / "checkpoints").mkdir(parents=True)
    (tmp_path / "runs" / resumed.name / "checkpoints" / "last.ckpt").write_text("x")
    outcome = run_sweep(tmp_path, command=[sys.executable, str(fake)])
    assert len(outcome["failed"]) == 2 and len(outcome["done"]) == 2  # the 1e15 points fail
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert calls[0][:2] == ["fit", "--config"] and len(calls) == 4
    assert [c for c in calls if "--ckpt_path" in c] == [
        ["fit", "--config", resumed.config, "--ckpt_path", f"runs/{resumed.name}/checkpoints/last.ckpt"]]
    # Second run: the finished points are skipped, only the failed ones run again.
    (tmp_path / "mode").write_text("ok")
    outcome = run_sweep(tmp_path, command=[sys.executable, str(fake)])
    assert len(outcome["skipped"]) == 2
    assert sorted(outcome["done"]) == sorted(p.name for p in points if p.budget == 1e15)
    assert len((tmp_path / "calls.jsonl").read_text().splitlines()) == 6
    assert load_manifest(tmp_path) == points
    with pytest.raises(UserError, match="no planned sweep"):
        run_sweep(tmp_path / "nothing")


def test_sweep_run_skips_points_recorded_in_runs_jsonl_when_runs_folder_is_gone(tmp_path):
    # A sweep committed with its runs.jsonl but not its runs/ folder (a fresh clone, another machine) must not
    # train its finished points again; a failed record or a torn line does not count as finished.
    points = sweep_plan(tmp_path, budgets=[1e15, 1e16], models="pythia-14m,pythia-31m", methods=["full"])
    done, failed = points[0], points[1]

    def record(point, status):
        return json.dumps({"status": status, "config": {"trainer": {"default_root_dir": f"runs/{point.name}"}}})

    (tmp_path / "runs.jsonl").write_text(f"{record(done, 'completed')}\n{record(failed, 'failed')}\n{{\"torn")
    fake = tmp_path / "fake_fit.py"
    fake.write_text(FAKE_FIT)
    (tmp_path / "mode").write_text("ok")
    outcome = run_sweep(tmp_path, command=[sys.executable, str(fake)])
    assert outcome["skipped"] == [done.name]
    assert sorted(outcome["done"]) == sorted(p.name for p in points[1:])
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert done.config not in {c[2] for c in calls} and failed.config in {c[2] for c in calls}
