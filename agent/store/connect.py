"""From the [store] configuration to a working etcd client, checked once at start-up.

Owns: reading the TLS files and the password file, building the `EtcdClient` over every
configured member, and the start-up access check (`check_access`): each member is asked for
its status; a TLS handshake that fails, a client certificate etcd refuses (expired, revoked,
signed by another CA), or a refused user or password stops start-up with one `AgentConfigError`
line naming the key and the value. A member that merely does not answer is not an error: the
agent starts degraded and its services retry (etcd may come up later).

May import: agent.config (StoreConfig, AgentConfigError), agent.store (etcd_client, service,
schema), trio, cryptography (a certificate's validity), ssl and socket (the handshake
diagnosis), the standard library.
"""

from __future__ import annotations

import datetime
import logging
import random
import socket
import ssl
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import trio

from agent.config import AgentConfigError, StoreConfig, parse_etcd_url
from agent.store.errors import StoreError
from agent.store.etcd_client import (
    EtcdClient,
    EtcdEndpoint,
    EtcdSecurity,
    StoreAuthFailed,
)
from agent.store.schema import Network
from agent.store.service import Store

log = logging.getLogger(__name__)

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
"""The client connection preface and an empty SETTINGS frame: makes the server answer (or
refuse our certificate) after the handshake."""


@dataclass(frozen=True)
class AccessReport:
    """What the start-up check found: members that answered, members that did not."""

    answered: tuple[str, ...]
    unreachable: tuple[tuple[str, str], ...]
    """(URL, why) of members that did not answer (down, or no leader): not fatal."""


