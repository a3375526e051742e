"""The `/api/v1/` surface: routes registered together with their OpenAPI 3.1
description, the roles allowed to call them, and request validation from the
same JSON Schema that documents them.

One schema is the single source for three things: what the OpenAPI document
shows, what ``validate_untrusted`` accepts (an error names the field), and
what the route-coverage test checks a response against.
"""

from __future__ import annotations

import datetime as dt
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shopcast.server._auth import bearer_claims_untrusted
from shopcast.server._routing import HTTPError, Request, Response
from shopcast.server._tokens import ROLES, Claims

__all__ = [
    "ANONYMOUS",
    "Api",
    "Operation",
    "Query",
    "field_error",
    "format_time",
    "page_params",
    "parse_time_untrusted",
    "validate_untrusted",
]

ANONYMOUS = "anonymous"
"""The pseudo-role of a request without a token, in ``roles`` of public routes."""
EVERYONE = (ANONYMOUS, *ROLES)
"""Roles of a public route."""

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["code", "message", "field"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                       "field": {"type": ["string", "null"]}},
    }},
}


def field_error(field_name: str, message: str, status: int = 400, code: str = "invalid_field") -> HTTPError:
    """The 4xx answer for one bad field: ``{"error": {"code", "message", "field"}}``."""
    return HTTPError(status, code, f"{field_name}: {message}", field_name)


