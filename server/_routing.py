"""HTTP semantics shared by HTTP/1.1, HTTP/2 and HTTP/3: requests, responses, JSON
errors, and the router that maps (method, path) to a handler.

Nothing here does I/O. The transports build a `Request` with one of the
``request_from_*_untrusted`` functions (every byte of it comes from the network),
await `Router.handle`, and write the `Response` back in their own framing.
"""

from __future__ import annotations

import dataclasses
import json as jsonlib
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._metrics import Registry

logger = logging.getLogger("shopcast.http")

# Most query parameters parsed from one request target, unless the caller says
# otherwise (the server passes [http] max_query_fields): bounds the work an
# attacker can ask for with one short request.
MAX_QUERY_FIELDS = 256

# Methods the metrics label by name; anything else is counted as "other" so that a
# client sending random methods cannot create unbounded label values.
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# Route label for requests that matched no route, in metrics.
UNMATCHED_ROUTE = "unmatched"

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "too_many_requests",
    431: "headers_too_large",
    500: "internal_error",
    503: "unavailable",
}


@dataclass(frozen=True, slots=True)
class Response:
    """What a handler returns; the transport adds framing headers (content-length)."""

    status: int
    #: (lowercase name, value) pairs, in the order they are sent.
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    @classmethod
    def json(cls, obj: Any, status: int = 200, headers: Iterable[tuple[str, str]] = ()) -> Response:
        """``obj`` serialised as compact UTF-8 JSON."""
        body = jsonlib.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
        return cls(status, (("content-type", "application/json"), *headers), body)

    @classmethod
    def text(
        cls,
        text: str,
        status: int = 200,
        headers: Iterable[tuple[str, str]] = (),
        content_type: str = "text/plain; charset=utf-8",
    ) -> Response:
        """``text`` encoded as UTF-8."""
        return cls(status, (("content-type", content_type), *headers), text.encode())

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lowercase), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def with_headers(self, *pairs: tuple[str, str]) -> Response:
        """A copy with ``pairs`` appended to the headers."""
        return dataclasses.replace(self, headers=(*self.headers, *pairs))


class HTTPError(Exception):
    """An error to answer with ``status`` and the JSON body
    ``{"error": {"code", "message", "field"}}``.

    ``code`` is a stable machine-readable word (``body_too_large``), ``message`` is for
    people, ``field`` names the offending part of the request (a JSON key, a header, a
    query parameter) or is None. Raise it from handlers; transports raise it for framing
    errors. 4xx means the client's fault, 5xx ours.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        *,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = tuple(headers)

    def to_response(self) -> Response:
        """The JSON error response."""
        body = {"error": {"code": self.code, "message": self.message, "field": self.field}}
        return Response.json(body, status=self.status, headers=self.headers)


def error_response(status: int, message: str, field: str | None = None) -> Response:
    """A JSON error response with the generic code for ``status``."""
    return HTTPError(status, _STATUS_CODES.get(status, "error"), message, field).to_response()


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request, whatever the version it came in with. Every field comes from
    the network and is untrusted."""

    method: str
    #: The path as sent, still percent-encoded, without the query string; starts with "/".
    path: str
    #: Decoded query parameters; of a repeated name, the first value is kept.
    query: Mapping[str, str]
    #: (lowercase name, value) pairs as received, HTTP/2 pseudo-headers removed
    #: (":authority" appears as "host").
    headers: Sequence[tuple[str, str]]
    body: bytes = b""
    #: (host, port) of the peer, or None when unknown.
    client: tuple[str, int] | None = None
    #: "1.0", "1.1", "2" or "3".
    http_version: str = "1.1"
    #: Path parameters the router matched, such as {"room_id": "42"}.
    path_params: Mapping[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lowercase), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def json(self) -> dict[str, Any]:
        """The body parsed as a JSON object; HTTPError 400 naming the problem when it is
        empty, not UTF-8, not JSON, nested too deeply, or not an object."""
        return _decode_json_object_untrusted(self.body)


