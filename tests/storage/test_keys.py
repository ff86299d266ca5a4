"""Key naming: one prefix per node, and no two nodes can ever share one."""

from __future__ import annotations

import pytest

from server.storage.keys import NodeKeys


def test_plain_names_stay_readable() -> None:
    keys = NodeKeys.for_node("prod", "n1")
    assert keys.prefix == "dsync:prod:n1:"
    assert {keys.hard_state, keys.log, keys.log_start} == {
        "dsync:prod:n1:hard_state",
        "dsync:prod:n1:log",
        "dsync:prod:n1:log_start",
    }
    assert keys.pattern == "dsync:prod:n1:*"


def test_separators_inside_names_cannot_make_prefixes_collide() -> None:
    assert NodeKeys.for_node("a:b", "c").prefix != NodeKeys.for_node("a", "b:c").prefix
    assert NodeKeys.for_node("a", "b%3Ac").prefix != NodeKeys.for_node("a", "b:c").prefix


def test_glob_characters_cannot_leak_into_a_scan_pattern() -> None:
    pattern = NodeKeys.for_node("c", "n*[1]?\\").pattern
    assert not set(pattern[:-1]) & set("*?[]\\")


@pytest.mark.parametrize(("cluster", "node"), [("", "n1"), ("c", "")])
def test_empty_names_are_refused(cluster: str, node: str) -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        NodeKeys.for_node(cluster, node)
