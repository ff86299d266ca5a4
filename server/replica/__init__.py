"""The asyncio driver of the Raft core: ticks, persists, sends, applies, answers proposals."""
