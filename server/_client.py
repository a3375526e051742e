"""The client role of the QUIC endpoint: open a WebTransport session to a
server, with the same session and stream objects the server hands its
handlers. Tests, benchmarks and ``shopcast.client`` build on it.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator
from urllib.parse import urlsplit

import trio
from aioquic.h3.connection import H3_ALPN
from aioquic.quic.configuration import QuicConfiguration
from cryptography.hazmat.primitives import serialization

from shopcast.server._config import Config, load_config
from shopcast.server._quic import H3Response, QuicConnectionDriver, QuicEndpoint, UdpTransport
from shopcast.server._webtransport import WebTransportSession

__all__ = [
    "CertificateMismatch",
    "client_configuration",
    "http3_request",
    "open_webtransport",
]


class CertificateMismatch(Exception):
    """The server's certificate does not have the pinned SHA-256."""


@dataclass(frozen=True)
class _Connected:
    driver: QuicConnectionDriver
    authority: str
    """host:port as :authority."""
    target: str
    """Path and query as :path."""


@asynccontextmanager
async def _connect(url: str, *, verify: bool, config: Config | None) -> AsyncIterator[_Connected]:
    """A client QUIC connection to ``url``'s host on its own UDP socket and
    endpoint; closed, and its plumbing stopped, on exit. A single error from
    inside is raised as itself, not wrapped in a group: the nursery only runs
    our own plumbing, so such an error is the caller's (a refused session, a
    wrong pin, or their own)."""
    config = config or _default_config()
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"expected an https:// URL, got {url!r}")
    port = parts.port or 443
    family, _, _, _, addr = (await trio.socket.getaddrinfo(
        parts.hostname, port, type=socket.SOCK_DGRAM))[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
    sock.setblocking(False)
    endpoint = QuicEndpoint(quic_config=config.quic, webtransport_config=config.webtransport,
                            certificate=_no_certificate, tokens=None)  # type: ignore[arg-type]
    endpoint.stop_accepting()
    authority = f"{parts.hostname}:{port}" if ":" not in parts.hostname \
        else f"[{parts.hostname}]:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(endpoint.serve, [sock])
            driver = endpoint.connect(UdpTransport(sock), addr[:2] if family == socket.AF_INET else addr,
                                      client_configuration(parts.hostname, config, verify=verify))
            nursery.start_soon(_keep_alive, driver, config.quic.client_pings_per_idle_timeout)
            try:
                yield _Connected(driver, authority, target)
            finally:
                driver.close("client done")
                with trio.move_on_after(1):
                    await driver.finished.wait()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 and isinstance(group.exceptions[0], Exception):
            raise group.exceptions[0] from None
        raise


@asynccontextmanager
async def open_webtransport(url: str, *, certificate_sha256: str | None = None,
                            verify: bool = True, config: Config | None = None
                            ) -> AsyncIterator[WebTransportSession]:
    """Open a WebTransport session to ``url`` (https://host:port/path?query).

    With ``certificate_sha256`` the server's certificate must have that
    SHA-256 (as browsers' serverCertificateHashes check); with ``verify``
    False nothing is checked (tests against a throwaway certificate).
    Otherwise the system's trust store is used.

    Raises SessionClosed if the server refuses the session (code = HTTP
    status, reason = response body) and CertificateMismatch on a wrong pin.
    """
    async with _connect(url, verify=verify and certificate_sha256 is None, config=config) as c:
        session = await c.driver.connect_webtransport(c.authority, c.target)
        if certificate_sha256 is not None:
            _check_pin(c.driver.quic, certificate_sha256)
        yield session


async def http3_request(url: str, method: str = "GET", *, headers: list[tuple[str, str]] = (),
                        body: bytes = b"", verify: bool = True,
                        config: Config | None = None) -> H3Response:
    """One HTTP/3 request to ``url`` on a fresh connection (tests and tools)."""
    async with _connect(url, verify=verify, config=config) as c:
        return await c.driver.request(c.authority, method, c.target, list(headers), body)


def client_configuration(server_name: str, config: Config, *, verify: bool) -> QuicConfiguration:
    """The aioquic configuration of a client connection (HTTP/3 with datagrams)."""
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=H3_ALPN, server_name=server_name,
        max_datagram_frame_size=config.quic.max_datagram_frame_size,
        idle_timeout=config.quic.idle_timeout_s,
        max_stream_data=config.webtransport.stream_buffer_bytes,
        max_data=config.webtransport.stream_buffer_bytes * 16)
    if not verify:
        configuration.verify_mode = ssl.CERT_NONE
    return configuration


def _check_pin(connection, expected_hex: str) -> None:
    # aioquic keeps the peer's certificate on its TLS context only.
    cert = connection.tls._peer_certificate
    der = cert.public_bytes(serialization.Encoding.DER)
    actual = hashlib.sha256(der).hexdigest()
    if actual != expected_hex.lower():
        raise CertificateMismatch(f"server certificate sha256 {actual} != pinned {expected_hex}")


_DEFAULTS: list[Config] = []


def _default_config() -> Config:
    """The embedded defaults, parsed once per process (a client may open many connections)."""
    if not _DEFAULTS:
        _DEFAULTS.append(load_config(environ={}))
    return _DEFAULTS[0]


async def _keep_alive(driver: QuicConnectionDriver, pings_per_idle: int) -> None:
    # A viewer of a quiet track sends nothing for long spells; a PING well
    # inside the idle timeout keeps the connection (the server never pings).
    while driver.quic._remote_max_idle_timeout is None:  # until the server's parameters arrive
        await driver._handshake_progress()
    uid = 0
    while True:
        await trio.sleep(_idle_timeout_s(driver.quic) / pings_per_idle)
        uid += 1
        driver.quic.send_ping(uid)
        driver.wake()


def _idle_timeout_s(connection) -> float:
    # The idle timeout in force is the smaller of ours and the peer's; aioquic
    # keeps the peer's transport parameter private (aioquic 1.x).
    remote = connection._remote_max_idle_timeout
    local = connection.configuration.idle_timeout
    return min(local, remote) if remote else local


def _no_certificate():  # pragma: no cover - the client endpoint never accepts
    raise RuntimeError("a client endpoint has no certificate")



