"""Wire format of the SWIM core: UDP compound packets and TCP push-pull chunks.

Owns: the bytes. A packet is one version byte followed by a msgpack array of messages, each
message a msgpack array `[type, field, ...]` (positional, compact). A push-pull chunk is one
version byte followed by a msgpack array `[chunk_type, ...]`.

Rules:
- `MessageType` and `ChunkType` are append-only: a number once shipped keeps its meaning
  forever, and a reader skips message types it does not know (counted, not an error), so a
  newer node can talk to an older one.
- Decoding validates every field (type, range, length). Any bytes either decode or raise
  `WireError`, never anything else; the fuzz test holds us to that.
- Signed claims (ours: a node's alive and its graceful leave, see `gossip.identity`) carry
  the node's Ed25519 public key (alive only) and a signature over `alive_signed_bytes` /
  `leave_signed_bytes`; unsigned ones are encoded without those fields (6 and 4 fields), so
  a cluster without signing sends exactly what it did before.
- Encryption is not done here; the core seals whole packets with the keyring, whose
  overhead (`ENCRYPTION_OVERHEAD`) the caller subtracts from the UDP budget.

Pure: imports only the standard library, msgpack and `gossip.errors`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import IntEnum

import msgpack

from gossip.errors import WireError

#: First byte of every packet and chunk; bump only with a migration plan.
WIRE_VERSION = 1
#: Bytes a sealed (AES-GCM) packet adds: version byte + 8-byte send time + 12-byte nonce +
#: 16-byte tag (see gossip.keyring).
ENCRYPTION_OVERHEAD = 37
#: Worst-case bytes a compound packet adds around its messages: version + array16 header.
PACKET_OVERHEAD = 4
#: Bytes a USER message adds around its payload (fixarray, type, bin16 header).
USER_MESSAGE_OVERHEAD = 5
#: Upper bounds checked when decoding, whatever the local configuration says.
MAX_NAME_CHARS = 128
MAX_META_BYTES = 1024
MAX_MESSAGES_PER_PACKET = 1024
MAX_RECORDS_PER_CHUNK = 100_000

Addr = tuple[str, int]


class MessageType(IntEnum):
    """Type codes of UDP messages.

    WARNING: append-only. Never renumber, reuse or remove a value: nodes of different
    versions share a cluster, and an unknown type is skipped by older readers.
    """

    PING = 0
    INDIRECT_PING = 1
    ACK = 2
    NACK = 3
    SUSPECT = 4
    ALIVE = 5
    DEAD = 6
    USER = 7


class ChunkType(IntEnum):
    """Type codes of push-pull chunks. WARNING: append-only, like `MessageType`."""

    MEMBERS = 0
    USER_STATE = 1


class MemberState(IntEnum):
    """A member's state as every node records it (values travel in push-pull records)."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


@dataclass(frozen=True, slots=True)
class Ping:
    """Are you there? `target` is the name the sender expects to reach at that address."""

    seq: int
    target: str


@dataclass(frozen=True, slots=True)
class IndirectPing:
    """Please ping `target` at `addr` for me and forward its ack (and a nack if asked)."""

    seq: int
    target: str
    addr: Addr
    nack: bool


@dataclass(frozen=True, slots=True)
class Ack:
    """Answer to the ping (or relayed ping) numbered `seq`."""

    seq: int


@dataclass(frozen=True, slots=True)
class Nack:
    """The relay is alive but got no ack from the target of `seq` in time (Lifeguard)."""

    seq: int


@dataclass(frozen=True, slots=True)
class Suspect:
    """`sender` suspects `node` at `incarnation`."""

    incarnation: int
    node: str
    sender: str


@dataclass(frozen=True, slots=True)
class Alive:
    """`node` is alive at `incarnation`, reachable at `addr`, with metadata `meta`; `key` and
    `signature` (b"" when unsigned): its public key and its signature of the claim."""

    incarnation: int
    node: str
    addr: Addr
    meta: bytes
    key: bytes = b""
    signature: bytes = b""


