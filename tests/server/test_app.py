"""The server as users run it: `shopcast serve` answers every route over
HTTP/1.1, HTTP/2 and HTTP/3, exits 2 on a bad config, and shuts down
gracefully on SIGTERM."""

import hashlib
import json
import re
import signal
import ssl
import subprocess
import sys
import time

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shopcast.server._app import run_server
from shopcast.server._client import CertificateMismatch, http3_request, open_webtransport
from shopcast.server._config import load_config
from shopcast.server._webtransport import SessionClosed, WebTransportSession

ROUTES = ["/healthz", "/metrics", "/api/v1/server"]


def start_serve(tmp_path, *extra: str) -> tuple[subprocess.Popen, int]:
    # Logs go to a file: an undrained pipe could fill and stall the server.
    log = open(tmp_path / "serve.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "shopcast.server._cli", "serve", "--host", "127.0.0.1", "--port", "0",
         "--data-dir", str(tmp_path / "data"), *extra],
        stdout=subprocess.PIPE, stderr=log, text=True)
    log.close()
    deadline = time.monotonic() + 120
    lines = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"https://localhost:(\d+)/", line)
        if match:
            return process, int(match.group(1))
    process.kill()
    process.wait()
    process.stdout.close()
    raise AssertionError("shopcast serve did not start:\n" + "".join(lines)
                         + (tmp_path / "serve.log").read_text())


@pytest.fixture
def served(tmp_path):
    process, port = start_serve(tmp_path)
    yield process, port
    if process.poll() is None:
        process.kill()
        process.wait()
    process.stdout.close()


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "-k", "--max-time", "20", *args],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.e2e
@pytest.mark.parametrize("version_flag, version", [("--http1.1", "1.1"), ("--http2", "2")])
def test_every_route_over_curl(served, curl_path, version_flag, version):
    _, port = served
    for route in ROUTES:
        result = curl(version_flag, "-w", "\\n%{http_version} %{http_code}", f"https://localhost:{port}{route}")
        assert result.returncode == 0, result.stderr
        body, _, status_line = result.stdout.rpartition("\n")
        assert status_line == f"{version} 200", (route, status_line)
        if route == "/healthz":
            assert json.loads(body) == {"status": "ok"}
        elif route == "/api/v1/server":
            info = json.loads(body)
            assert re.fullmatch(r"[0-9a-f]{64}", info["certificate"]["sha256"])
            assert info["webtransport_url"].endswith(f":{port}")
        else:
            assert "shopcast_http_requests_total" in body
    head = curl(version_flag, "-D", "-", "-o", "/dev/null", f"https://localhost:{port}/healthz")
    assert f'alt-svc: h3=":{port}"' in head.stdout.lower()


@pytest.mark.e2e
def test_errors_are_json_with_status(served, curl_path):
    _, port = served
    result = curl("-w", "\\n%{http_code}", f"https://localhost:{port}/nope")
    body, _, status = result.stdout.rpartition("\n")
    assert status == "404"
    assert json.loads(body)["error"]["code"] == "not_found"
    result = curl("-X", "POST", "-w", "\\n%{http_code}", f"https://localhost:{port}/healthz")
    assert result.stdout.rpartition("\n")[2] == "405"


def test_sigterm_exits_0_within_the_drain_deadline(served, tmp_path):
    process, port = served
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert time.monotonic() - started < 5.0 + 5  # drain_timeout_s plus process teardown
    assert "event=stopped" in (tmp_path / "serve.log").read_text()


