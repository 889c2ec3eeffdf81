"""Local task files (lightning_embed/evaluation/mteb_tasks.py): the shipped examples parse."""

from __future__ import annotations

from pathlib import Path

from lightning_embed.evaluation.mteb_tasks import parse_local_task

REPO = Path(__file__).resolve().parents[2]


def test_example_task_files_parse():
    retrieval = parse_local_task(f"retrieval:{REPO / 'examples/tasks/stdlib-code-retrieval.jsonl'}")
    assert len(retrieval.data["queries"]) > 200
    assert parse_local_task(f"sts:{REPO / 'examples/tasks/code-sts.jsonl'}").kind == "sts"