@dataclass(frozen=True, slots=True)
class Dead:
    """`sender` declares `node` failed at `incarnation`; sender == node means a graceful leave,
    which `signature` (b"" when unsigned) proves."""

    incarnation: int
    node: str
    sender: str
    signature: bytes = b""


@dataclass(frozen=True, slots=True)
class UserMessage:
    """An opaque payload of the layer above (delegate broadcast)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class UnknownMessage:
    """A message of a type this version does not know; skipped and counted."""

    type_code: int


Message = Ping | IndirectPing | Ack | Nack | Suspect | Alive | Dead | UserMessage


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """One member in a push-pull membership chunk; `key`/`signature` prove its last alive
    (state ALIVE) or its leave (state LEFT), b"" otherwise or when unsigned."""

    name: str
    addr: Addr
    meta: bytes
    incarnation: int
    state: MemberState
    key: bytes = b""
    signature: bytes = b""


_packer = msgpack.Packer(use_bin_type=True)

_ALIVE_DOMAIN = b"vxmesh alive\x00"
_LEAVE_DOMAIN = b"vxmesh leave\x00"
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def alive_signed_bytes(incarnation: int, node: str, addr: Addr, meta: bytes,
                       key: bytes) -> bytes:
    """What a node signs to claim it is alive (its address, metadata and key included)."""
    return _ALIVE_DOMAIN + _packer.pack([incarnation, node, addr[0], addr[1], meta, key])


def leave_signed_bytes(incarnation: int, node: str) -> bytes:
    """What a node signs to announce its graceful leave."""
    return _LEAVE_DOMAIN + _packer.pack([incarnation, node])


def encode_message(msg: Message) -> bytes:
    """One message as msgpack bytes, ready to be placed in a compound packet."""
    if isinstance(msg, Ping):
        body: list[object] = [MessageType.PING, msg.seq, msg.target]
    elif isinstance(msg, Ack):
        body = [MessageType.ACK, msg.seq]
    elif isinstance(msg, Alive):
        body = [MessageType.ALIVE, msg.incarnation, msg.node, msg.addr[0], msg.addr[1], msg.meta]
        if msg.signature:
            body += [msg.key, msg.signature]
    elif isinstance(msg, Suspect):
        body = [MessageType.SUSPECT, msg.incarnation, msg.node, msg.sender]
    elif isinstance(msg, Dead):
        body = [MessageType.DEAD, msg.incarnation, msg.node, msg.sender]
        if msg.signature:
            body.append(msg.signature)
    elif isinstance(msg, IndirectPing):
        body = [MessageType.INDIRECT_PING, msg.seq, msg.target, msg.addr[0], msg.addr[1],
                msg.nack]
    elif isinstance(msg, Nack):
        body = [MessageType.NACK, msg.seq]
    else:
        body = [MessageType.USER, msg.payload]
    return _packer.pack(body)


def _array_header(count: int) -> bytes:
    if count < 16:
        return bytes((0x90 | count,))
    return bytes((0xDC, count >> 8, count & 0xFF))


def encode_packet(messages: list[bytes]) -> bytes:
    """A compound packet from already encoded messages (see `encode_message`)."""
    if len(messages) > MAX_MESSAGES_PER_PACKET:
        raise ValueError(f"{len(messages)} messages exceed {MAX_MESSAGES_PER_PACKET}")
    return bytes((WIRE_VERSION,)) + _array_header(len(messages)) + b"".join(messages)


# -- decoding --------------------------------------------------------------------------------

_valid_hosts: dict[str, None] = {}


def _unpack(data: bytes) -> object:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireError(f"expected bytes, got {type(data).__name__}")
    if len(data) < 2:
        raise WireError(f"{len(data)} bytes is too short")
    if data[0] != WIRE_VERSION:
        raise WireError(f"unsupported wire version {data[0]}")
    try:
        return msgpack.unpackb(bytes(data[1:]), raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack raises many types on garbage; all mean the same here
        raise WireError(f"malformed msgpack: {type(exc).__name__}") from None


def _uint(value: object, what: str) -> int:
    if type(value) is not int or not 0 <= value < 2**64:
        raise WireError(f"{what}: expected an unsigned 64-bit integer")
    return value


def _name(value: object, what: str) -> str:
    if type(value) is not str or not 0 < len(value) <= MAX_NAME_CHARS:
        raise WireError(f"{what}: expected a name of 1..{MAX_NAME_CHARS} characters")
    return value


def _addr(host: object, port: object) -> Addr:
    if type(host) is not str or not 0 < len(host) <= 45:
        raise WireError("address: expected an IP literal")
    if host not in _valid_hosts:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise WireError("address: expected an IP literal") from None
        if len(_valid_hosts) > 65_536:
            _valid_hosts.clear()
        _valid_hosts[host] = None
    if type(port) is not int or not 0 < port < 65_536:
        raise WireError("address: port out of range")
    return (host, port)


def _meta(value: object) -> bytes:
    if type(value) is not bytes or len(value) > MAX_META_BYTES:
        raise WireError(f"meta: expected at most {MAX_META_BYTES} bytes")
    return value


def _fields(item: object, count: int, kind: str) -> list[object]:
    if type(item) is not list or len(item) != count:
        raise WireError(f"{kind}: expected {count} fields")
    return item


def _key(value: object, what: str) -> bytes:
    if type(value) is not bytes or len(value) not in (0, PUBLIC_KEY_BYTES):
        raise WireError(f"{what}: expected a {PUBLIC_KEY_BYTES}-byte public key")
    return value


def _signature(value: object, what: str) -> bytes:
    if type(value) is not bytes or len(value) not in (0, SIGNATURE_BYTES):
        raise WireError(f"{what}: expected a {SIGNATURE_BYTES}-byte signature")
    return value


def _is_uint(value: object) -> bool:
    return type(value) is int and 0 <= value < 2**64


def _is_name(value: object) -> bool:
    return type(value) is str and 0 < len(value) <= MAX_NAME_CHARS


def _decode_message(item: object) -> Message | UnknownMessage:
    if type(item) is not list or not item:
        raise WireError("message: expected a non-empty array")
    code = item[0]
    if type(code) is not int:
        raise WireError("message: type is not an integer")
    size = len(item)
    # Fast paths for the frequent, well-formed cases; anything else falls through to the
    # field-by-field checks below, which name what is wrong.
    if code == MessageType.PING:
        if size == 3 and _is_uint(item[1]) and _is_name(item[2]):
            return Ping(item[1], item[2])
        f = _fields(item, 3, "ping")
        return Ping(_uint(f[1], "ping.seq"), _name(f[2], "ping.target"))
    if code == MessageType.ACK:
        f = _fields(item, 2, "ack")
        return Ack(_uint(f[1], "ack.seq"))
    if code == MessageType.ALIVE:
        f = _fields(item, 8 if size == 8 else 6, "alive")
        meta = f[5]
        if not (type(meta) is bytes and len(meta) <= MAX_META_BYTES):
            meta = _meta(meta)
        key, signature = (_key(f[6], "alive.key"),
                          _signature(f[7], "alive.signature")) if size == 8 else (b"", b"")
        return Alive(_uint(f[1], "alive.incarnation"), _name(f[2], "alive.node"),
                     _addr(f[3], f[4]), meta, key, signature)
    if code == MessageType.SUSPECT or code == MessageType.DEAD:
        if size == 4 and _is_uint(item[1]) and _is_name(item[2]) and _is_name(item[3]):
            kind = Suspect if code == MessageType.SUSPECT else Dead
            return kind(item[1], item[2], item[3])
        what = "suspect" if code == MessageType.SUSPECT else "dead"
        if code == MessageType.DEAD and size == 5:
            return Dead(_uint(item[1], "dead.incarnation"), _name(item[2], "dead.node"),
                        _name(item[3], "dead.sender"), _signature(item[4], "dead.signature"))
        f = _fields(item, 4, what)
        _uint(f[1], f"{what}.incarnation")
        _name(f[2], f"{what}.node")
        _name(f[3], f"{what}.sender")
        raise WireError(f"{what}: malformed")  # unreachable: one of the checks raised
    if code == MessageType.INDIRECT_PING:
        f = _fields(item, 6, "indirect ping")
        if type(f[5]) is not bool:
            raise WireError("indirect ping: nack flag is not a boolean")
        return IndirectPing(_uint(f[1], "indirect ping.seq"), _name(f[2], "indirect ping.target"),
                            _addr(f[3], f[4]), f[5])
    if code == MessageType.NACK:
        f = _fields(item, 2, "nack")
        return Nack(_uint(f[1], "nack.seq"))
    if code == MessageType.USER:
        f = _fields(item, 2, "user")
        if type(f[1]) is not bytes:
            raise WireError("user: payload is not binary")
        return UserMessage(f[1])
    if code < 0:
        raise WireError("message: negative type")
    return UnknownMessage(code)


def decode_packet(data: bytes) -> list[Message | UnknownMessage]:
    """Every message of a compound packet; raises only WireError."""
    items = _unpack(data)
    if type(items) is not list or not 0 < len(items) <= MAX_MESSAGES_PER_PACKET:
        raise WireError("packet: expected an array of 1..1024 messages")
    return [_decode_message(item) for item in items]


# -- push-pull chunks ----------------------------------------------------------------------

def encode_member_record(record: MemberRecord) -> bytes:
    """One record, packed; `encode_members_chunk` concatenates these."""
    fields = [record.name, record.addr[0], record.addr[1], record.meta, record.incarnation,
              int(record.state)]
    if record.signature:
        fields += [record.key, record.signature]
    return _packer.pack(fields)


def encode_members_chunk(packed_records: list[bytes]) -> bytes:
    """A membership chunk from records packed with `encode_member_record`."""
    count = len(packed_records)
    header = (bytes((0x90 | count,)) if count < 16 else
              bytes((0xDC, count >> 8, count & 0xFF)) if count < 65_536 else
              bytes((0xDD,)) + count.to_bytes(4, "big"))
    return (bytes((WIRE_VERSION, 0x92, ChunkType.MEMBERS)) + header + b"".join(packed_records))


def encode_user_state_chunk(payload: bytes) -> bytes:
    """A chunk carrying one piece of the delegate's state."""
    return bytes((WIRE_VERSION,)) + _packer.pack([ChunkType.USER_STATE, payload])


