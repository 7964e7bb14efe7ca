"""A thin, synchronous etcd v3 client over the gRPC stubs that the etcd3 package ships.

Why not etcd3's own methods: we need the revision of every transaction (block compare-and-swap),
compares over key ranges (the subnet overlap guard), get ops inside transactions, a watch that
reports compaction and can be cancelled from another thread, and one error translation. etcd3
0.12 gives none of these in its high-level API (and its `Lease.keys` is broken), so we use its
channel and generated stubs directly; its protobuf needs `protobuf<4` (see README).

Rules: every method is blocking and thread-safe (the gRPC channel is); callers on trio run them
in worker threads. Every RPC counts one round trip. Errors: etcd unreachable, timed out, or
leaderless -> `StoreUnavailable`; a compacted revision -> `RevisionCompacted`; an unknown lease
-> `LeaseNotFound`; anything else -> `StoreError`. Never a raw grpc exception.
Imports: grpc, etcd3 (its stubs and messages), agent.store.errors.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import etcd3
import grpc
from etcd3 import etcdrpc

from agent.store.errors import StoreError, StoreUnavailable

T = TypeVar("T")

_UNAVAILABLE_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,  # "etcdserver: request timed out", "leader changed", ...
    grpc.StatusCode.ABORTED,
}

GRPC_OPTIONS = [
    # Come back within a second when etcd returns (gRPC's default backoff grows to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 3_000),
]


class RevisionCompacted(StoreError):
    """A watch asked for history etcd has compacted away; the caller must re-list."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"etcd compacted its history up to revision {compact_revision}")
        self.compact_revision = compact_revision


class LeaseNotFound(StoreError):
    """The lease expired or was revoked."""


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


@dataclass(frozen=True)
class Compare:
    """`target` of `key` (or of every key in [key, range_end)) `op` `value`.

    target: "create" | "mod" | "version" | "value"; op: "=", "!=", "<", ">".
    """

    key: str
    target: str
    op: str
    value: int | bytes
    range_end: str | None = None


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True)
class Get:
    key: str
    range_end: str | None = None
    keys_only: bool = False


@dataclass(frozen=True)
class Delete:
    key: str
    range_end: str | None = None


Op = Put | Get | Delete


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    ranges: list[list[KeyValue]]
    """The results of the Get ops of the branch that ran, in order."""


@dataclass(frozen=True)
class WatchBatch:
    changes: list[tuple[str, bytes | None, int]]
    """(key, value or None for a delete, mod revision) in revision order."""
    revision: int


_COMPARE_OPS = {
    "=": etcdrpc.Compare.EQUAL,
    "!=": etcdrpc.Compare.NOT_EQUAL,
    "<": etcdrpc.Compare.LESS,
    ">": etcdrpc.Compare.GREATER,
}
_COMPARE_TARGETS = {
    "create": etcdrpc.Compare.CREATE,
    "mod": etcdrpc.Compare.MOD,
    "version": etcdrpc.Compare.VERSION,
    "value": etcdrpc.Compare.VALUE,
}
_TARGET_FIELDS = {
    "create": "create_revision",
    "mod": "mod_revision",
    "version": "version",
    "value": "value",
}


def translate(exc: grpc.RpcError) -> StoreError:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if code == grpc.StatusCode.NOT_FOUND and "lease" in (details or ""):
        return LeaseNotFound(details or "lease not found")
    if code in _UNAVAILABLE_CODES:
        return StoreUnavailable(f"etcd unavailable ({code.name if code else '?'}: {details})")
    return StoreError(f"etcd error ({code.name if code else '?'}: {details})")


def _kv(raw: Any) -> KeyValue:
    return KeyValue(
        raw.key.decode(errors="replace"),
        bytes(raw.value),
        raw.create_revision,
        raw.mod_revision,
        raw.lease,
    )


class WatchStream:
    """One open watch; iterate for batches, `cancel()` from any thread to end it."""

    def __init__(self, call: Any, closed: threading.Event) -> None:
        self._call = call
        self._closed = closed

    def __iter__(self) -> Iterator[WatchBatch]:
        try:
            for response in self._call:
                if response.compact_revision:
                    raise RevisionCompacted(response.compact_revision)
                if response.canceled:
                    raise StoreUnavailable(f"etcd cancelled the watch: {response.cancel_reason}")
                changes = [
                    (
                        event.kv.key.decode(errors="replace"),
                        None if event.type == event.DELETE else bytes(event.kv.value),
                        event.kv.mod_revision,
                    )
                    for event in response.events
                ]
                yield WatchBatch(changes, response.header.revision)
        except grpc.RpcError as exc:
            raise translate(exc) from None
        finally:
            self._closed.set()
        raise StoreUnavailable("etcd closed the watch stream")

    def cancel(self) -> None:
        self._closed.set()
        self._call.cancel()


