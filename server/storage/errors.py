"""Errors of the storage contract, shared by every implementation."""

from __future__ import annotations


class StorageError(Exception):
    """Base class, so callers can tell a storage fault from a bug in their own code."""


class CompactedError(StorageError, LookupError):
    """The entries asked for were folded into a snapshot: send the snapshot instead."""


class UnavailableError(StorageError, LookupError):
    """The entries asked for are not in the log yet."""


class CorruptLogError(StorageError):
    """The stored log breaks its own invariants; refuse to boot rather than diverge."""
