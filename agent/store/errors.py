"""Errors of the etcd store, the IPAM and the local etcd runner (all under AgentError).

Rules: a person's bad input (`InvalidNetwork`) names the field and the value; etcd being away
is always `StoreUnavailable` (callers may retry it), never a raw grpc or etcd3 exception.
Imports: agent.errors only (the pure IPAM core imports this module too).
"""

from __future__ import annotations

from agent.errors import AgentError


class StoreError(AgentError):
    """Base of every error of the etcd store and its IPAM."""


class StoreUnavailable(StoreError):
    """etcd did not answer (down, unreachable, timed out); the call changed nothing we know of."""


class InvalidNetwork(StoreError):
    """A network definition is invalid; the message names the field and the value."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        super().__init__(f"network {field}={value!r}: {reason}")
        self.field = field
        self.value = value
        self.reason = reason


class NetworkConflict(StoreError):
    """Another network already holds this name, VNI or an overlapping subnet."""

    def __init__(self, field: str, value: object, holder: str) -> None:
        verb = "overlaps" if field in ("subnet", "subnet6") else "is already taken by"
        super().__init__(f"network {field}={value!r} {verb} network {holder!r}")
        self.field = field
        self.value = value
        self.holder = holder


class NetworkNotFound(StoreError):
    """No network with this name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"network {name!r} does not exist")
        self.name = name


class InvalidPolicy(StoreError):
    """A network policy definition is invalid; the message names the field and the value."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        super().__init__(f"policy {field}={value!r}: {reason}")
        self.field = field


class PolicyNotFound(StoreError):
    """No network policy with this name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"policy {name!r} does not exist")
        self.name = name


class PolicyExists(StoreError):
    """A network policy with this name is already stored."""

    def __init__(self, name: str) -> None:
        super().__init__(f"policy {name!r} already exists; delete it first")
        self.name = name


class NetworkInUse(StoreError):
    """A network still has endpoints and deletion was not forced."""

    def __init__(self, name: str, endpoints: int) -> None:
        super().__init__(
            f"network {name!r} still has {endpoints} endpoint(s); delete them or use --force"
        )
        self.name = name
        self.endpoints = endpoints


class AddressExhausted(StoreError):
    """No free address is left (in a block, or in a whole network's subnet)."""


class AddressNotAllocated(StoreError):
    """A release named an address that is not allocated in the given block."""


class EtcdStartError(StoreError):
    """The local etcd server did not start or did not become healthy in time."""


class InvalidAddress(StoreError):
    """A chosen address cannot be handed out at all; the message names the field and value."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        super().__init__(f"{field}={value!r}: {reason}")
        self.field = field
        self.value = value
        self.reason = reason


class AddressTaken(StoreError):
    """A chosen address is already allocated (to `holder`, when known)."""

    def __init__(self, address: object, holder: str | None) -> None:
        held_by = f"allocated to {holder!r}" if holder else "already allocated"
        super().__init__(f"ip={str(address)!r} is {held_by}")
        self.address = address
        self.holder = holder
