"""Evaluation: MTEB tasks from local files, the evaluate command, retrieval metrics."""
