"""A thin, synchronous etcd v3 client over the gRPC stubs that the etcd3 package ships.

It talks to every member of a cluster (failover: see `EtcdClient`), over TLS with client
certificates when the endpoints are `https://`, and with etcd authentication (user, password,
token renewed when etcd stops accepting it).

Why not etcd3's own methods: we need the revision of every transaction (block compare-and-swap),
compares over key ranges (the subnet overlap guard), get ops inside transactions, a watch that
reports compaction and can be cancelled from another thread, and one error translation. etcd3
0.12 gives none of these in its high-level API (and its `Lease.keys` is broken), so we use its
channel and generated stubs directly; its protobuf needs `protobuf<4` (see README).

Rules: every method is blocking and thread-safe (gRPC channels are); callers on trio run them
in worker threads. Every RPC attempt counts one round trip (TLS adds none; a token costs one
per session). Errors: no member answered in time, or none has a leader -> `StoreUnavailable`;
a compacted revision -> `RevisionCompacted`; an unknown lease -> `LeaseNotFound`; a refused
user or password -> `StoreAuthFailed`; anything else -> `StoreError`. Never a raw grpc
exception. `describe_failure` says which configuration key a TLS or auth failure points at.
Imports: grpc, etcd3 (its stubs and messages), agent.store.errors.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from etcd3 import etcdrpc

from agent.store.errors import StoreError, StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

RESPONSIVE_DEADLINE = 0.25
"""Seconds a member may take to answer a status request after one of its requests timed out."""
REQUIRE_LEADER_KEY = "hasleader"
"""gRPC metadata asking a member to refuse (rather than serve or hang) while it has no leader."""

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


#: s. grpc's blocking waits (a watch stream's next response, a unary call's reply) wake every
#: `grpc._common.MAXIMUM_WAIT_TIMEOUT` (0.1 s) so that a main thread blocked in them still
#: sees signals. Ours block in worker threads, where that is only a wake-up without work: ten
#: a second per open watch, taking the GIL each time. A reply or a cancel still notifies the
#: waiter at once; a main thread (a CLI call) sees a signal within this many seconds.
GRPC_WAIT_SLICE = 10.0
grpc._common.MAXIMUM_WAIT_TIMEOUT = GRPC_WAIT_SLICE


class RevisionCompacted(StoreError):
    """A watch asked for history etcd has compacted away; the caller must re-list."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"etcd compacted its history up to revision {compact_revision}")
        self.compact_revision = compact_revision


class LeaseNotFound(StoreError):
    """The lease expired or was revoked."""


class StoreAuthFailed(StoreError):
    """etcd refused the configured user name and password."""


def _cluster_busy(exc: grpc.RpcError) -> bool:
    """The member answered but the cluster could not commit now (an election is under way):
    try the next member, but the one that answered is not at fault."""
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    return any(text in details for text in ("leader changed", "request timed out",
                                            "too many requests"))


def _token_expired(exc: grpc.RpcError) -> bool:
    """etcd no longer knows our auth token (it expired, or the member restarted)."""
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    return code == grpc.StatusCode.UNAUTHENTICATED or "invalid auth token" in details \
        or "auth store is old" in details


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


@dataclass(frozen=True)
class EtcdEndpoint:
    """One etcd member's client URL, taken apart (agent.config checks the URL)."""

    host: str
    port: int
    tls: bool = False

    @property
    def target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.target}"


@dataclass(frozen=True)
class EtcdSecurity:
    """TLS material (PEM bytes) and etcd credentials; empty fields mean "not used".

    `ca` None with TLS endpoints: the system's trusted roots. `cert` and `key` together give
    mutual TLS. `username` with `password`: etcd authentication (a token per session, taken
    again whenever etcd says it is no longer valid).
    """

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    username: str = ""
    password: str = ""


class _Member:
    """One member: its channel, its stubs and whether calls should avoid it for now."""

    def __init__(self, endpoint: EtcdEndpoint, security: EtcdSecurity) -> None:
        self.endpoint = endpoint
        if endpoint.tls:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=security.ca,
                private_key=security.key,
                certificate_chain=security.cert,
            )
            self.channel = grpc.secure_channel(endpoint.target, credentials, GRPC_OPTIONS)
        else:
            self.channel = grpc.insecure_channel(endpoint.target, GRPC_OPTIONS)
        self.kv = etcdrpc.KVStub(self.channel)
        self.lease = etcdrpc.LeaseStub(self.channel)
        self.watch = etcdrpc.WatchStub(self.channel)
        self.maintenance = etcdrpc.MaintenanceStub(self.channel)
        self.auth = etcdrpc.AuthStub(self.channel)
        self.down = False
        self.last_error = ""


