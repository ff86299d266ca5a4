"""What both ends of the Raft peer stream must agree on: method, size limits, gRPC options, framing.

The sender and the servicer exchange raw bytes rather than letting gRPC (de)serialize
`StreamRequest`: the sender serializes each message once, which gives it exact sizes for
its batch limits without a second pass, and the servicer can skip an undecodable batch
instead of having gRPC fail the whole stream.  The bytes on the wire are still exactly a
serialized `dsync.raft.v1.StreamRequest`.
"""

from __future__ import annotations

from collections.abc import Iterable

RAFT_SERVICE = "dsync.raft.v1.RaftService"
STREAM_METHOD = f"/{RAFT_SERVICE}/Stream"
# Each peer stream names the sender's cluster: a node of another cluster (the launcher
# names every cluster's nodes node1..N) must not be taken for a member of this one.
CLUSTER_METADATA = "dsync-cluster"
# ... and, when the cluster has one, its shared secret (CLUSTER_TOKEN): a name is no proof.
TOKEN_METADATA = "dsync-cluster-token"

# The largest single Raft message (an append of large entries); snapshots larger than
# one batch travel as chunks of a batch each (snapshot_chunks.py), so none needs more.
MAX_MESSAGE_BYTES = 64 << 20

# Room for the StreamRequest framing around messages (tag + length varint per message).
FRAME_OVERHEAD = 11

GrpcOptions = list[tuple[str, int | str]]

# Keepalive pings find a dead peer even when TCP would keep buffering writes to it for
# minutes.  Servers must allow pings this often, see SERVER_OPTIONS.
_KEEPALIVE_TIME_MS = 10_000
_KEEPALIVE_TIMEOUT_MS = 5_000

# Options for the gRPC server that hosts the Raft service.  Without them a peer's
# snapshot exceeds the default 4 MiB receive limit, and the default ping policy (one
# ping per 5 minutes) could answer the peers' keepalives with GOAWAY.
SERVER_OPTIONS: GrpcOptions = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.http2.min_ping_interval_without_data_ms", _KEEPALIVE_TIME_MS // 2),
]


def channel_options(reconnect_backoff_max: float, connect_timeout: float) -> GrpcOptions:
    """Options for a peer channel.

    gRPC's own reconnect backoff defaults to growing to 120 s, which would leave a
    restarted peer unreached for minutes; it is capped like the transport's own
    backoff.  `grpc.min_reconnect_backoff_ms` is also gRPC's connect timeout, so it
    bounds how long one attempt at an unresponsive address can hang.  Retries are off:
    gRPC may replay a message the peer already got, and a transport must never deliver
    one twice.  Proxies are off: peers talk directly, whatever the environment says.
    """
    backoff_max_ms = max(1, round(reconnect_backoff_max * 1000))
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.enable_retries", 0),
        ("grpc.enable_http_proxy", 0),
        ("grpc.keepalive_time_ms", _KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", _KEEPALIVE_TIMEOUT_MS),
        # grpcio 1.85 waits for a ping's answer this long, whatever keepalive_timeout says.
        ("grpc.http2.ping_timeout_ms", _KEEPALIVE_TIMEOUT_MS),
        ("grpc.initial_reconnect_backoff_ms", min(100, backoff_max_ms)),
        ("grpc.max_reconnect_backoff_ms", backoff_max_ms),
        ("grpc.min_reconnect_backoff_ms", max(1, round(connect_timeout * 1000))),
    ]


_MESSAGES_TAG = b"\x0a"  # StreamRequest.messages: field 1, wire type 2 (length-delimited)


def frame_batch(messages: Iterable[bytes]) -> bytes:
    """A serialized StreamRequest holding the already-serialized RaftMessages, in order.

    A repeated message field on the wire is just each element as (tag, length, bytes),
    so this is the same byte string `StreamRequest(messages=...).SerializeToString()`
    would produce, without parsing and copying every message back into a container.
    """
    parts: list[bytes] = []
    append = parts.append
    for data in messages:
        append(_MESSAGES_TAG)
        append(_varint(len(data)))
        append(data)
    return b"".join(parts)


_ONE_BYTE_VARINTS = [bytes((n,)) for n in range(0x80)]


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _ONE_BYTE_VARINTS[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
