"""The router and request parsing, sans-IO: no sockets."""

import json
import logging

import pytest

from shopcast.server._metrics import Registry
from shopcast.server._routing import (
    HTTPError,
    Request,
    Response,
    Router,
    check_header_limits_untrusted,
    request_from_head_untrusted,
    request_from_pseudo_headers_untrusted,
)

BUCKETS_S = (0.01, 0.1, 1.0)


def make_request(method: str, path: str, headers=(), body: bytes = b"") -> Request:
    return Request(method=method, path=path, query={}, headers=tuple(headers), body=body)


def body_of(response: Response) -> dict:
    return json.loads(response.body)


@pytest.fixture
def registry() -> Registry:
    return Registry()


@pytest.fixture
def router(registry: Registry) -> Router:
    router = Router(metrics=registry, latency_buckets_s=BUCKETS_S, cors_origins=("https://shop.example",))

    async def room(request: Request, room_id: str) -> Response:
        return Response.json({"room": room_id, "params": dict(request.path_params)})

    async def new_room(request: Request) -> Response:
        return Response.json({"new": True})

    async def create(request: Request) -> Response:
        payload = request.json()
        if "name" not in payload:
            raise HTTPError(422, "missing_field", "name is required", "name")
        return Response.json(payload, status=201)

    async def files(request: Request, path: str) -> Response:
        return Response.text(path)

    async def boom(request: Request) -> Response:
        raise ZeroDivisionError("bug")

    router.add("GET", "/api/v1/rooms/{room_id}", room, "room")
    router.add("GET", "/api/v1/rooms/new", new_room, "room_new")
    router.add("POST", "/api/v1/rooms", create, "room_create")
    router.add("GET", "/files/{path:path}", files, "files")
    router.add("GET", "/boom", boom, "boom")
    return router


async def test_path_parameters_are_decoded_and_literals_win(router: Router) -> None:
    response = await router.handle(make_request("GET", "/api/v1/rooms/a%20b"))
    assert body_of(response) == {"room": "a b", "params": {"room_id": "a b"}}
    response = await router.handle(make_request("GET", "/api/v1/rooms/new"))
    assert body_of(response) == {"new": True}
    response = await router.handle(make_request("GET", "/files/a/b%2Fc"))
    assert response.body == b"a/b%2Fc"


async def test_unknown_path_is_404_and_wrong_method_405(router: Router) -> None:
    response = await router.handle(make_request("GET", "/nope"))
    assert response.status == 404
    assert body_of(response) == {"error": {"code": "not_found", "message": "no route for /nope", "field": "path"}}
    assert (await router.handle(make_request("GET", "/api/v1/rooms/"))).status == 404
    response = await router.handle(make_request("DELETE", "/api/v1/rooms/7"))
    assert response.status == 405
    assert response.header("allow") == "GET, HEAD, OPTIONS"
    assert body_of(response)["error"]["code"] == "method_not_allowed"


async def test_head_is_answered_from_get(router: Router) -> None:
    get = await router.handle(make_request("GET", "/api/v1/rooms/7"))
    head = await router.handle(make_request("HEAD", "/api/v1/rooms/7"))
    assert head.status == 200
    assert head.body == b""
    assert head.header("content-length") == str(len(get.body))
    assert head.header("content-type") == "application/json"


async def test_handler_errors(router: Router, registry: Registry, caplog: pytest.LogCaptureFixture) -> None:
    response = await router.handle(make_request("POST", "/api/v1/rooms", body=b'{"x": 1}'))
    assert response.status == 422
    assert body_of(response)["error"] == {"code": "missing_field", "message": "name is required", "field": "name"}
    with caplog.at_level(logging.ERROR, logger="shopcast.http"):
        response = await router.handle(make_request("GET", "/boom"))
    assert response.status == 500
    assert body_of(response)["error"]["code"] == "internal_error"
    assert "ZeroDivisionError" in caplog.text
    assert 'shopcast_http_handler_errors_total{route="boom"} 1' in registry.render()


