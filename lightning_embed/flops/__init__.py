"""FLOP accounting: the cost model, its probe, what a budget buys, the callback and run records."""
