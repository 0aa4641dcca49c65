"""Weights with torch: checkpoints read lazily, task vectors, merge operators and the evaluation engine."""
