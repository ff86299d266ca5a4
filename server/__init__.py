"""dsync server: a Raft-replicated coordination service (locks, queue, cache)."""
