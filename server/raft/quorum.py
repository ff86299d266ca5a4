"""Majority arithmetic, kept apart so the rule is written exactly once."""

from __future__ import annotations

from collections.abc import Iterable


def majority(voters: int) -> int:
    return voters // 2 + 1


def committed_index(matches: Iterable[int], voters: int) -> int:
    """The highest index stored on a majority of voters (§5.3)."""
    ordered = sorted(matches, reverse=True)
    return ordered[majority(voters) - 1]


def tally(granted: int, rejected: int, voters: int) -> bool | None:
    """True once a majority granted, False once a majority is out of reach, else None."""
    need = majority(voters)
    if granted >= need:
        return True
    if rejected > voters - need:
        return False
    return None
