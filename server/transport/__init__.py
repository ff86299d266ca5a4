"""Moving Raft messages between nodes: the protocol, gRPC, and an in-memory network."""
