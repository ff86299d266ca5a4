"""HTTP for operators and curl: health, Raft state, metrics."""