def test_bad_config_exits_2_naming_the_key(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[webtransport]\nmax_sessions_per_connection = "many"\n')
    result = subprocess.run([sys.executable, "-m", "shopcast.server._cli", "serve", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "webtransport.max_sessions_per_connection" in result.stderr
    assert "expected an integer" in result.stderr


def test_token_and_cert_commands(tmp_path):
    data = str(tmp_path / "data")
    cert = subprocess.run([sys.executable, "-m", "shopcast.server._cli", "cert", "--data-dir", data],
                          capture_output=True, text=True, timeout=60)
    assert cert.returncode == 0, cert.stderr
    assert re.search(r"^sha256\s+[0-9a-f]{64}$", cert.stdout, re.M)
    token = subprocess.run([sys.executable, "-m", "shopcast.server._cli", "token", "--role", "host",
                            "--room", "r1", "--ttl", "60", "--data-dir", data],
                           capture_output=True, text=True, timeout=60)
    assert token.returncode == 0, token.stderr
    assert token.stdout.count(".") == 2
    refused = subprocess.run([sys.executable, "-m", "shopcast.server._cli", "token", "--role", "viewer",
                              "--room", "*", "--data-dir", data], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "every room" in refused.stderr
    version = subprocess.run([sys.executable, "-m", "shopcast.server._cli", "--version"],
                             capture_output=True, text=True, timeout=60)
    assert version.stdout.startswith("shopcast ")


async def test_routes_over_http3(running_server):
    port = running_server.port
    for route in ROUTES:
        response = await http3_request(f"https://127.0.0.1:{port}{route}", verify=False)
        assert response.status == 200, (route, response.body)
    info = json.loads((await http3_request(f"https://127.0.0.1:{port}/api/v1/server", verify=False)).body)
    assert info["certificate"]["sha256"] == running_server.app.certificate.sha256_hex
    missing = await http3_request(f"https://127.0.0.1:{port}/nope", verify=False)
    assert missing.status == 404 and json.loads(missing.body)["error"]["code"] == "not_found"
    metrics = (await http3_request(f"https://127.0.0.1:{port}/metrics", verify=False)).body.decode()
    assert re.search(r'shopcast_http_requests_total\{route="healthz",method="GET",status="200"\} 1', metrics)
    assert re.search(r"^shopcast_quic_connections_total [1-9]", metrics, re.M)


async def test_shutdown_closes_sessions_with_a_reason(tmp_path):
    # A generous drain deadline: this checks that the reason reaches the
    # client, not how fast a loaded machine gets there.
    config = load_config(environ={}, overrides={"server": {
        "host": "127.0.0.1", "port": 0, "data_dir": str(tmp_path), "drain_timeout_s": 20.0}})
    shutdown = trio.Event()
    entered = trio.Event()

    async def hold(session: WebTransportSession) -> None:
        entered.set()
        await session.wait_closed()

    async with trio.open_nursery() as nursery:
        started = await nursery.start(lambda task_status: run_server(
            config, shutdown=shutdown, task_status=task_status))
        started.app.quic.session_handlers["/hold"] = hold
        async with open_webtransport(f"https://127.0.0.1:{started.port}/hold",
                                     certificate_sha256=started.app.certificate.sha256_hex) as session:
            await entered.wait()
            shutdown.set()
            with trio.fail_after(30):
                await session.wait_closed()
            assert session.close_reason == "server shutting down"
            with pytest.raises(SessionClosed):
                await session.accept_stream()


async def test_streams_and_datagrams_echo_through_the_whole_server(running_server):
    app = running_server.app

    async def echo(session: WebTransportSession) -> None:
        async with trio.open_nursery() as nursery:
            async def datagrams() -> None:
                while True:
                    session.send_datagram(await session.receive_datagram())
            nursery.start_soon(datagrams)
            stream = await session.accept_stream()
            data = bytearray()
            while chunk := await stream.receive_some():
                data += chunk
            await stream.send_all(bytes(data))
            await stream.send_eof()
            await session.wait_closed()
            nursery.cancel_scope.cancel()

    app.quic.session_handlers["/echo"] = echo
    async with open_webtransport(f"https://127.0.0.1:{running_server.port}/echo",
                                 certificate_sha256=app.certificate.sha256_hex) as session:
        stream = await session.open_bidi_stream()
        await stream.send_all(b"hello" * 10_000)
        await stream.send_eof()
        received = bytearray()
        while chunk := await stream.receive_some():
            received += chunk
        assert received == b"hello" * 10_000
        with trio.fail_after(5):
            echoed = None
            while echoed is None:
                session.send_datagram(b"ping")
                with trio.move_on_after(0.2):
                    echoed = await session.receive_datagram()
        assert echoed == b"ping"


async def test_certificate_is_renewed_while_serving(server_factory):
    # Renew whenever checked (the renewal window is longer than the
    # validity), checking every second: the running server must swap
    # certificates for HTTPS and QUIC alike without a restart.
    started = await server_factory({"tls": {"renew_before_h": 240, "renew_check_interval_s": 1.0},
                                    "demo": {"enabled": False}})
    app = started.app
    first = app.certificate.sha256_hex
    with trio.fail_after(20):
        while app.certificate.sha256_hex == first:
            await trio.sleep(0.05)
    renewed = app.certificate.sha256_hex
    info = json.loads((await http3_request(f"https://127.0.0.1:{started.port}/api/v1/server",
                                           verify=False)).body)
    assert info["certificate"]["sha256"] in (renewed, app.certificate.sha256_hex)
    app.quic.session_handlers["/noop"] = lambda session: session.wait_closed()
    # QUIC presents the current certificate to new connections. It renews
    # every second here, so a pin read just before a renewal may miss once.
    for attempt in range(3):
        try:
            async with open_webtransport(f"https://127.0.0.1:{started.port}/noop",
                                         certificate_sha256=app.certificate.sha256_hex):
                break
        except CertificateMismatch:
            continue
    else:
        raise AssertionError("QUIC never presented the renewed certificate")
    # HTTPS serves a renewed certificate too.
    pem = await trio.to_thread.run_sync(
        lambda: ssl.get_server_certificate(("127.0.0.1", started.port), timeout=10))
    served = hashlib.sha256(x509.load_pem_x509_certificate(pem.encode()).public_bytes(
        serialization.Encoding.DER)).hexdigest()
    assert served != first


async def test_bad_or_expired_tokens_get_401_with_json_while_others_are_served(running_server):
    app = running_server.app
    port = running_server.port
    good = app.tokens.mint(subject="h", role="host", room="demo", ttl_s=600, now=time.time())
    expired = app.tokens.mint(subject="h", role="host", room="demo", ttl_s=60, now=time.time() - 3600)
    cases = [(None, 401, "missing_token"), (expired, 401, "token_expired"),
             (good[:-3] + "abc", 401, "token_bad_signature"), ("not-a-jwt", 401, "token_malformed"),
             (app.tokens.mint(subject="v", role="viewer", room="demo", ttl_s=60, now=time.time()),
              403, "forbidden")]
    for token, status, code in cases:
        headers = [("authorization", f"Bearer {token}")] if token else []
        response = await http3_request(f"https://127.0.0.1:{port}/api/v1/rooms/demo/chat",
                                       headers=headers, verify=False)
        assert response.status == status, (code, response.body)
        error = json.loads(response.body)["error"]
        assert (error["code"], error["field"]) == (code, "authorization")
        healthy = await http3_request(f"https://127.0.0.1:{port}/healthz", verify=False)
        assert healthy.status == 200
    allowed = await http3_request(f"https://127.0.0.1:{port}/api/v1/rooms/demo/chat",
                                  headers=[("authorization", f"Bearer {good}")], verify=False)
    assert allowed.status == 200
