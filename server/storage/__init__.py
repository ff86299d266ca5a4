"""Each node's durable Raft state: hard state, log and snapshot point.

The replica driver depends on the protocols only; `server.node` picks the Redis
store (or the in-memory twin in tests) and hands it over.
"""