def _decode_json_object_untrusted(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise HTTPError(400, "malformed_json", "the request body is empty; expected a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPError(
            400, "malformed_json", f"the request body is not UTF-8 (byte {exc.start})"
        ) from None
    try:
        value = jsonlib.loads(text)
    except jsonlib.JSONDecodeError as exc:
        raise HTTPError(
            400,
            "malformed_json",
            f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
        ) from None
    except RecursionError:
        raise HTTPError(400, "malformed_json", "the request body's JSON is nested too deeply") from None
    except ValueError as exc:
        # For example an integer literal longer than Python's digit limit.
        raise HTTPError(400, "malformed_json", f"the request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise HTTPError(
            400, "json_not_object", f"the request body must be a JSON object, not {type(value).__name__}"
        )
    return value


def _split_target_untrusted(target: str, max_query_fields: int) -> tuple[str, dict[str, str]]:
    """Split a request target (origin or absolute form) into the raw path and the
    decoded query."""
    if target.startswith(("http://", "https://")):
        parts = urllib.parse.urlsplit(target)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not target.startswith("/"):
        raise HTTPError(400, "bad_request", "the request target must start with '/'", "path")
    path, _, query_text = target.partition("?")
    query: dict[str, str] = {}
    if query_text:
        try:
            pairs = urllib.parse.parse_qsl(
                query_text, keep_blank_values=True, errors="strict", max_num_fields=max_query_fields
            )
        except UnicodeDecodeError:
            raise HTTPError(400, "bad_request", "the query string is not UTF-8", "query") from None
        except ValueError:
            raise HTTPError(
                400, "bad_request", f"the query string has more than {max_query_fields} fields", "query"
            ) from None
        for name, value in pairs:
            query.setdefault(name, value)
    return path, query


def _decode_header_untrusted(name: bytes, value: bytes) -> tuple[str, str]:
    # Header values are bytes; latin-1 maps each byte to one character, so decoding
    # never fails and the original bytes can always be recovered.
    return name.decode("latin-1").lower(), value.decode("latin-1")


def check_header_limits_untrusted(
    headers: Sequence[tuple[bytes, bytes]], *, max_header_bytes: int, max_header_fields: int
) -> None:
    """HTTPError 431 when a head has more than ``max_header_fields`` fields or its
    fields take more than ``max_header_bytes`` (counted as in HTTP/1.1: ``name: value``
    and CRLF each)."""
    if len(headers) > max_header_fields:
        raise HTTPError(
            431,
            "headers_too_large",
            f"the request has {len(headers)} header fields; at most {max_header_fields} are allowed",
            "headers",
        )
    size_bytes = sum(len(name) + len(value) + 4 for name, value in headers)
    if size_bytes > max_header_bytes:
        raise HTTPError(
            431,
            "headers_too_large",
            f"the request headers take {size_bytes} bytes; at most {max_header_bytes} are allowed",
            "headers",
        )


def request_from_head_untrusted(
    *,
    method: bytes,
    target: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    body: bytes,
    client: tuple[str, int] | None,
    http_version: str,
    max_query_fields: int = MAX_QUERY_FIELDS,
) -> Request:
    """A `Request` from an HTTP/1.x request line and headers; HTTPError 400 when the
    target is malformed."""
    try:
        target_text = target.decode("ascii")
    except UnicodeDecodeError:
        raise HTTPError(400, "bad_request", "the request target is not ASCII", "path") from None
    path, query = _split_target_untrusted(target_text, max_query_fields)
    return Request(
        method=method.decode("ascii").upper(),
        path=path,
        query=query,
        headers=tuple(_decode_header_untrusted(n, v) for n, v in headers),
        body=body,
        client=client,
        http_version=http_version,
    )


def request_from_pseudo_headers_untrusted(
    headers: Iterable[tuple[bytes, bytes]],
    *,
    body: bytes,
    client: tuple[str, int] | None,
    http_version: str,
    max_query_fields: int = MAX_QUERY_FIELDS,
) -> Request:
    """A `Request` from an HTTP/2 or HTTP/3 header list (pseudo-headers first, as h2
    and aioquic deliver them); HTTPError 400 when :method or :path is missing or
    malformed."""
    method = path_raw = authority = None
    regular: list[tuple[str, str]] = []
    for raw_name, raw_value in headers:
        name, value = _decode_header_untrusted(raw_name, raw_value)
        if name == ":method":
            method = value
        elif name == ":path":
            path_raw = value
        elif name == ":authority":
            authority = value
        elif not name.startswith(":"):
            regular.append((name, value))
    if not method:
        raise HTTPError(400, "bad_request", "the request has no :method", ":method")
    if not path_raw:
        raise HTTPError(400, "bad_request", "the request has no :path", ":path")
    if authority is not None and not any(name == "host" for name, _ in regular):
        regular.insert(0, ("host", authority))
    try:
        path_raw.encode("ascii")
    except UnicodeEncodeError:
        raise HTTPError(400, "bad_request", "the request target is not ASCII", ":path") from None
    path, query = _split_target_untrusted(path_raw, max_query_fields)
    return Request(
        method=method.upper(),
        path=path,
        query=query,
        headers=tuple(regular),
        body=body,
        client=client,
        http_version=http_version,
    )


Handler = Callable[..., Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class _Route:
    method: str
    pattern: str
    name: str
    handler: Handler
    #: Per segment: the literal text, or None for a parameter.
    literals: tuple[str | None, ...]
    #: Per segment: the parameter name, or None for a literal.
    params: tuple[str | None, ...]
    #: The name of a trailing ``{name:path}`` parameter that takes the rest, or None.
    rest_param: str | None

    def match(self, segments: Sequence[str]) -> dict[str, str] | None:
        fixed = len(self.literals)
        if self.rest_param is None:
            if len(segments) != fixed:
                return None
        elif len(segments) < fixed:
            return None
        params: dict[str, str] = {}
        for literal, param, segment in zip(self.literals, self.params, segments):
            if literal is not None:
                if literal != segment:
                    return None
            elif not segment:
                return None
            else:
                params[param] = urllib.parse.unquote(segment)  # type: ignore[index]
        if self.rest_param is not None:
            # The rest stays percent-encoded: its consumer (static files) must decode
            # it segment by segment so that an encoded "/" cannot form a new segment.
            params[self.rest_param] = "/".join(segments[fixed:])
        return params

    @property
    def specificity(self) -> tuple[int, ...]:
        # Literal segments beat parameters, position by position, and a fixed-length
        # pattern beats one that takes the rest.
        return (*(literal is not None for literal in self.literals), self.rest_param is None)


def _compile_pattern(pattern: str) -> tuple[tuple[str | None, ...], tuple[str | None, ...], str | None]:
    if not pattern.startswith("/"):
        raise ValueError(f"route pattern {pattern!r} must start with '/'")
    segments = pattern[1:].split("/")
    literals: list[str | None] = []
    params: list[str | None] = []
    rest_param = None
    seen: set[str] = set()
    for index, segment in enumerate(segments):
        if segment.startswith("{") and segment.endswith("}"):
            name, _, kind = segment[1:-1].partition(":")
            if not name.isidentifier() or name in seen:
                raise ValueError(f"route pattern {pattern!r}: bad or repeated parameter {segment!r}")
            seen.add(name)
            if kind == "path":
                if index != len(segments) - 1:
                    raise ValueError(f"route pattern {pattern!r}: {{{name}:path}} must come last")
                rest_param = name
                continue
            if kind:
                raise ValueError(f"route pattern {pattern!r}: unknown parameter kind {kind!r}")
            literals.append(None)
            params.append(name)
        elif "{" in segment or "}" in segment:
            raise ValueError(f"route pattern {pattern!r}: a parameter must be a whole segment")
        else:
            literals.append(segment)
            params.append(None)
    return tuple(literals), tuple(params), rest_param


class Router:
    """Maps (method, path) to async handlers and turns every outcome into a `Response`.

    Handlers are ``async def handler(request, **path_params) -> Response`` and may raise
    `HTTPError`. The router answers 404 for unknown paths, 405 with ``Allow`` for a wrong
    method, HEAD from the GET handler, OPTIONS and CORS preflights itself, and adds CORS
    headers for allowed origins (``"*"`` allows any). It records requests per route,
    method and status, and the latency per route, in ``metrics``.
    """

    def __init__(
        self,
        *,
        metrics: Registry,
        latency_buckets_s: Sequence[float],
        cors_origins: Sequence[str] = (),
        cors_max_age_s: int = 600,
    ) -> None:
        self._routes: list[_Route] = []
        # How long a browser may cache a preflight answer (s).
        self._cors_max_age_s = cors_max_age_s
        self._names: set[str] = set()
        self._cors_any = "*" in cors_origins
        self._cors_origins = frozenset(cors_origins)
        self._requests = metrics.counter(
            "shopcast_http_requests_total",
            "HTTP requests answered, by route name, method and status.",
            ("route", "method", "status"),
        )
        self._latency = metrics.histogram(
            "shopcast_http_request_duration_seconds",
            "Time from a complete request to its response, by route name (s).",
            ("route",),
            buckets=latency_buckets_s,
        )
        self._unhandled = metrics.counter(
            "shopcast_http_handler_errors_total",
            "Handlers that raised an unexpected exception (answered 500), by route name.",
            ("route",),
        )

    def add(self, method: str, pattern: str, handler: Handler, name: str) -> None:
        """Route ``method`` requests whose path matches ``pattern`` to ``handler``.

        ``pattern`` is a path whose segments are literals, ``{param}`` (one segment,
        percent-decoded) or, last, ``{param:path}`` (the rest, still percent-encoded).
        ``name`` labels the route in metrics and in `route_table`; it must be unique.
        """
        method = method.upper()
        if method in ("HEAD", "OPTIONS"):
            raise ValueError(f"{method} is answered by the router itself")
        if name in self._names:
            raise ValueError(f"route name {name!r} is already used")
        if any(r.method == method and r.pattern == pattern for r in self._routes):
            raise ValueError(f"route {method} {pattern} is already registered")
        literals, params, rest_param = _compile_pattern(pattern)
        self._routes.append(_Route(method, pattern, name, handler, literals, params, rest_param))
        self._names.add(name)

    def route_table(self) -> list[tuple[str, str, str]]:
        """(method, pattern, name) of every route, in registration order."""
        return [(r.method, r.pattern, r.name) for r in self._routes]

    def _cors_headers(self, request: Request) -> tuple[tuple[str, str], ...]:
        origin = request.header("origin")
        if origin is None:
            return ()
        if self._cors_any:
            return (("access-control-allow-origin", "*"),)
        if origin in self._cors_origins:
            return (("access-control-allow-origin", origin), ("vary", "origin"))
        return ()

    def _match(self, request: Request) -> tuple[_Route | None, dict[str, str], list[str]]:
        """The best route for the request's method and path, its parameters, and the
        methods the path allows (empty when no route has this path)."""
        segments = request.path[1:].split("/")
        method = "GET" if request.method == "HEAD" else request.method
        best: tuple[_Route, dict[str, str]] | None = None
        allowed: list[str] = []
        for route in self._routes:
            params = route.match(segments)
            if params is None:
                continue
            if route.method not in allowed:
                allowed.append(route.method)
            if route.method == method and (best is None or route.specificity > best[0].specificity):
                best = (route, params)
        if allowed:
            if "GET" in allowed:
                allowed.append("HEAD")
            allowed.append("OPTIONS")
        if best is None:
            return None, {}, allowed
        return best[0], best[1], allowed

    def _options(self, request: Request, allowed: list[str]) -> Response:
        allow = ("allow", ", ".join(allowed))
        origin = request.header("origin")
        wanted_method = request.header("access-control-request-method")
        if origin is None or wanted_method is None:
            return Response(204, (allow,))
        cors = self._cors_headers(request)
        if not cors:
            raise HTTPError(403, "cors_origin_not_allowed", f"origin {origin!r} is not allowed", "origin")
        if wanted_method.upper() not in allowed:
            raise HTTPError(
                405,
                "method_not_allowed",
                f"{wanted_method} is not allowed here; allowed: {allow[1]}",
                "access-control-request-method",
                headers=(allow,),
            )
        headers = [
            allow,
            *cors,
            ("access-control-allow-methods", allow[1]),
            ("access-control-max-age", str(self._cors_max_age_s)),
        ]
        wanted_headers = request.header("access-control-request-headers")
        if wanted_headers:
            # Echoed rather than "*": a wildcard does not cover Authorization.
            headers.append(("access-control-allow-headers", wanted_headers))
        return Response(204, tuple(headers))

    async def _dispatch(self, request: Request) -> tuple[str, Response]:
        route, params, allowed = self._match(request)
        if not allowed:
            raise HTTPError(404, "not_found", f"no route for {request.path}", "path")
        if request.method == "OPTIONS":
            return UNMATCHED_ROUTE if route is None else route.name, self._options(request, allowed)
        if route is None:
            raise HTTPError(
                405,
                "method_not_allowed",
                f"{request.method} is not allowed on {request.path}; allowed: {', '.join(allowed)}",
                "method",
                headers=(("allow", ", ".join(allowed)),),
            )
        request = dataclasses.replace(request, path_params=params)
        try:
            response = await route.handler(request, **params)
        except HTTPError as exc:
            return route.name, exc.to_response()
        except Exception:
            logger.exception("handler %s failed on %s %s", route.name, request.method, request.path)
            self._unhandled.labels(route.name).inc()
            return route.name, error_response(500, "the server failed to handle the request")
        if request.method == "HEAD":
            headers = response.headers
            if response.header("content-length") is None:
                headers = (*headers, ("content-length", str(len(response.body))))
            response = Response(response.status, headers, b"")
        return route.name, response

    async def handle(self, request: Request) -> Response:
        """The response to ``request``; never raises (an unexpected error is logged and
        answered 500 JSON), except for cancellation."""
        started_s = time.perf_counter()
        route_name = UNMATCHED_ROUTE
        try:
            route_name, response = await self._dispatch(request)
        except HTTPError as exc:
            response = exc.to_response()
        except Exception:
            logger.exception("routing failed on %s %s", request.method, request.path)
            response = error_response(500, "the server failed to handle the request")
        cors = self._cors_headers(request)
        if cors and response.header("access-control-allow-origin") is None:
            response = response.with_headers(*cors)
        method = request.method if request.method in _KNOWN_METHODS else "other"
        self._requests.labels(route_name, method, str(response.status)).inc()
        self._latency.labels(route_name).observe(time.perf_counter() - started_s)
        return response