class EtcdClient:
    """Blocking etcd calls with a per-call `timeout` (seconds) and a round-trip counter."""

    def __init__(self, host: str, port: int, *, timeout: float = 2.0) -> None:
        self.address = (host, port)
        self.timeout = timeout
        self._client = etcd3.client(
            host=host, port=port, timeout=timeout, grpc_options=GRPC_OPTIONS
        )
        self._kv = self._client.kvstub
        self._lease = self._client.leasestub
        self._watch = etcdrpc.WatchStub(self._client.channel)
        self._maintenance = self._client.maintenancestub
        self._lock = threading.Lock()
        self._round_trips = 0

    @property
    def round_trips(self) -> int:
        return self._round_trips

    def _rpc(self, fn: Callable[..., T], request: Any) -> T:
        with self._lock:
            self._round_trips += 1
        try:
            return fn(request, self.timeout)
        except grpc.RpcError as exc:
            raise translate(exc) from None

    def close(self) -> None:
        self._client.close()

    # -- kv --------------------------------------------------------------------------------

    def range(
        self, key: str, range_end: str | None = None, keys_only: bool = False
    ) -> tuple[list[KeyValue], int]:
        """Keys in [key, range_end) (or just `key`), and the revision they were read at."""
        response = self._rpc(self._kv.Range, self._range_request(Get(key, range_end, keys_only)))
        return [_kv(raw) for raw in response.kvs], response.header.revision

    def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        request = etcdrpc.TxnRequest(
            compare=[self._compare(c) for c in compares],
            success=[self._request_op(op) for op in success],
            failure=[self._request_op(op) for op in failure],
        )
        response = self._rpc(self._kv.Txn, request)
        ranges = [
            [_kv(raw) for raw in item.response_range.kvs]
            for item in response.responses
            if item.WhichOneof("response") == "response_range"
        ]
        return TxnResult(response.succeeded, response.header.revision, ranges)

    def compact(self, revision: int) -> None:
        self._rpc(self._kv.Compact, etcdrpc.CompactionRequest(revision=revision, physical=True))

    def status(self) -> int:
        """The current revision (a cheap health probe)."""
        response = self._rpc(self._maintenance.Status, etcdrpc.StatusRequest())
        revision: int = response.header.revision
        return revision

    # -- leases ----------------------------------------------------------------------------

    def lease_grant(self, ttl: int) -> int:
        response = self._rpc(self._lease.LeaseGrant, etcdrpc.LeaseGrantRequest(TTL=ttl))
        lease_id: int = response.ID
        return lease_id

    def lease_keepalive(self, lease_id: int) -> int:
        """Refresh once; returns the new TTL, 0 if the lease no longer exists."""
        with self._lock:
            self._round_trips += 1
        try:
            for response in self._lease.LeaseKeepAlive(
                iter([etcdrpc.LeaseKeepAliveRequest(ID=lease_id)]), self.timeout
            ):
                ttl: int = response.TTL
                return ttl
        except grpc.RpcError as exc:
            raise translate(exc) from None
        return 0

    def lease_revoke(self, lease_id: int) -> None:
        self._rpc(self._lease.LeaseRevoke, etcdrpc.LeaseRevokeRequest(ID=lease_id))

    # -- watch -----------------------------------------------------------------------------

    def watch(self, key: str, range_end: str, start_revision: int) -> WatchStream:
        """Open a watch on [key, range_end) from `start_revision` (no deadline: it streams)."""
        with self._lock:
            self._round_trips += 1
        create = etcdrpc.WatchCreateRequest(
            key=key.encode(), range_end=range_end.encode(), start_revision=start_revision
        )
        closed = threading.Event()
        # The request iterator must stay open, or gRPC half-closes and etcd ends the watch.
        call = self._watch.Watch(
            _requests_until(etcdrpc.WatchRequest(create_request=create), closed)
        )
        return WatchStream(call, closed)

    # -- building requests -----------------------------------------------------------------

    def _compare(self, compare: Compare) -> Any:
        message = etcdrpc.Compare(
            key=compare.key.encode(),
            result=_COMPARE_OPS[compare.op],
            target=_COMPARE_TARGETS[compare.target],
        )
        if compare.range_end is not None:
            message.range_end = compare.range_end.encode()
        setattr(message, _TARGET_FIELDS[compare.target], compare.value)
        return message

    def _range_request(self, get: Get) -> Any:
        request = etcdrpc.RangeRequest(key=get.key.encode(), keys_only=get.keys_only)
        if get.range_end is not None:
            request.range_end = get.range_end.encode()
        return request

    def _request_op(self, op: Op) -> Any:
        if isinstance(op, Put):
            return etcdrpc.RequestOp(
                request_put=etcdrpc.PutRequest(key=op.key.encode(), value=op.value, lease=op.lease)
            )
        if isinstance(op, Get):
            return etcdrpc.RequestOp(request_range=self._range_request(op))
        request = etcdrpc.DeleteRangeRequest(key=op.key.encode())
        if op.range_end is not None:
            request.range_end = op.range_end.encode()
        return etcdrpc.RequestOp(request_delete_range=request)


def _requests_until(request: Any, closed: threading.Event) -> Iterator[Any]:
    """Yield the one request, then hold the stream open until the watch is closed."""
    yield request
    closed.wait()
