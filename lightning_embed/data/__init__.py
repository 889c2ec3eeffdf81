"""Training data: sources, validation, batching, streaming, mixtures and hard-negative mining."""