@pytest.mark.parametrize(
    ("body", "code", "fragment"),
    [
        (b"", "malformed_json", "empty"),
        (b"\xff{}", "malformed_json", "not UTF-8"),
        (b'{"a": }', "malformed_json", "line 1 column 7"),
        (b"[" * 100_000 + b"]" * 100_000, "malformed_json", "nested"),
        (b"1" * 5000, "malformed_json", "not valid JSON"),
        (b"[1]", "json_not_object", "not list"),
        (b'"text"', "json_not_object", "not str"),
    ],
)
async def test_malformed_json_is_400_naming_the_problem(router: Router, body: bytes, code: str, fragment: str) -> None:
    response = await router.handle(make_request("POST", "/api/v1/rooms", body=body))
    assert response.status == 400
    error = body_of(response)["error"]
    assert error["code"] == code
    assert fragment in error["message"]


async def test_options_and_cors(router: Router) -> None:
    plain = await router.handle(make_request("OPTIONS", "/api/v1/rooms"))
    assert plain.status == 204
    assert plain.header("allow") == "POST, OPTIONS"
    preflight = await router.handle(
        make_request(
            "OPTIONS",
            "/api/v1/rooms",
            [
                ("origin", "https://shop.example"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "authorization"),
            ],
        )
    )
    assert preflight.status == 204
    assert preflight.header("access-control-allow-origin") == "https://shop.example"
    assert preflight.header("access-control-allow-headers") == "authorization"
    assert preflight.header("vary") == "origin"
    wrong_method = await router.handle(
        make_request(
            "OPTIONS", "/api/v1/rooms", [("origin", "https://shop.example"), ("access-control-request-method", "PUT")]
        )
    )
    assert wrong_method.status == 405
    other_origin = await router.handle(
        make_request("OPTIONS", "/api/v1/rooms", [("origin", "https://x.example"), ("access-control-request-method", "POST")])
    )
    assert other_origin.status == 403
    assert other_origin.header("access-control-allow-origin") is None
    # An actual request from an allowed origin, even an error, carries the header.
    missing = await router.handle(make_request("GET", "/nope", [("origin", "https://shop.example")]))
    assert missing.header("access-control-allow-origin") == "https://shop.example"
    assert (await router.handle(make_request("OPTIONS", "/nope"))).status == 404


async def test_cors_wildcard(registry: Registry) -> None:
    router = Router(metrics=registry, latency_buckets_s=BUCKETS_S, cors_origins=("*",))

    async def ok(request: Request) -> Response:
        return Response.json({})

    router.add("GET", "/x", ok, "x")
    response = await router.handle(make_request("GET", "/x", [("origin", "https://any.example")]))
    assert response.header("access-control-allow-origin") == "*"
    assert (await router.handle(make_request("GET", "/x"))).header("access-control-allow-origin") is None


async def test_metrics_per_route_and_status(router: Router, registry: Registry) -> None:
    await router.handle(make_request("GET", "/api/v1/rooms/1"))
    await router.handle(make_request("GET", "/api/v1/rooms/2"))
    await router.handle(make_request("GET", "/nope"))
    await router.handle(make_request("BREW", "/nope"))
    text = registry.render()
    assert 'shopcast_http_requests_total{route="room",method="GET",status="200"} 2' in text
    assert 'shopcast_http_requests_total{route="unmatched",method="GET",status="404"} 1' in text
    assert 'shopcast_http_requests_total{route="unmatched",method="other",status="404"} 1' in text
    assert 'shopcast_http_request_duration_seconds_count{route="room"} 2' in text


