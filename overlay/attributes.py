"""What an endpoint says about itself besides its address: its name, aliases and service ports.

Owns: `EndpointAttributes` (carried in every endpoint record of the neighbor table, so names
resolve on every host) and the one set of rules for them, used alike for a person's request
(the API) and a peer's record (the wire):
- `name` and each alias are DNS labels: 1 to 63 characters of a-z, 0-9, `-` and `_`, not
  starting or ending with `-` (stored lower-case; DNS is case-insensitive);
- at most `MAX_ALIASES` aliases, no duplicates, none equal to the name;
- at most `MAX_PORTS` service ports `(port, protocol)` with port 1-65535 and protocol tcp/udp,
  which the resolver serves as SRV records `_port._proto.alias`;
- at most `MAX_LABELS` labels `(key, value)` (network policy selects by them): the key 1 to
  63 characters of a-z, A-Z, 0-9, `-`, `_`, `.`, `/`, the value 0 to 63 of the same without
  `/`, all keys and values together at most `MAX_LABEL_BYTES` (an entry must fit one gossip
  packet); keys unique, kept sorted.
A bad value raises `InvalidAttributes` naming the field and the value.

Pure: the standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from overlay.errors import OverlayError

LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
MAX_ALIASES = 8
MAX_PORTS = 8
MAX_LABELS = 8
MAX_LABEL_BYTES = 256
PROTOCOLS = ("tcp", "udp")
LABEL_KEY = re.compile(r"[A-Za-z0-9_.\-/]{1,63}")
LABEL_VALUE = re.compile(r"[A-Za-z0-9_.\-]{0,63}")


class InvalidAttributes(OverlayError):
    """An endpoint name, alias or port is malformed; the message names the field and value."""


@dataclass(frozen=True, slots=True)
class EndpointAttributes:
    """An endpoint's DNS identity: `name` ("" = unnamed), `aliases`, service `ports`; and
    its policy `labels` (sorted `(key, value)` pairs)."""

    name: str = ""
    aliases: tuple[str, ...] = ()
    ports: tuple[tuple[int, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """Every name the endpoint answers to: its name (if any), then its aliases."""
        return ((self.name,) if self.name else ()) + self.aliases


NO_ATTRIBUTES = EndpointAttributes()


def dns_label(value: object, field_name: str) -> str:
    """`value` as a lower-case DNS label, or `InvalidAttributes` naming the field."""
    if not isinstance(value, str) or not LABEL.fullmatch(value.lower()):
        raise InvalidAttributes(
            f"{field_name}: {value!r:.80} must be a DNS label (1-63 of a-z, 0-9, '-', '_')")
    return value.lower()


def make_attributes(name: object = "", aliases: Iterable[object] = (),
                    ports: Iterable[object] = (),
                    labels: Iterable[object] = ()) -> EndpointAttributes:
    """Validated attributes; raises `InvalidAttributes` naming the first bad field."""
    clean_name = dns_label(name, "name") if name != "" else ""
    clean_aliases: list[str] = []
    for index, alias in enumerate(aliases):
        if index >= MAX_ALIASES:
            raise InvalidAttributes(f"aliases: at most {MAX_ALIASES} aliases")
        label = dns_label(alias, f"aliases[{index}]")
        if label == clean_name or label in clean_aliases:
            raise InvalidAttributes(f"aliases[{index}]: {label!r} is given twice")
        clean_aliases.append(label)
    clean_ports: list[tuple[int, str]] = []
    for index, port in enumerate(ports):
        if index >= MAX_PORTS:
            raise InvalidAttributes(f"ports: at most {MAX_PORTS} service ports")
        clean_ports.append(_port(port, f"ports[{index}]"))
    return EndpointAttributes(clean_name, tuple(clean_aliases), tuple(sorted(set(clean_ports))),
                              make_labels(labels))


def make_labels(labels: Iterable[object]) -> tuple[tuple[str, str], ...]:
    """Validated, sorted `(key, value)` labels; raises `InvalidAttributes` naming the first bad
    one (a pair or text `KEY=VALUE`)."""
    clean: dict[str, str] = {}
    for index, label in enumerate(labels):
        if index >= MAX_LABELS:
            raise InvalidAttributes(f"labels: at most {MAX_LABELS} labels")
        pair = tuple(label.split("=", 1)) if isinstance(label, str) else label
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise InvalidAttributes(f"labels[{index}]: {label!r:.80} must be KEY=VALUE")
        key, value = pair
        if not isinstance(key, str) or not LABEL_KEY.fullmatch(key) \
                or not isinstance(value, str) or not LABEL_VALUE.fullmatch(value):
            raise InvalidAttributes(
                f"labels[{index}]: {label!r:.80} must be KEY=VALUE (key 1-63, value 0-63 of "
                "a-z, A-Z, 0-9, '-', '_', '.'; '/' in the key)")
        if key in clean:
            raise InvalidAttributes(f"labels[{index}]: key {key!r} is given twice")
        clean[key] = value
    if sum(len(k) + len(v) for k, v in clean.items()) > MAX_LABEL_BYTES:
        raise InvalidAttributes(f"labels: at most {MAX_LABEL_BYTES} characters of keys and "
                                "values together")
    return tuple(sorted(clean.items()))


def _port(value: object, field_name: str) -> tuple[int, str]:
    """`(port, proto)` from a pair or from text `PORT/PROTO` (protocol defaults to tcp)."""
    if isinstance(value, str):
        number, _, proto = value.partition("/")
        pair: object = (number, proto or "tcp")
    else:
        pair = value
    if not isinstance(pair, list | tuple) or len(pair) != 2:
        raise InvalidAttributes(f"{field_name}: {value!r:.40} must be PORT/PROTO, e.g. 80/tcp")
    raw_port, proto = pair
    try:
        port = int(raw_port) if not isinstance(raw_port, bool) else -1
    except (TypeError, ValueError):
        port = -1
    if not 1 <= port <= 65535 or proto not in PROTOCOLS:
        raise InvalidAttributes(f"{field_name}: {value!r:.40} must be PORT/PROTO with port "
                                "1-65535 and protocol tcp or udp")
    return port, str(proto)
