"""HTTP for clients, operators and curl: every annotated RPC, health, Raft state, metrics."""