def test_route_table_and_bad_registrations(router: Router) -> None:
    assert router.route_table() == [
        ("GET", "/api/v1/rooms/{room_id}", "room"),
        ("GET", "/api/v1/rooms/new", "room_new"),
        ("POST", "/api/v1/rooms", "room_create"),
        ("GET", "/files/{path:path}", "files"),
        ("GET", "/boom", "boom"),
    ]

    async def handler(request: Request) -> Response:
        return Response(204)

    for method, pattern, name in [
        ("GET", "/other", "room"),  # name taken
        ("GET", "/boom", "boom2"),  # route taken
        ("HEAD", "/h", "h"),  # the router answers HEAD
        ("GET", "no-slash", "n"),
        ("GET", "/{a}/{a}", "dup"),
        ("GET", "/{rest:path}/x", "rest"),
        ("GET", "/x{a}", "partial"),
    ]:
        with pytest.raises(ValueError):
            router.add(method, pattern, handler, name)


def test_request_from_head_parses_target_and_headers() -> None:
    request = request_from_head_untrusted(
        method=b"get",
        target=b"/api/v1/rooms/7?x=1&y=%C3%A9&x=2&empty=",
        headers=[(b"Host", b"example"), (b"X-Caf\xe9", b"v")],
        body=b"",
        client=("127.0.0.1", 5),
        http_version="1.1",
    )
    assert request.method == "GET"
    assert request.path == "/api/v1/rooms/7"
    assert request.query == {"x": "1", "y": "é", "empty": ""}
    assert request.header("host") == "example"
    assert request.header("x-café") == "v"
    absolute = request_from_head_untrusted(
        method=b"GET", target=b"https://h.example/a?b=c", headers=[], body=b"", client=None, http_version="1.1"
    )
    assert (absolute.path, absolute.query) == ("/a", {"b": "c"})


@pytest.mark.parametrize("target", [b"nope", b"*", b"/a?%ff=1", b"/a?" + b"&".join([b"k=v"] * 300), b"/caf\xc3\xa9"])
def test_bad_targets_are_400(target: bytes) -> None:
    with pytest.raises(HTTPError) as info:
        request_from_head_untrusted(method=b"GET", target=target, headers=[], body=b"", client=None, http_version="1.1")
    assert info.value.status == 400


def test_request_from_pseudo_headers() -> None:
    request = request_from_pseudo_headers_untrusted(
        [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"h.example"), (b":path", b"/x?a=1"), (b"x-y", b"z")],
        body=b"{}",
        client=None,
        http_version="3",
    )
    assert (request.method, request.path, request.query, request.http_version) == ("POST", "/x", {"a": "1"}, "3")
    assert request.headers == (("host", "h.example"), ("x-y", "z"))
    for headers in ([(b":path", b"/")], [(b":method", b"GET")]):
        with pytest.raises(HTTPError) as info:
            request_from_pseudo_headers_untrusted(headers, body=b"", client=None, http_version="2")
        assert info.value.status == 400


def test_header_limits() -> None:
    check_header_limits_untrusted([(b"a", b"b")] * 3, max_header_bytes=100, max_header_fields=3)
    with pytest.raises(HTTPError) as info:
        check_header_limits_untrusted([(b"a", b"b")] * 4, max_header_bytes=100, max_header_fields=3)
    assert info.value.status == 431
    with pytest.raises(HTTPError) as info:
        check_header_limits_untrusted([(b"a", b"b" * 200)], max_header_bytes=100, max_header_fields=3)
    assert (info.value.status, info.value.field) == (431, "headers")


def test_error_and_response_helpers() -> None:
    response = HTTPError(409, "conflict", "taken", "name", headers=[("retry-after", "1")]).to_response()
    assert response.status == 409
    assert response.header("retry-after") == "1"
    assert body_of(response) == {"error": {"code": "conflict", "message": "taken", "field": "name"}}
    text = Response.text("hé", status=202)
    assert (text.status, text.body, text.header("content-type")) == (202, "hé".encode(), "text/plain; charset=utf-8")
    assert Response.json({"a": "é"}).body == '{"a":"é"}'.encode()
