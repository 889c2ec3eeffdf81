"""Shared fixtures: offline environment, tiny random backbones (built once per session), small data."""

from __future__ import annotations

import os

# Tests never reach the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# Shared checks outside test modules still report the values of a failed assert.
pytest.register_assert_rewrite("tests.strategies.builtin_cases", "tests.flops.reference")

torch.set_num_threads(min(2, torch.get_num_threads()))

ARCHES = ("gpt_neox", "llama", "bert")


def pytest_report_header(config) -> str:
    """Which CPU and bf16 path the suite ran on: float rounding, and so close calls, differ between them."""
    from lightning_embed.training.precision import describe_hardware

    return describe_hardware()


@pytest.fixture(scope="session")
def tiny_backbones(tmp_path_factory) -> dict[str, str]:
    """Folder of a tiny random model + tokenizer for each architecture shape."""
    from lightning_embed.testing import make_tiny_backbone

    root = tmp_path_factory.mktemp("tiny")
    return {arch: str(make_tiny_backbone(arch, root / arch)) for arch in ARCHES}


@pytest.fixture(params=ARCHES)
def tiny_backbone(request, tiny_backbones) -> str:
    """Each tiny architecture in turn."""
    return tiny_backbones[request.param]


@pytest.fixture(autouse=True)
def _in_a_temporary_folder(tmp_path, monkeypatch):
    """Every test runs in its own empty working directory, so nothing it writes lands in the checkout."""
    monkeypatch.chdir(tmp_path)
