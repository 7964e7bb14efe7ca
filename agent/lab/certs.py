"""A certificate authority for the lab and the tests: etcd server and client certificates.

Owns: making a self-signed CA, certificates it signs (server certificates carry the members'
addresses as IP subject alternative names, so gRPC's server-name check passes; client
certificates carry the client-auth usage), and certificate revocation lists, all with
`cryptography`, written as PEM files (keys 0600).

Rules: everything is made fresh at `vxmesh lab up` (nothing is reused across labs); validity
can be shifted into the past so tests can present an expired certificate.
May import: cryptography, the standard library, agent.state_files.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.state_files import write_atomically

VALIDITY = datetime.timedelta(days=7)


@dataclass(frozen=True)
class CertFiles:
    """A certificate and its private key on disk (PEM)."""

    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    write_atomically(path, pem.decode(), 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    write_atomically(path, cert.public_bytes(serialization.Encoding.PEM).decode(), 0o644)


class LabCA:
    """A CA whose key and certificate live in `directory` (`ca.pem`, `ca-key.pem`)."""

    def __init__(self, directory: Path, common_name: str = "vxmesh lab CA") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_path = self.directory / "ca.pem"
        _write_cert(self.cert_path, self.cert)
        _write_key(self.directory / "ca-key.pem", self.key)

    def issue(self, name: str, *, addresses: Sequence[str] = (), server: bool = False,
              client: bool = False, valid_from: datetime.datetime | None = None,
              valid_for: datetime.timedelta = VALIDITY) -> CertFiles:
        """A certificate for `name` (files `<name>.pem`, `<name>-key.pem`); returns its paths.

        `addresses` become IP subject alternative names (what a client's server-name check
        compares); `valid_from` in the past with a short `valid_for` gives an expired one.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        start = valid_from or datetime.datetime.now(datetime.UTC) \
            - datetime.timedelta(minutes=5)
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + \
            ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + valid_for)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if addresses or server:
            alt: list[x509.GeneralName] = [x509.DNSName("localhost")]
            alt += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        files = CertFiles(self.directory / f"{name}.pem", self.directory / f"{name}-key.pem")
        _write_cert(files.cert, cert)
        _write_key(files.key, key)
        return files

    def revocation_list(self, revoked: Sequence[Path], path: Path | None = None) -> Path:
        """A CRL (PEM) revoking the certificates in `revoked`; returns its path."""
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - datetime.timedelta(minutes=5))
            .next_update(now + VALIDITY)
        )
        for cert_path in revoked:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(cert.serial_number)
                .revocation_date(now - datetime.timedelta(minutes=1)).build())
        crl = builder.sign(self.key, hashes.SHA256())
        target = path or self.directory / "crl.pem"
        write_atomically(target, crl.public_bytes(serialization.Encoding.PEM).decode(), 0o644)
        return target
