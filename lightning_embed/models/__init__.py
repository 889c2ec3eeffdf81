"""Backbones in, embedding models out: loading, pooling, attention, encoding, export."""
