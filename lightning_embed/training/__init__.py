"""The fit: the Lightning module, tuning strategies, the encoding path, checkpoints and resumption."""