_STATES = tuple(MemberState)


def _decode_record(item: object) -> MemberRecord:
    if type(item) is not list or len(item) not in (6, 8):
        raise WireError("member record: expected 6 or 8 fields")
    name, host, port, meta, incarnation, state = item[:6]
    key, signature = ((_key(item[6], "member record.key"),
                       _signature(item[7], "member record.signature"))
                      if len(item) == 8 else (b"", b""))
    if type(state) is not int or not 0 <= state <= 3:
        raise WireError("member record: state out of range")
    if type(name) is not str or not 0 < len(name) <= MAX_NAME_CHARS:
        name = _name(name, "member record.name")
    if type(incarnation) is not int or not 0 <= incarnation < 2**64:
        incarnation = _uint(incarnation, "member record.incarnation")
    if type(meta) is not bytes or len(meta) > MAX_META_BYTES:
        meta = _meta(meta)
    return MemberRecord(name, _addr(host, port), meta, incarnation, _STATES[state], key,
                        signature)


def decode_chunk(data: bytes) -> list[MemberRecord] | bytes | None:
    """A push-pull chunk: member records, a delegate state payload (bytes), or None for a
    chunk type this version does not know. Raises only WireError."""
    item = _unpack(data)
    if type(item) is not list or len(item) != 2 or type(item[0]) is not int:
        raise WireError("chunk: expected [type, body]")
    code, body = item
    if code == ChunkType.MEMBERS:
        if type(body) is not list or len(body) > MAX_RECORDS_PER_CHUNK:
            raise WireError("members chunk: expected an array of records")
        return [_decode_record(record) for record in body]
    if code == ChunkType.USER_STATE:
        if type(body) is not bytes:
            raise WireError("user state chunk: payload is not binary")
        return body
    if code < 0:
        raise WireError("chunk: negative type")
    return None