@dataclass(frozen=True)
class MemberStatus:
    """What one member says about itself (`error` set when it did not answer)."""

    endpoint: EtcdEndpoint
    member_id: int = 0
    leader_id: int = 0
    revision: int = 0
    error: str = ""


class WatchStream:
    """One open watch; iterate for batches, `cancel()` from any thread to end it."""

    def __init__(
        self,
        call: Any,
        closed: threading.Event,
        on_error: Callable[[grpc.RpcError], StoreError],
        on_closed: Callable[[], None],
    ) -> None:
        self._call = call
        self._closed = closed
        self._on_error = on_error
        self._on_closed = on_closed

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
            if self._closed.is_set():  # cancelled by us (or because its member left)
                raise StoreUnavailable("the watch was closed") from None
            raise self._on_error(exc) from None
        finally:
            self._closed.set()
            self._on_closed()
        raise StoreUnavailable("etcd closed the watch stream")

    def cancel(self) -> None:
        self._closed.set()
        self._call.cancel()


class EtcdClient:
    """Blocking etcd calls over every member, with failover and a round-trip counter.

    A call goes to the first member (in the configured order) not marked down; a member that
    does not answer within `member_timeout`, refuses the connection or has lost its leader is
    marked down and the call goes on to the next, until one answers or `timeout` (the whole
    call's budget) is spent. A request that timed out on a member that still answers a status
    request at once was lost in an election: it is asked again (the member is not at fault);
    a round in which some member did not answer at all doubles the time one attempt may take
    (a slow cluster still answers). Members marked
    down are skipped until `probe_down_members()` finds them healthy again (answering, with a
    leader), so the client returns to them. When every member is down they are all tried
    anyway; an answer saying the cluster is busy electing moves on without marking anyone.
    Requests carry etcd's "require leader" flag, so a member cut off from its cluster refuses
    at once rather than answering stale or hanging. A call that fails this way may still have
    committed (its reply was lost): callers already treat `StoreUnavailable` that way.
    """

    def __init__(
        self,
        endpoints: Sequence[EtcdEndpoint],
        *,
        security: EtcdSecurity | None = None,
        timeout: float = 2.0,
        member_timeout: float = 0.5,
    ) -> None:
        if not endpoints:
            raise StoreError("no etcd endpoint given")
        self.security = security or EtcdSecurity()
        self.timeout = timeout
        self.member_timeout = min(member_timeout, timeout)
        self._members = [_Member(endpoint, self.security) for endpoint in endpoints]
        self._lock = threading.Lock()
        self._round_trips = 0
        self._failovers = 0
        self._token = ""
        self._watches: dict[int, tuple[_Member, WatchStream]] = {}

    @property
    def endpoints(self) -> list[EtcdEndpoint]:
        return [member.endpoint for member in self._members]

    @property
    def round_trips(self) -> int:
        return self._round_trips

    @property
    def failovers(self) -> int:
        """Times a member was marked down and calls moved on to another."""
        return self._failovers

    def down_members(self) -> list[EtcdEndpoint]:
        return [m.endpoint for m in self._members if m.down]

    def current_member(self) -> EtcdEndpoint:
        """The member the next call goes to first."""
        return self._order()[0].endpoint

    def _order(self) -> list[_Member]:
        with self._lock:
            up = [m for m in self._members if not m.down]
            return up + [m for m in self._members if m.down]

    def _count(self) -> None:
        with self._lock:
            self._round_trips += 1

    def _mark_down(self, member: _Member, reason: str) -> None:
        with self._lock:
            if member.down:
                return
            member.down = True
            member.last_error = reason
            self._failovers += 1
            watches = [w for m, w in self._watches.values() if m is member]
        if len(self._members) > 1:
            log.warning("etcd member %s left: %s", member.endpoint.url, reason)
        for watch in watches:  # re-opened by their owner on another member
            watch.cancel()

    def _mark_up(self, member: _Member) -> None:
        if member.down:
            with self._lock:
                member.down = False
            if len(self._members) > 1:
                log.info("etcd member %s is back", member.endpoint.url)

    def _metadata(self) -> list[tuple[str, str]]:
        metadata = [(REQUIRE_LEADER_KEY, "true")]
        if self._token:
            metadata.append(("token", self._token))
        return metadata

    def _call(self, invoke: Callable[[_Member, float, list[tuple[str, str]]], T]) -> T:
        """Run `invoke(member, deadline_seconds, metadata)` on the members, failing over."""
        budget_end = time.monotonic() + self.timeout
        pause = 0.02
        error: StoreError = StoreUnavailable("etcd unavailable (no member tried)")
        authenticated = False
        attempt_limit = self.member_timeout
        while True:
            order = self._order()
            unanswered = False
            for member in order:
                remaining = budget_end - time.monotonic()
                if remaining <= 0:
                    raise error
                deadline = min(remaining, attempt_limit)
                self._count()
                try:
                    if self.security.username and not self._token:
                        self._authenticate(member, deadline)
                    result = invoke(member, deadline, self._metadata())
                except grpc.RpcError as exc:
                    error = translate(exc)
                    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and self._responsive(
                            member, budget_end):
                        continue  # it answers: a proposal lost in an election, ask again
                    unanswered |= exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                    if _token_expired(exc) and not authenticated:
                        authenticated = True
                        self._token = ""
                        self._authenticate(member, max(budget_end - time.monotonic(), 0.05))
                        error = StoreUnavailable("etcd auth token renewed")
                        break  # retry the call with the new token, from the first member
                    if not isinstance(error, StoreUnavailable):
                        raise error from None
                    if not _cluster_busy(exc):
                        self._mark_down(member, str(error))
                    continue
                self._mark_up(member)
                return result
            remaining = budget_end - time.monotonic()
            if remaining <= 0:
                raise error
            time.sleep(min(pause, remaining))  # every member failed: an election, probably
            pause = min(pause * 2, 0.2)
            # A proposal a follower took just before it noticed its leader was gone hangs
            # until our deadline: ask again after the member timeout, so the first attempt
            # after the election lands. Only members that do not even answer a status
            # request (a slow machine, a partition) get more time in the next round.
            if unanswered:
                attempt_limit *= 2

    def _responsive(self, member: _Member, budget_end: float) -> bool:
        """After a timed-out request: does `member` answer a status request (served locally,
        no consensus) at once? Then it is alive and the cluster was busy, not the member."""
        deadline = min(RESPONSIVE_DEADLINE, budget_end - time.monotonic())
        if deadline <= 0:
            return False
        self._count()
        try:
            member.maintenance.Status(etcdrpc.StatusRequest(), deadline)
        except grpc.RpcError as exc:  # any answer but silence or a broken connection
            return exc.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED,
                                      grpc.StatusCode.UNAVAILABLE)
        return True

    def _authenticate(self, member: _Member, deadline: float) -> None:
        """Take a token with the configured user and password (one round trip)."""
        request = etcdrpc.AuthenticateRequest(
            name=self.security.username, password=self.security.password
        )
        try:
            response = member.auth.Authenticate(request, deadline)
        except grpc.RpcError as exc:
            if translate(exc).__class__ is StoreError:
                raise StoreAuthFailed(
                    f"etcd refused user {self.security.username!r}: {exc.details()}"
                ) from None
            raise
        self._token = response.token

    def _rpc(self, method: Callable[[_Member], Callable[..., T]], request: Any) -> T:
        return self._call(
            lambda member, deadline, metadata: method(member)(
                request, deadline, metadata=metadata
            )
        )

    def close(self) -> None:
        for member in self._members:
            member.channel.close()

    # -- members ---------------------------------------------------------------------------

    def member_statuses(self, deadline: float | None = None) -> list[MemberStatus]:
        """Ask every member for its status (one round trip each, no failover)."""
        return [self._member_status(m, deadline or self.member_timeout) for m in self._members]

    def _member_status(self, member: _Member, deadline: float) -> MemberStatus:
        self._count()
        try:
            response = member.maintenance.Status(
                etcdrpc.StatusRequest(), deadline, metadata=self._metadata()
            )
        except grpc.RpcError as exc:
            return MemberStatus(member.endpoint, error=str(translate(exc)))
        return MemberStatus(
            member.endpoint, response.header.member_id, response.leader, response.header.revision
        )

    def probe_down_members(self) -> list[EtcdEndpoint]:
        """Ask each member marked down for its status; the ones healthy again are used again."""
        back = []
        for member in [m for m in self._members if m.down]:
            status = self._member_status(member, self.member_timeout)
            if not status.error and status.leader_id:
                self._mark_up(member)
                back.append(member.endpoint)
        return back

    # -- kv --------------------------------------------------------------------------------

    def range(
        self, key: str, range_end: str | None = None, keys_only: bool = False
    ) -> tuple[list[KeyValue], int]:
        """Keys in [key, range_end) (or just `key`), and the revision they were read at."""
        request = self._range_request(Get(key, range_end, keys_only))
        response = self._rpc(lambda m: m.kv.Range, request)
        return [_kv(raw) for raw in response.kvs], response.header.revision

    def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        request = etcdrpc.TxnRequest(
            compare=[self._compare(c) for c in compares],
            success=[self._request_op(op) for op in success],
            failure=[self._request_op(op) for op in failure],
        )
        response = self._rpc(lambda m: m.kv.Txn, request)
        ranges = [
            [_kv(raw) for raw in item.response_range.kvs]
            for item in response.responses
            if item.WhichOneof("response") == "response_range"
        ]
        return TxnResult(response.succeeded, response.header.revision, ranges)

    def status(self) -> int:
        """The current revision (a cheap health probe)."""
        response = self._rpc(lambda m: m.maintenance.Status, etcdrpc.StatusRequest())
        revision: int = response.header.revision
        return revision

    # -- leases ----------------------------------------------------------------------------

    def lease_grant(self, ttl: int) -> int:
        response = self._rpc(lambda m: m.lease.LeaseGrant, etcdrpc.LeaseGrantRequest(TTL=ttl))
        lease_id: int = response.ID
        return lease_id

    def lease_keepalive(self, lease_id: int) -> int:
        """Refresh once; returns the new TTL, 0 if the lease no longer exists."""

        def refresh(member: _Member, deadline: float, metadata: list[tuple[str, str]]) -> int:
            requests = iter([etcdrpc.LeaseKeepAliveRequest(ID=lease_id)])
            for response in member.lease.LeaseKeepAlive(requests, deadline, metadata=metadata):
                ttl: int = response.TTL
                return ttl
            return 0

        return self._call(refresh)

    def lease_revoke(self, lease_id: int) -> None:
        self._rpc(lambda m: m.lease.LeaseRevoke, etcdrpc.LeaseRevokeRequest(ID=lease_id))

    # -- watch -----------------------------------------------------------------------------

    def watch(self, key: str, range_end: str, start_revision: int) -> WatchStream:
        """Open a watch on [key, range_end) from `start_revision` (no deadline: it streams).

        It is opened on the member calls go to now; when that member breaks the stream or is
        marked down, the stream ends with `StoreUnavailable` and the member is avoided, so
        the owner re-opens it from its last revision on another member.
        """
        member = self._order()[0]
        if self.security.username and not self._token:
            self._call(lambda *_: None)  # takes a token (with failover) and nothing else
        self._count()
        create = etcdrpc.WatchCreateRequest(
            key=key.encode(), range_end=range_end.encode(), start_revision=start_revision
        )
        closed = threading.Event()
        # The request iterator must stay open, or gRPC half-closes and etcd ends the watch.
        call = member.watch.Watch(
            _requests_until(etcdrpc.WatchRequest(create_request=create), closed),
            metadata=self._metadata(),
        )

        def failed(exc: grpc.RpcError) -> StoreError:
            error = translate(exc)
            if _token_expired(exc):
                self._token = ""
                return StoreUnavailable(f"etcd auth token expired ({exc.details()})")
            if isinstance(error, StoreUnavailable):
                self._mark_down(member, str(error))
            return error

        def forget() -> None:
            with self._lock:
                self._watches.pop(id(closed), None)

        stream = WatchStream(call, closed, failed, forget)
        with self._lock:
            self._watches[id(closed)] = (member, stream)
        return stream

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
