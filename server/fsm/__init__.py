"""Deterministic state machines applied from the Raft log."""
