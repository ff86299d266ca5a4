"""Redis key names for one node: the only place that knows the layout.

Every key of a node starts with `dsync:<cluster>:<node>:`, so nodes can share a Redis
server and `SCAN MATCH <prefix>*` finds exactly one node's data.  Names are
percent-encoded: ':' inside a name cannot make two nodes' prefixes collide, and glob
characters cannot leak into a MATCH pattern.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote


def _component(name: str, what: str) -> str:
    if not name:
        raise ValueError(f"{what} name must not be empty")
    return quote(name, safe="")


@dataclass(frozen=True, slots=True)
class NodeKeys:
    prefix: str

    @classmethod
    def for_node(cls, cluster: str, node: str) -> NodeKeys:
        return cls(f"dsync:{_component(cluster, 'cluster')}:{_component(node, 'node')}:")

    @property
    def hard_state(self) -> str:
        """Hash: term, vote, commit."""
        return self.prefix + "hard_state"

    @property
    def log(self) -> str:
        """List of encoded entries; position = index - first_index."""
        return self.prefix + "log"

    @property
    def log_start(self) -> str:
        """Hash: index, term, voters (JSON) of the entry the log starts after (compacted away)."""
        return self.prefix + "log_start"

    @property
    def snapshot(self) -> str:
        """Hash: index, term, voters (JSON) and data of the newest state-machine snapshot."""
        return self.prefix + "snapshot"

    @property
    def pattern(self) -> str:
        """SCAN MATCH pattern for every key of this node."""
        return self.prefix + "*"
