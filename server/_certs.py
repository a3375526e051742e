"""TLS certificates: a configured PEM pair, or a self-signed ECDSA P-256
certificate kept in the data directory and renewed before it expires.

Browsers accept a certificate pinned by ``serverCertificateHashes`` only if it
is ECDSA and valid for 14 days or less, which is why the self-signed one is
short-lived and renewed by the running server rather than long-lived.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["Certificate", "CertificateError", "CertificateStore", "make_self_signed"]

BASE_NAMES = ("localhost", "127.0.0.1", "::1")
# Backdating absorbs small clock differences between server and browser; it
# counts towards the 14-day limit, so it is kept short.
BACKDATE = dt.timedelta(minutes=5)


class CertificateError(Exception):
    """A configured certificate or key cannot be read or does not match."""


@dataclass(frozen=True)
class Certificate:
    """A certificate and key in use by the server."""

    cert_pem: bytes
    """The certificate chain, PEM, leaf first."""
    key_pem: bytes
    """The private key, PEM (PKCS#8, unencrypted)."""
    cert_path: Path
    """Where the chain is on disk (ssl and aioquic load from files)."""
    key_path: Path
    """Where the key is on disk."""
    sha256_hex: str
    """SHA-256 of the leaf's DER encoding, lowercase hex, for serverCertificateHashes."""
    not_before: dt.datetime
    not_after: dt.datetime
    self_signed: bool
    """True when the server made it and will renew it."""

    @property
    def sha256(self) -> bytes:
        """The raw digest."""
        return bytes.fromhex(self.sha256_hex)

    def ssl_context(self, alpn: Iterable[str] = ("h2", "http/1.1")) -> ssl.SSLContext:
        """A server-side SSLContext for TCP listeners, with the given ALPN protocols."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_path, self.key_path)
        context.set_alpn_protocols(list(alpn))
        return context


def _san(names: Iterable[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    seen: set[str] = set()
    for name in names:
        if not name or name in seen:
            continue
        seen.add(name)
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def make_self_signed(names: Iterable[str], validity_days: int,
                     now: dt.datetime) -> tuple[bytes, bytes]:
    """Make an ECDSA P-256 self-signed certificate for ``names``.

    Returns ``(cert_pem, key_pem)``. The validity period, backdating included,
    is at most ``validity_days`` days, which must be 1 to 14.
    """
    if not 1 <= validity_days <= 14:
        raise ValueError("validity_days must be from 1 to 14")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shopcast self-signed")])
    not_before = now - BACKDATE
    not_after = not_before + dt.timedelta(days=validity_days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(_san(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


def _describe(cert_pem: bytes, key_pem: bytes, cert_path: Path, key_path: Path,
              self_signed: bool) -> Certificate:
    try:
        leaf = x509.load_pem_x509_certificates(cert_pem)[0]
    except ValueError as exc:
        raise CertificateError(f"{cert_path}: not a PEM certificate ({exc})") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"{key_path}: not an unencrypted PEM private key ({exc})") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, spki) != \
            leaf.public_key().public_bytes(serialization.Encoding.DER, spki):
        raise CertificateError(f"{key_path} is not the key of {cert_path}")
    der = leaf.public_bytes(serialization.Encoding.DER)
    return Certificate(
        cert_pem=cert_pem,
        key_pem=key_pem,
        cert_path=cert_path,
        key_path=key_path,
        sha256_hex=hashlib.sha256(der).hexdigest(),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        self_signed=self_signed,
    )


class CertificateStore:
    """Finds the certificate to serve and renews a self-signed one.

    With ``cert_file``/``key_file`` set, those are loaded as they are (the
    operator renews them). Otherwise the store keeps ``tls/self-signed.pem``
    and ``tls/self-signed.key`` in the data directory, making a new pair when
    none exists, when it no longer covers the configured names, or when it is
    within ``renew_before`` of expiring.
    """

    def __init__(self, data_dir: Path, *, cert_file: str = "", key_file: str = "",
                 names: Iterable[str] = (), validity_days: int = 10,
                 renew_before: dt.timedelta = dt.timedelta(hours=48)) -> None:
        self._dir = data_dir / "tls"
        self._cert_file = Path(cert_file) if cert_file else None
        self._key_file = Path(key_file) if key_file else None
        self._names = tuple(dict.fromkeys((*BASE_NAMES, *names)))
        self._validity_days = validity_days
        self._renew_before = renew_before

    @property
    def self_signed(self) -> bool:
        """Whether the store makes its own certificate."""
        return self._cert_file is None

    def load(self, now: dt.datetime) -> Certificate:
        """The certificate to serve at ``now``, made or renewed if needed."""
        if self._cert_file is not None and self._key_file is not None:
            try:
                cert_pem = self._cert_file.read_bytes()
                key_pem = self._key_file.read_bytes()
            except OSError as exc:
                raise CertificateError(f"cannot read {exc.filename}: {exc.strerror}") from None
            return _describe(cert_pem, key_pem, self._cert_file, self._key_file, False)
        cert_path = self._dir / "self-signed.pem"
        key_path = self._dir / "self-signed.key"
        if cert_path.exists() and key_path.exists():
            try:
                current = _describe(cert_path.read_bytes(), key_path.read_bytes(),
                                    cert_path, key_path, True)
            except CertificateError:
                current = None
            if current is not None and not self.needs_renewal(current, now) \
                    and self._covers_names(current):
                return current
        return self._write_new(cert_path, key_path, now)

    def needs_renewal(self, cert: Certificate, now: dt.datetime) -> bool:
        """True when a self-signed certificate should be replaced at ``now``."""
        return cert.self_signed and now >= cert.not_after - self._renew_before

    def _covers_names(self, cert: Certificate) -> bool:
        leaf = x509.load_pem_x509_certificates(cert.cert_pem)[0]
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return False
        present = {str(v) for v in san.get_values_for_type(x509.DNSName)}
        present |= {str(v) for v in san.get_values_for_type(x509.IPAddress)}
        return all(str(ipaddress.ip_address(n)) in present if _is_ip(n) else n in present
                   for n in self._names)

    def _write_new(self, cert_path: Path, key_path: Path, now: dt.datetime) -> Certificate:
        cert_pem, key_pem = make_self_signed(self._names, self._validity_days, now)
        self._dir.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a reader never sees half a key; the key is
        # created readable by the owner only.
        tmp_key = key_path.with_suffix(".key.tmp")
        fd = os.open(tmp_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
        tmp_cert = cert_path.with_suffix(".pem.tmp")
        tmp_cert.write_bytes(cert_pem)
        os.replace(tmp_key, key_path)
        os.replace(tmp_cert, cert_path)
        return _describe(cert_pem, key_pem, cert_path, key_path, True)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
