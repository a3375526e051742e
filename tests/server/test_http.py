"""The HTTPS listener end to end over loopback: raw h11 and h2 clients over trio TLS
streams, curl as the real-program check, every limit, plain HTTP, graceful shutdown."""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
import socket
import ssl
from dataclasses import dataclass, field, replace
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h11
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shopcast.server._config import HttpConfig, load_config
from shopcast.server._http import serve_https
from shopcast.server._metrics import CONTENT_TYPE, Registry
from shopcast.server._routing import Request, Response, Router
from shopcast.server._static import StaticFiles


# Short enough to keep the suite fast, long enough for two shared CPU cores.
FAST = replace(
    load_config(environ={}).http,
    max_body_bytes=65536,
    max_header_bytes=4096,
    max_header_fields=20,
    header_timeout_s=1.0,
    body_timeout_s=1.0,
    keepalive_timeout_s=1.0,
    cors_origins=("https://shop.example",),
)
ALT_SVC = 'h3=":4433"; ma=86400'
BIG_FILE_BYTES = 256 * 1200


@dataclass(frozen=True)
class Certificate:
    cert_pem: bytes
    key_pem: bytes
    sha256_hex: str


@pytest.fixture(scope="module")
def certificate() -> Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=10))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Certificate(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        cert.fingerprint(hashes.SHA256()).hex(),
    )


def server_context(certificate: Certificate, tmp_path: Path) -> ssl.SSLContext:
    (tmp_path / "cert.pem").write_bytes(certificate.cert_pem)
    (tmp_path / "key.pem").write_bytes(certificate.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return context


@dataclass
class Running:
    port: int
    registry: Registry
    stop_accepting: trio.Event
    done: trio.Event
    certificate: Certificate
    slow_entered: trio.Event
    slow_release: trio.Event
    #: Every client stream the test opened, closed when the test ends.
    clients: list[trio.abc.Stream] = field(default_factory=list)

    def client_context(self, alpn: str) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.certificate.cert_pem.decode())
        context.set_alpn_protocols([alpn])
        return context

    async def open_tls(self, alpn: str = "http/1.1", host: str = "127.0.0.1") -> trio.SSLStream:
        tcp = await trio.open_tcp_stream(host, self.port)
        stream = trio.SSLStream(tcp, self.client_context(alpn), server_hostname="localhost")
        self.clients.append(stream)
        await stream.do_handshake()
        return stream

    async def open_plain(self) -> trio.SocketStream:
        tcp = await trio.open_tcp_stream("127.0.0.1", self.port)
        self.clients.append(tcp)
        return tcp


def make_router(registry: Registry, config: HttpConfig, static_root: Path, running: dict) -> Router:
    router = Router(metrics=registry, latency_buckets_s=config.latency_buckets_s, cors_origins=config.cors_origins)

    async def healthz(request: Request) -> Response:
        return Response.json({"ok": True, "http_version": request.http_version})

    async def echo(request: Request) -> Response:
        return Response.json({"echo": request.json(), "query": dict(request.query)})

    async def room(request: Request, room_id: str) -> Response:
        return Response.json({"room_id": room_id})

    async def boom(request: Request) -> Response:
        raise RuntimeError("handler bug")

    async def metrics(request: Request) -> Response:
        return Response.text(registry.render(), content_type=CONTENT_TYPE)

    async def slow(request: Request) -> Response:
        running["slow_entered"].set()
        await running["slow_release"].wait()
        return Response.json({"slow": "done"})

    router.add("GET", "/healthz", healthz, "healthz")
    router.add("POST", "/api/v1/echo", echo, "echo")
    router.add("GET", "/api/v1/rooms/{room_id}", room, "room")
    router.add("GET", "/boom", boom, "boom")
    router.add("GET", "/metrics", metrics, "metrics")
    router.add("GET", "/slow", slow, "slow")
    router.add("GET", "/static/{path:path}", StaticFiles(static_root, max_age_s=config.static_max_age_s).handle, "static")
    return router