def _read(key: str, path: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise AgentConfigError(f"store.{key}: {path!r} cannot be read ({exc.strerror})") from None


def load_security(config: StoreConfig) -> EtcdSecurity:
    """The TLS material and credentials the config names; `AgentConfigError` naming a bad file."""
    ca = _read("ca_file", config.ca_file)
    cert = _read("cert_file", config.cert_file)
    key = _read("key_file", config.key_file)
    if ca is not None and b"-----BEGIN CERTIFICATE-----" not in ca:
        raise AgentConfigError(f"store.ca_file: {config.ca_file!r} holds no PEM certificate")
    if cert is not None:
        # Imported here: cryptography.x509 (0.6 MiB resident) only for TLS client certificates.
        from cryptography import x509

        try:
            leaf = x509.load_pem_x509_certificate(cert)
        except ValueError:
            raise AgentConfigError(f"store.cert_file: {config.cert_file!r} holds no PEM certificate"
                              ) from None
        expires = leaf.not_valid_after_utc
        if expires < datetime.datetime.now(datetime.UTC):
            raise AgentConfigError(f"store.cert_file: {config.cert_file!r} expired on "
                              f"{expires:%Y-%m-%d %H:%M} UTC")
    if cert is not None and key is not None:
        _check_key_pair(config, cert, key)
    password = ""
    if config.password_file:
        raw = _read("password_file", config.password_file) or b""
        password = raw.decode(errors="replace").rstrip("\r\n")
        if not password:
            raise AgentConfigError(f"store.password_file: {config.password_file!r} is empty")
    return EtcdSecurity(ca, cert, key, config.username, password)


def _check_key_pair(config: StoreConfig, cert: bytes, key: bytes) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with tempfile.TemporaryDirectory(prefix="vxmesh-tls-") as tmp:
        cert_path, key_path = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert_path.write_bytes(cert)
        key_path.write_bytes(key)
        try:
            context.load_cert_chain(str(cert_path), str(key_path))
        except ssl.SSLError as exc:
            raise AgentConfigError(f"store.key_file: {config.key_file!r} does not match"
                              f" store.cert_file={config.cert_file!r} ({exc.reason})") from None


def endpoints_of(config: StoreConfig) -> list[EtcdEndpoint]:
    endpoints = []
    for url in config.endpoints:
        tls, host, port = parse_etcd_url(url)
        endpoints.append(EtcdEndpoint(host, port, tls))
    return endpoints


def build_client(config: StoreConfig) -> EtcdClient:
    """A client over every configured member (connecting is lazy: this never blocks)."""
    return EtcdClient(endpoints_of(config), security=load_security(config),
                      timeout=config.timeout, member_timeout=config.member_timeout)


async def open_store(config: StoreConfig, *, rng: random.Random,
                     cached_networks: Iterable[Network] = ()) -> Store:
    """The agent's store: the client over every member, checked once (`check_access`, so a
    TLS or credential mistake stops start-up), its network view seeded with the copy a
    previous run kept (the last good copies of values that may be bad in etcd now)."""
    client = build_client(config)
    try:
        report = await trio.to_thread.run_sync(check_access, client, config)
    except BaseException:
        client.close()
        raise
    for url, why in report.unreachable:
        log.warning("etcd member %s does not answer yet (%s); starting degraded", url, why)
    store = Store(client, rng=rng, backoff_max=max(config.retry_interval, 0.1))
    store.network_view.adopt_cached(cached_networks)
    return store


def check_access(client: EtcdClient, config: StoreConfig) -> AccessReport:
    """Ask every member once (blocking); `AgentConfigError` for TLS or credential mistakes."""
    answered, unreachable = [], []
    for status in client.member_statuses(config.timeout):
        url = status.endpoint.url
        if not status.error:
            answered.append(url)
            continue
        if status.endpoint.tls:
            problem = tls_problem(status.endpoint, client.security, config, config.timeout)
            if problem is not None:
                raise AgentConfigError(problem)
        unreachable.append((url, status.error))
    if answered and client.security.username:
        try:
            client.status()
        except StoreAuthFailed as exc:
            raise AgentConfigError(f"store.password_file: {config.password_file!r} (user "
                              f"store.username={config.username!r}): {exc}") from None
        except StoreError as exc:
            log.warning("etcd: could not check the credentials yet: %s", exc)
    return AccessReport(tuple(answered), tuple(unreachable))


def tls_problem(endpoint: EtcdEndpoint, security: EtcdSecurity, config: StoreConfig,
                timeout: float) -> str | None:
    """Why TLS with `endpoint` fails, as one line naming the key at fault; None when the
    handshake works or the member cannot be reached at all (not a TLS problem)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.set_alpn_protocols(["h2"])
    with tempfile.TemporaryDirectory(prefix="vxmesh-tls-") as tmp:
        if security.ca is not None:
            context.load_verify_locations(cadata=security.ca.decode(errors="replace"))
        else:
            context.load_default_certs()
        if security.cert is not None and security.key is not None:
            cert_path, key_path = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
            cert_path.write_bytes(security.cert)
            key_path.write_bytes(security.key)
            context.load_cert_chain(str(cert_path), str(key_path))
    try:
        raw = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
    except OSError:
        return None  # down or unreachable: the agent starts degraded and retries
    url = endpoint.url
    ca_key = f"store.ca_file: {config.ca_file!r}" if config.ca_file else \
        "store.ca_file: empty (the system's roots)"
    try:
        with context.wrap_socket(raw, server_hostname=endpoint.host) as tls:
            tls.sendall(HTTP2_PREFACE)
            answer = tls.recv(9)
    except ssl.SSLCertVerificationError as exc:
        if "mismatch" in (exc.verify_message or ""):
            return (f"store.endpoints: {url!r}: the member's certificate does not name"
                    f" {endpoint.host} ({exc.verify_message})")
        return f"{ca_key} does not verify the certificate of {url} ({exc.verify_message})"
    except ssl.SSLError as exc:
        return _refused_client(url, config, exc.reason or str(exc))
    except OSError as exc:
        return _refused_client(url, config, str(exc) or type(exc).__name__)
    finally:
        raw.close()
    if not answer:
        return _refused_client(url, config, "closed the connection after the handshake")
    return None


def _refused_client(url: str, config: StoreConfig, reason: str) -> str:
    if not config.cert_file:
        return (f"store.cert_file: empty, but {url} refused the connection ({reason}); it"
                " probably requires a client certificate")
    return (f"store.cert_file: {config.cert_file!r}: {url} refused this client certificate"
            f" ({reason}; revoked, or signed by a CA it does not trust?)")