def format_time(unix_s: float | None) -> str | None:
    """Unix seconds as RFC 3339 UTC (``2030-01-02T03:04:05Z``)."""
    if unix_s is None:
        return None
    return dt.datetime.fromtimestamp(unix_s, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time_untrusted(text: str, field_name: str) -> float:
    """An RFC 3339 date-time with an explicit offset, as Unix seconds."""
    if not isinstance(text, str) or not re.fullmatch(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)", text):
        raise field_error(field_name, "expected an RFC 3339 date-time with offset, "
                          "such as 2030-01-02T15:00:00Z")
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise field_error(field_name, f"{text!r} is not a valid date-time") from None
    return parsed.timestamp()


# --- validation -------------------------------------------------------------------------------

_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


def validate_untrusted(schema: Mapping[str, Any], value: Any, path: str = "") -> None:
    """Check ``value`` against the subset of JSON Schema our request schemas
    use; HTTPError 400 naming the field (``hashtags[2]``) on the first problem."""
    name = path or "body"
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_TYPES[k](value) for k in kinds):
            raise field_error(name, f"expected {' or '.join(kinds)}, got {_json_type(value)}")
    if value is None:
        return
    if "enum" in schema and value not in schema["enum"]:
        raise field_error(name, "expected one of " + ", ".join(map(repr, schema["enum"])))
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            raise field_error(name, f"must have at least {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise field_error(name, f"must have at most {schema['maxLength']} characters")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            raise field_error(name, f"must match {schema['pattern']}")
        fmt = schema.get("format")
        if fmt == "date-time":
            parse_time_untrusted(value, name)
        elif fmt == "uri" and not _is_web_url(value):
            raise field_error(name, "expected an http:// or https:// URL")
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            raise field_error(name, f"must be at least {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise field_error(name, f"must be at most {schema['maximum']}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            raise field_error(name, f"must have at least {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise field_error(name, f"must have at most {schema['maxItems']} items")
        if "items" in schema:
            for index, item in enumerate(value):
                validate_untrusted(schema["items"], item, f"{name}[{index}]")
        if schema.get("uniqueItems") and len({repr(v) for v in value}) != len(value):
            raise field_error(name, "must not repeat an item")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        prefix = f"{path}." if path else ""
        for key in schema.get("required", ()):
            if key not in value:
                raise field_error(prefix + key, "is required")
        if schema.get("additionalProperties") is False:
            for key in value:
                if key not in properties:
                    raise field_error(prefix + key, "is not a known field; known: "
                                      + ", ".join(properties))
        for key, sub in properties.items():
            if key in value:
                validate_untrusted(sub, value[key], prefix + key)


def _json_type(value: Any) -> str:
    for kind in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _TYPES[kind](value):
            return kind
    return type(value).__name__


def _is_web_url(text: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc) and " " not in text


# --- routes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """A query parameter: its name, JSON Schema and description."""

    name: str
    schema: Mapping[str, Any]
    description: str
    required: bool = False


@dataclass(frozen=True)
class Operation:
    """One documented route."""

    method: str
    pattern: str
    name: str
    summary: str
    tag: str
    roles: tuple[str, ...]
    request: Mapping[str, Any] | None
    query: tuple[Query, ...]
    responses: Mapping[int, tuple[str, Mapping[str, Any] | None]]
    content_type: str = "application/json"
    description: str = ""
    example: Mapping[str, Any] | None = None


ApiHandler = Callable[..., Awaitable[Response]]


@dataclass
class Api:
    """Registers routes with their documentation and their authorisation.

    A handler is ``async def h(request, claims, body, query, **path_params)``:
    ``claims`` is the verified token (None for an anonymous caller of a public
    route), ``body`` the validated JSON object (None without a request
    schema) and ``query`` the validated query parameters (typed).
    """

    router: Any
    tokens: Any
    operations: list[Operation] = field(default_factory=list)
    schemas: dict[str, Any] = field(default_factory=dict)
    extra_operations: list[Operation] = field(default_factory=list)

    def schema(self, name: str, schema: Mapping[str, Any]) -> dict[str, str]:
        """Keep ``schema`` as ``#/components/schemas/name``; returns the $ref."""
        self.schemas[name] = dict(schema)
        return {"$ref": f"#/components/schemas/{name}"}

    def route(self, method: str, pattern: str, handler: ApiHandler, *, name: str, summary: str,
              tag: str, roles: Sequence[str], responses: Mapping[int, tuple[str, Any]],
              request: Mapping[str, Any] | None = None, query: Sequence[Query] = (),
              content_type: str = "application/json", description: str = "",
              example: Mapping[str, Any] | None = None) -> None:
        """Add a route to the router and to the document. ``roles`` may hold
        ANONYMOUS (no token needed); a token of another role is refused 403."""
        roles = tuple(roles)
        operation = Operation(method.upper(), pattern, name, summary, tag, roles,
                              dict(request) if request else None, tuple(query), dict(responses),
                              content_type, description, example)

        async def endpoint(http_request: Request, **params: str) -> Response:
            claims = self._authorize(http_request, roles)
            body = None
            if request is not None:
                body = http_request.json()
                validate_untrusted(request, body)
            values = _parse_query_untrusted(operation.query, http_request.query)
            return await handler(http_request, claims, body, values, **params)

        self.router.add(method, pattern, endpoint, name)
        self.operations.append(operation)

    def document_route(self, method: str, pattern: str, *, name: str, summary: str, tag: str,
                       responses: Mapping[int, tuple[str, Any]], roles: Sequence[str] = EVERYONE,
                       content_type: str = "application/json") -> None:
        """Document a route someone else registered on the router (the core's
        /healthz, /metrics and /api/v1/server; RTMP's push URL routes)."""
        self.extra_operations.append(Operation(method.upper(), pattern, name, summary, tag,
                                               tuple(roles), None, (), dict(responses), content_type))

    def _authorize(self, request: Request, roles: tuple[str, ...]) -> Claims | None:
        return bearer_claims_untrusted(request, self.tokens,
                                       roles=tuple(r for r in roles if r != ANONYMOUS),
                                       allow_anonymous=ANONYMOUS in roles)

    # --- the document -------------------------------------------------------------------------

    def openapi(self, *, title: str, version: str, server_url: str) -> dict[str, Any]:
        """The OpenAPI 3.1 document of every registered operation."""
        paths: dict[str, dict[str, Any]] = {}
        for op in (*self.extra_operations, *self.operations):
            path = re.sub(r"\{(\w+):path\}", r"{\1}", op.pattern)
            paths.setdefault(path, {})[op.method.lower()] = self._operation(op)
        schemas = {"Error": ERROR_SCHEMA, **self.schemas}
        return {
            "openapi": "3.1.0",
            "info": {"title": title, "version": version,
                     "description": "The shopcast HTTP API. Every call but the public ones "
                                    "carries `Authorization: Bearer <token>`; "
                                    "`x-shopcast-roles` lists the token roles an operation "
                                    "accepts (`anonymous`: no token needed)."},
            "servers": [{"url": server_url}],
            "paths": paths,
            "components": {
                "schemas": schemas,
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                               "bearerFormat": "JWT"}},
            },
        }

    def _operation(self, op: Operation) -> dict[str, Any]:
        doc: dict[str, Any] = {"operationId": op.name, "summary": op.summary, "tags": [op.tag],
                               "x-shopcast-roles": list(op.roles)}
        if op.description:
            doc["description"] = op.description
        if ANONYMOUS not in op.roles:
            doc["security"] = [{"bearer": []}]
        params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                  for p in re.findall(r"\{(\w+)(?::path)?\}", op.pattern)]
        params += [{"name": q.name, "in": "query", "required": q.required, "schema": dict(q.schema),
                    "description": q.description} for q in op.query]
        if params:
            doc["parameters"] = params
        if op.request is not None:
            body: dict[str, Any] = {"schema": op.request}
            if op.example is not None:
                body["example"] = op.example
            doc["requestBody"] = {"required": True, "content": {"application/json": body}}
        responses: dict[str, Any] = {}
        for status, (description, schema) in sorted(self._all_responses(op).items()):
            entry: dict[str, Any] = {"description": description}
            if schema is not None:
                content_type = op.content_type if status < 400 else "application/json"
                entry["content"] = {content_type: {"schema": schema}}
            responses[str(status)] = entry
        doc["responses"] = responses
        return doc

    @staticmethod
    def _all_responses(op: Operation) -> dict[int, tuple[str, Any]]:
        """The declared responses plus the ones every such route can give."""
        error = {"$ref": "#/components/schemas/Error"}
        out = dict(op.responses)
        if op.request is not None or op.query:
            out.setdefault(400, ("A field is missing or invalid; `error.field` names it.", error))
        if ANONYMOUS not in op.roles or op.request is not None:
            out.setdefault(401, ("No token, or an invalid or expired one.", error))
            out.setdefault(403, ("The token's role or subject may not do this.", error))
        if "{" in op.pattern:
            out.setdefault(404, ("No such resource.", error))
        return out


def _parse_query_untrusted(params: Sequence[Query], raw: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for param in params:
        text = raw.get(param.name)
        if text is None or text == "":
            if param.required:
                raise field_error(param.name, "is required")
            continue
        kind = param.schema.get("type")
        value: Any = text
        if kind == "integer":
            if not re.fullmatch(r"-?\d{1,12}", text):
                raise field_error(param.name, "expected an integer")
            value = int(text)
        validate_untrusted(param.schema, value, param.name)
        values[param.name] = value
    return values


def page_params(default: int, maximum: int) -> tuple[Query, Query]:
    """``page`` (from 1) and ``per_page`` query parameters."""
    return (Query("page", {"type": "integer", "minimum": 1, "maximum": 100000},
                  "Page number, from 1."),
            Query("per_page", {"type": "integer", "minimum": 1, "maximum": maximum},
                  f"Results per page (default {default})."))


PAGE_SCHEMA_FIELDS = {
    "page": {"type": "integer"},
    "per_page": {"type": "integer"},
    "total": {"type": "integer"},
}