async def start_server(
    nursery: trio.Nursery,
    tmp_path: Path,
    certificate: Certificate,
    config: HttpConfig = FAST,
    addresses: tuple[str, ...] = ("127.0.0.1",),
    certificate_sha256: bool = True,
) -> Running:
    static_root = tmp_path / "static"
    static_root.mkdir(exist_ok=True)
    (static_root / "big.bin").write_bytes(bytes(range(256)) * (BIG_FILE_BYTES // 256))
    (static_root / "app.js").write_text("export const x = 1;\n")
    registry = Registry()
    events = {"slow_entered": trio.Event(), "slow_release": trio.Event()}
    router = make_router(registry, config, static_root, events)
    stop_accepting = trio.Event()
    done = trio.Event()

    async def run(task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await serve_https(
                config=config,
                addresses=list(addresses),
                port=0,
                ssl_context=server_context(certificate, tmp_path),
                router=router,
                metrics=registry,
                alt_svc=ALT_SVC,
                certificate_sha256=(lambda: certificate.sha256_hex) if certificate_sha256 else None,
                stop_accepting=stop_accepting,
                drain_timeout_s=5.0,
                task_status=task_status,
            )
        finally:
            done.set()

    ports = await nursery.start(run)
    assert len(set(ports)) == 1
    return Running(ports[0], registry, stop_accepting, done, certificate, events["slow_entered"], events["slow_release"])


@pytest.fixture
async def start(nursery: trio.Nursery, tmp_path: Path, certificate: Certificate):
    """Starts servers; closes their clients when the test ends."""
    started: list[Running] = []

    async def start_one(**options) -> Running:
        running = await start_server(nursery, tmp_path, certificate, **options)
        started.append(running)
        return running

    yield start_one
    for running in started:
        for client in running.clients:
            await trio.aclose_forcefully(client)


@pytest.fixture
async def server(start) -> Running:
    return await start()


# --------------------------------------------------------------------------- clients


@dataclass
class H1Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


class H1Client:
    """A keep-alive HTTP/1.1 client on h11."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def request(
        self, method: str, target: str, headers: list[tuple[str, str]] = (), body: bytes = b""
    ) -> H1Response:
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        all_headers = [("host", "localhost"), *headers]
        if body:
            all_headers.append(("content-length", str(len(body))))
        data = self.conn.send(h11.Request(method=method, target=target, headers=all_headers))
        if body:
            data += self.conn.send(h11.Data(data=body))
        data += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)
        return await self.read_response()

    async def read_response(self) -> H1Response:
        response = None
        body = b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                headers = {k.decode(): v.decode() for k, v in response.headers}
                return H1Response(response.status_code, headers, body)
            else:
                raise AssertionError(f"unexpected {event!r}")


async def read_until_eof(stream: trio.abc.Stream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


def parse_raw_response(data: bytes) -> H1Response:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return H1Response(int(lines[0].split()[1]), headers, body)


async def raw_exchange(stream: trio.abc.Stream, data: bytes) -> H1Response:
    """Send raw bytes, read until the server closes, parse the one response."""
    await stream.send_all(data)
    return parse_raw_response(await read_until_eof(stream))


class H2Client:
    """An HTTP/2 client on h2; one reader task completes streams as frames arrive."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.results: dict[int, dict] = {}
        self.finished: dict[int, trio.Event] = {}
        self.send_lock = trio.Lock()
        self.terminated: h2.events.ConnectionTerminated | None = None
        self.closed = trio.Event()
        self.window_opened = trio.Event()

    async def start(self, nursery: trio.Nursery) -> None:
        self.conn.initiate_connection()
        await self.flush()
        nursery.start_soon(self.read_loop)

    async def flush(self) -> None:
        async with self.send_lock:
            data = self.conn.data_to_send()
            if data:
                await self.stream.send_all(data)

    async def read_loop(self) -> None:
        try:
            while data := await self.stream.receive_some(65536):
                for event in self.conn.receive_data(data):
                    self.on_event(event)
                await self.flush()
        except trio.BrokenResourceError:
            pass
        finally:
            self.closed.set()
            for event in self.finished.values():
                event.set()

    def on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            self.results[event.stream_id]["headers"] = dict(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            self.results[event.stream_id]["body"] += event.data
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.finished[event.stream_id].set()
        elif isinstance(event, h2.events.StreamReset):
            self.results[event.stream_id]["reset"] = event.error_code
            self.finished[event.stream_id].set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.terminated = event
        elif isinstance(event, h2.events.WindowUpdated):
            self.window_opened.set()
            self.window_opened = trio.Event()

    async def request(
        self, method: str, path: str, headers: list[tuple[str, str]] = (), body: bytes = b""
    ) -> dict:
        stream_id = self.conn.get_next_available_stream_id()
        self.results[stream_id] = {"body": b"", "headers": {}}
        self.finished[stream_id] = trio.Event()
        request_headers = [(":method", method), (":path", path), (":scheme", "https"), (":authority", "localhost"), *headers]
        self.conn.send_headers(stream_id, request_headers, end_stream=not body)
        await self.flush()
        offset = 0
        # Within the server's flow-control windows; stops when the server answers early.
        while offset < len(body) and not self.finished[stream_id].is_set():
            window_opened = self.window_opened
            size = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
            if size == 0:
                await window_opened.wait()
                continue
            chunk = body[offset : offset + size]
            offset += len(chunk)
            self.conn.send_data(stream_id, chunk, end_stream=offset == len(body))
            await self.flush()
        await self.finished[stream_id].wait()
        result = self.results[stream_id]
        result["status"] = int(result["headers"][":status"]) if result["headers"] else None
        return result


async def open_h2(server: Running, nursery: trio.Nursery) -> H2Client:
    stream = await server.open_tls("h2")
    assert stream.selected_alpn_protocol() == "h2"
    client = H2Client(stream)
    await client.start(nursery)
    return client


# --------------------------------------------------------------------------- HTTP/1.1


async def test_http11_routes_keepalive_and_alt_svc(server: Running) -> None:
    stream = await server.open_tls()
    assert stream.selected_alpn_protocol() == "http/1.1"
    client = H1Client(stream)
    response = await client.request("GET", "/healthz")
    assert response.status == 200
    assert response.json() == {"ok": True, "http_version": "1.1"}
    assert response.headers["alt-svc"] == ALT_SVC
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == str(len(response.body))
    # The same connection serves the next request.
    response = await client.request("GET", "/api/v1/rooms/r%2042")
    assert response.json() == {"room_id": "r 42"}
    response = await client.request("POST", "/api/v1/echo?x=1", [("content-type", "application/json")], b'{"a": [1]}')
    assert response.json() == {"echo": {"a": [1]}, "query": {"x": "1"}}
    await stream.aclose()


async def test_http11_pipelined_requests_answered_in_order(server: Running) -> None:
    stream = await server.open_tls()
    await stream.send_all(
        b"GET /api/v1/rooms/1 HTTP/1.1\r\nhost: x\r\n\r\n"
        b"GET /api/v1/rooms/2 HTTP/1.1\r\nhost: x\r\n\r\n"
        b"GET /api/v1/rooms/3 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    data = await read_until_eof(stream)
    assert [data.count(f'{{"room_id":"{n}"}}'.encode()) for n in (1, 2, 3)] == [1, 1, 1]
    assert data.index(b'"1"') < data.index(b'"2"') < data.index(b'"3"')


async def test_http11_chunked_body(server: Running) -> None:
    stream = await server.open_tls()
    response = await raw_exchange(
        stream,
        b"POST /api/v1/echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        b"5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n",
    )
    assert response.status == 200
    assert json.loads(response.body) == {"echo": {"a": 1}, "query": {}}


async def test_http11_errors_are_json(server: Running) -> None:
    client = H1Client(await server.open_tls())
    response = await client.request("GET", "/nope")
    assert response.status == 404
    assert response.json()["error"]["code"] == "not_found"
    assert response.headers["alt-svc"] == ALT_SVC
    response = await client.request("DELETE", "/healthz")
    assert response.status == 405
    assert response.headers["allow"] == "GET, HEAD, OPTIONS"
    response = await client.request("POST", "/api/v1/echo", body=b"{not json")
    assert response.status == 400
    assert response.json()["error"]["code"] == "malformed_json"
    assert "line 1 column 2" in response.json()["error"]["message"]
    response = await client.request("POST", "/api/v1/echo", body=b"[1, 2]")
    assert response.status == 400
    assert response.json()["error"]["code"] == "json_not_object"
    response = await client.request("GET", "/boom")
    assert response.status == 500
    assert response.json()["error"]["code"] == "internal_error"
    # The connection survives all of these.
    assert (await client.request("GET", "/healthz")).status == 200


async def test_http11_head_and_cors(server: Running) -> None:
    client = H1Client(await server.open_tls())
    get = await client.request("GET", "/healthz")
    head = await client.request("HEAD", "/healthz")
    assert head.status == 200
    assert head.body == b""
    assert head.headers["content-length"] == str(len(get.body))
    preflight = await client.request(
        "OPTIONS",
        "/api/v1/echo",
        [
            ("origin", "https://shop.example"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "authorization, content-type"),
        ],
    )
    assert preflight.status == 204
    assert preflight.headers["access-control-allow-origin"] == "https://shop.example"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-allow-headers"] == "authorization, content-type"
    refused = await client.request(
        "OPTIONS", "/api/v1/echo", [("origin", "https://evil.example"), ("access-control-request-method", "POST")]
    )
    assert refused.status == 403
    assert "access-control-allow-origin" not in refused.headers
    simple = await client.request("GET", "/healthz", [("origin", "https://shop.example")])
    assert simple.headers["access-control-allow-origin"] == "https://shop.example"


async def test_http11_body_too_large(server: Running) -> None:
    # Declared too large: answered before any body byte is read.
    stream = await server.open_tls()
    response = await raw_exchange(
        stream, b"POST /api/v1/echo HTTP/1.1\r\nhost: x\r\ncontent-length: 65537\r\n\r\n"
    )
    assert response.status == 413
    assert json.loads(response.body)["error"]["code"] == "body_too_large"
    # Chunked, so only counting finds out.
    stream = await server.open_tls()
    chunk = b"%x\r\n%s\r\n" % (40000, b"x" * 40000)
    response = await raw_exchange(
        stream,
        b"POST /api/v1/echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n" + chunk + chunk,
    )
    assert response.status == 413
    assert json.loads(response.body)["error"]["field"] == "body"


async def test_http11_head_too_large_and_too_many_fields(server: Running) -> None:
    stream = await server.open_tls()
    response = await raw_exchange(
        stream, b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 5000 + b"\r\n\r\n"
    )
    assert response.status == 431
    assert json.loads(response.body)["error"]["code"] == "headers_too_large"
    stream = await server.open_tls()
    many = b"".join(b"x-h%d: 1\r\n" % i for i in range(24))
    response = await raw_exchange(stream, b"GET /healthz HTTP/1.1\r\nhost: x\r\n" + many + b"\r\n")
    assert response.status == 431
    assert "25 header fields" in json.loads(response.body)["error"]["message"]


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n\r\n",  # no Host
        b"GET /healthz HTTP/1.1\r\nhost: x\r\nbad header line\r\n\r\n",
        b"GET healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    ],
)
async def test_http11_malformed_request_is_400(server: Running, raw: bytes) -> None:
    response = await raw_exchange(await server.open_tls(), raw)
    assert response.status == 400
    assert json.loads(response.body)["error"]["code"] == "bad_request"


async def test_slow_head_gets_408_while_others_are_served(server: Running) -> None:
    slow = await server.open_tls()
    head = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-padding: " + b"p" * 1000 + b"\r\n\r\n"
    answered = trio.Event()
    other_served = trio.Event()
    received = bytearray()

    async def trickle() -> None:
        # One byte at a time, far slower than the head allows; stops when answered.
        for byte in head:
            if answered.is_set():
                return
            try:
                await slow.send_all(bytes([byte]))
            except trio.BrokenResourceError:
                return
            with trio.move_on_after(0.05):
                await answered.wait()
        raise AssertionError("the whole head went through without a 408")

    async def read_answer() -> None:
        received.extend(await read_until_eof(slow))
        answered.set()

    async def other_client() -> None:
        # Served while the slow client is still trickling.
        client = H1Client(await server.open_tls())
        assert (await client.request("GET", "/healthz")).status == 200
        assert not answered.is_set()
        other_served.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle)
        nursery.start_soon(read_answer)
        nursery.start_soon(other_client)
    assert other_served.is_set()
    response = parse_raw_response(bytes(received))
    assert response.status == 408
    assert json.loads(response.body)["error"]["code"] == "request_timeout"
    assert response.headers["connection"] == "close"


async def test_slow_body_gets_408(server: Running) -> None:
    stream = await server.open_tls()
    await stream.send_all(b"POST /api/v1/echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")
    response = parse_raw_response(await read_until_eof(stream))
    assert response.status == 408
    assert "body" in json.loads(response.body)["error"]["message"]


async def test_idle_keepalive_connection_is_closed(server: Running) -> None:
    stream = await server.open_tls()
    client = H1Client(stream)
    assert (await client.request("GET", "/healthz")).status == 200
    # Nothing more is sent: after keepalive_timeout_s the server closes, silently.
    assert await read_until_eof(stream) == b""


async def test_max_connections(start) -> None:
    server = await start(config=replace(FAST, max_connections=2))
    first = H1Client(await server.open_tls())
    second = H1Client(await server.open_tls())
    assert (await first.request("GET", "/healthz")).status == 200
    assert (await second.request("GET", "/healthz")).status == 200
    with pytest.raises(trio.BrokenResourceError):
        third = await server.open_tls()
        await third.receive_some(1)
    assert "shopcast_http_connections_refused_total 1" in server.registry.render()
    await first.stream.aclose()
    # The server notices the close on its own schedule; a bounded number of tries.
    for _ in range(100):
        try:
            client = H1Client(await server.open_tls())
            assert (await client.request("GET", "/healthz")).status == 200
            break
        except trio.BrokenResourceError:
            await trio.sleep(0.01)
    else:
        raise AssertionError("a connection slot never came free")


# --------------------------------------------------------------------------- HTTP/2


async def test_http2_routes_concurrent_streams_and_flow_control(server: Running, nursery: trio.Nursery) -> None:
    client = await open_h2(server, nursery)
    result = await client.request("GET", "/healthz")
    assert result["status"] == 200
    assert json.loads(result["body"]) == {"ok": True, "http_version": "2"}
    assert result["headers"]["alt-svc"] == ALT_SVC
    results: dict[int, dict] = {}

    async def fetch(n: int) -> None:
        results[n] = await client.request("GET", f"/api/v1/rooms/{n}")

    async with trio.open_nursery() as requests:
        for n in range(20):
            requests.start_soon(fetch, n)
    assert {n: json.loads(r["body"])["room_id"] for n, r in results.items()} == {n: str(n) for n in range(20)}
    # Larger than the default 64 KiB window: sent in flow-control-sized chunks.
    big = await client.request("GET", "/static/big.bin")
    assert big["status"] == 200
    assert len(big["body"]) == BIG_FILE_BYTES
    assert big["body"] == bytes(range(256)) * (BIG_FILE_BYTES // 256)
    head = await client.request("HEAD", "/static/big.bin")
    assert head["body"] == b""
    assert head["headers"]["content-length"] == str(BIG_FILE_BYTES)
    echo = await client.request("POST", "/api/v1/echo", [("content-type", "application/json")], b'{"b": 2}')
    assert json.loads(echo["body"])["echo"] == {"b": 2}


async def test_http2_errors(server: Running, nursery: trio.Nursery) -> None:
    client = await open_h2(server, nursery)
    assert (await client.request("GET", "/nope"))["status"] == 404
    wrong = await client.request("PUT", "/healthz")
    assert wrong["status"] == 405
    assert wrong["headers"]["allow"] == "GET, HEAD, OPTIONS"
    bad = await client.request("POST", "/api/v1/echo", body=b"nope")
    assert bad["status"] == 400
    assert json.loads(bad["body"])["error"]["code"] == "malformed_json"
    many = await client.request("GET", "/healthz", [(f"x-h{i}", "1") for i in range(25)])
    assert many["status"] == 431
    too_big = await client.request("POST", "/api/v1/echo", body=b"x" * 200_000)
    assert too_big["status"] == 413
    assert json.loads(too_big["body"])["error"]["code"] == "body_too_large"
    declared = await client.request("POST", "/api/v1/echo", [("content-length", "65537")], b"x" * 65537)
    assert declared["status"] == 413
    assert "65537 bytes" in json.loads(declared["body"])["error"]["message"]
    # The connection is still good.
    assert (await client.request("GET", "/healthz"))["status"] == 200


async def test_http2_body_timeout_is_408(server: Running, nursery: trio.Nursery) -> None:
    client = await open_h2(server, nursery)
    stream_id = client.conn.get_next_available_stream_id()
    client.results[stream_id] = {"body": b"", "headers": {}}
    client.finished[stream_id] = trio.Event()
    client.conn.send_headers(
        stream_id, [(":method", "POST"), (":path", "/api/v1/echo"), (":scheme", "https"), (":authority", "x")]
    )
    client.conn.send_data(stream_id, b"{")
    await client.flush()
    await client.finished[stream_id].wait()
    assert client.results[stream_id]["headers"][":status"] == "408"


# --------------------------------------------------------------------------- curl


@pytest.fixture
def curl() -> str:
    path = shutil.which("curl")
    if path is None:
        pytest.skip("curl is not installed (apt-get install curl)")
    return path


@pytest.mark.parametrize(("flag", "version"), [("--http1.1", "1.1"), ("--http2", "2")])
async def test_curl(server: Running, curl: str, flag: str, version: str) -> None:
    base = f"https://127.0.0.1:{server.port}"
    result = await trio.run_process(
        [curl, "-k", flag, "-sS", "-D", "-", "-w", "\n%{http_version}", f"{base}/healthz"], capture_stdout=True
    )
    output = result.stdout.decode()
    assert output.splitlines()[-1] == version
    assert f'{{"ok":true,"http_version":"{version}"}}' in output
    assert f"alt-svc: {ALT_SVC}" in output
    result = await trio.run_process(
        [curl, "-k", flag, "-sS", "-X", "POST", "-H", "content-type: application/json", "-d", '{"n": 1}',
         "-w", "\n%{http_code}", f"{base}/api/v1/echo"],
        capture_stdout=True,
    )
    assert result.stdout.decode().splitlines() == ['{"echo":{"n":1},"query":{}}', "200"]
    result = await trio.run_process(
        [curl, "-k", flag, "-sS", "-w", "\n%{http_code}", f"{base}/nope"], capture_stdout=True
    )
    body, status = result.stdout.decode().splitlines()
    assert status == "404"
    assert json.loads(body)["error"]["code"] == "not_found"


async def test_curl_plain_http(server: Running, curl: str) -> None:
    result = await trio.run_process(
        [curl, "-sS", "-D", "-", f"http://127.0.0.1:{server.port}/certificate.sha256"], capture_stdout=True
    )
    output = result.stdout.decode()
    assert output.rstrip().endswith(server.certificate.sha256_hex)
    assert "access-control-allow-origin: *" in output.lower()


# --------------------------------------------------------------------------- plain HTTP


async def test_plain_http_certificate_hash_and_redirect(server: Running) -> None:
    tcp = await server.open_plain()
    client = H1Client(tcp)
    response = await client.request("GET", "/certificate.sha256")
    assert response.status == 200
    assert response.body.decode() == server.certificate.sha256_hex
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["access-control-allow-origin"] == "*"
    assert "alt-svc" not in response.headers
    response = await client.request("POST", "/api/v1/echo?room=7", body=b"{}")
    assert response.status == 308
    assert response.headers["location"] == "https://localhost/api/v1/echo?room=7"
    response = await raw_exchange(await server.open_plain(), b"GET / HTTP/1.1\r\nhost: evil.example/x\r\nconnection: close\r\n\r\n")
    assert response.status == 400


async def test_plain_http_without_certificate_hash_redirects(start) -> None:
    server = await start(certificate_sha256=False)
    client = H1Client(await server.open_plain())
    response = await client.request("GET", "/certificate.sha256")
    assert response.status == 308
    assert response.headers["location"] == "https://localhost/certificate.sha256"


# --------------------------------------------------------------------------- listener


async def test_dual_stack_socket(start) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        probe.close()
        pytest.skip("no IPv6 loopback on this machine")
    server = await start(addresses=("::",))
    for host in ("127.0.0.1", "::1"):
        client = H1Client(await server.open_tls(host=host))
        assert (await client.request("GET", "/healthz")).status == 200
        await client.stream.aclose()


async def test_graceful_shutdown_finishes_requests_in_flight(server: Running, nursery: trio.Nursery) -> None:
    idle = await server.open_tls()
    h2_client = await open_h2(server, nursery)
    busy = H1Client(await server.open_tls())
    results = {}

    async def slow_request() -> None:
        results["slow"] = await busy.request("GET", "/slow")

    nursery.start_soon(slow_request)
    await server.slow_entered.wait()
    server.stop_accepting.set()
    # The idle connection is closed at once and the HTTP/2 one gets a GOAWAY.
    assert await read_until_eof(idle) == b""
    await h2_client.closed.wait()
    assert h2_client.terminated is not None
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", server.port)
    assert not server.done.is_set()
    server.slow_release.set()
    await server.done.wait()
    assert results["slow"].status == 200
    assert results["slow"].headers["connection"] == "close"


async def test_metrics_rendered(server: Running) -> None:
    client = H1Client(await server.open_tls())
    await client.request("GET", "/healthz")
    await client.request("GET", "/nope")
    response = await client.request("GET", "/metrics")
    assert response.headers["content-type"] == CONTENT_TYPE
    text = response.body.decode()
    assert 'shopcast_http_requests_total{route="healthz",method="GET",status="200"} 1' in text
    assert 'shopcast_http_requests_total{route="unmatched",method="GET",status="404"} 1' in text
    assert 'shopcast_http_request_duration_seconds_count{route="healthz"} 1' in text
    assert "# TYPE shopcast_http_request_duration_seconds histogram" in text
    assert "shopcast_http_connections_open 1" in text
    assert 'shopcast_http_connections_total{protocol="http/1.1"} 1' in text
    received = [line for line in text.splitlines() if line.startswith("shopcast_http_received_bytes_total ")]
    assert int(received[0].split()[1]) > 0


async def test_http2_protocol_error_closes_only_that_connection(server: Running) -> None:
    broken = await server.open_tls("h2")
    await broken.send_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x04\x09\x00\x00\x00\x00\x01garbage!")
    data = await read_until_eof(broken)
    # A SETTINGS frame, then a GOAWAY (frame type 7) naming the error.
    assert b"\x07\x00\x00\x00\x00\x00" in data
    client = H1Client(await server.open_tls())
    assert (await client.request("GET", "/healthz")).status == 200
    assert "shopcast_http_protocol_errors_total{protocol=\"h2\"} 1" in server.registry.render()
