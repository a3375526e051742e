"""The openapi plugin: serves the OpenAPI 3.1 document of every route at
``/api/v1/openapi.json``, and documents the routes the server core and RTMP
ingest register on the router themselves.
"""

from __future__ import annotations

from typing import Any

import shopcast
from shopcast.plugins._api import EVERYONE, Api
from shopcast.plugins._hookspecs import hookimpl
from shopcast.server._routing import Response

__all__ = ["OpenApiPlugin"]


class OpenApiPlugin:
    """``GET /api/v1/openapi.json``."""

    def __init__(self) -> None:
        self.app: Any = None
        self.api: Api | None = None

    @hookimpl
    def shopcast_configure(self, app: Any, plugins: Any) -> None:
        self.app = app

    @hookimpl
    def shopcast_register_routes(self, api: Api) -> None:
        self.api = api
        error = {"$ref": "#/components/schemas/Error"}
        api.route("GET", "/api/v1/openapi.json", self.document, name="openapi", tag="meta",
                  roles=EVERYONE, summary="This document.",
                  responses={200: ("The OpenAPI 3.1 document.", {"type": "object",
                                                                 "required": ["openapi", "paths"]})})
        api.document_route("GET", "/healthz", name="healthz", tag="meta", summary="Liveness.",
                           responses={200: ("Serving.", {"type": "object", "required": ["status"],
                                                         "properties": {"status": {"type": "string"}}})})
        api.document_route("GET", "/metrics", name="metrics", tag="meta",
                           summary="Prometheus metrics (text exposition format).",
                           content_type="text/plain",
                           responses={200: ("The metrics.", {"type": "string"})})
        api.document_route("GET", "/api/v1/server", name="server_info", tag="meta",
                           summary="Version, WebTransport URL and certificate hash.",
                           responses={200: ("About this server.", {
                               "type": "object", "required": ["name", "version", "webtransport_url",
                                                              "certificate"]})})
        room_scoped = ("host", "operator", "service")
        denied = {401: ("No token, or an invalid one.", error),
                  403: ("A token of another role or room.", error)}
        push = {"type": "object", "required": ["room_id", "push_url", "server_url", "stream_key"],
                "properties": {"room_id": {"type": "string"}, "push_url": {"type": "string"},
                               "server_url": {"type": "string"}, "stream_key": {"type": "string"}}}
        # Routes that the core, RTMP ingest and the live interaction register on
        # the router themselves, documented here when they are present.
        foreign = {
            "rtmp_push_url": ("GET", "/api/v1/rooms/{room_id}/push", "rtmp", room_scoped,
                              "A room's RTMP push URL and stream key, made on first use "
                              "(room-scoped token).",
                              {200: ("The push URL.", push), 201: ("The push URL, key just made.", push),
                               400: ("The room id is malformed.", error), **denied}),
            "rtmp_push_rotate": ("POST", "/api/v1/rooms/{room_id}/push/rotate", "rtmp", room_scoped,
                                 "A new stream key for the room (room-scoped token).",
                                 {200: ("The push URL.", push),
                                  400: ("The room id is malformed.", error), **denied}),
            "room_viewers": ("GET", "/api/v1/rooms/{room_id}/viewers", "live", EVERYONE,
                             "How many watch a live room.",
                             {200: ("Viewer counts.", {"type": "object", "required": ["room_id"]}),
                              404: ("The room is not live.", error)}),
            "room_chat_download": ("GET", "/api/v1/rooms/{room_id}/chat", "live", room_scoped,
                                   "The room's whole chat as JSON, or CSV with ?format=csv (the "
                                   "room's owner and operators; times in Unix seconds).",
                                   {200: ("The chat.", {"type": "object",
                                                        "required": ["room_id", "messages"]}),
                                    400: ("Unknown format.", error), 401: denied[401],
                                    403: ("A token of another role or room, or not the room's "
                                          "owner.", error)}),
        }
        present = {name for _, _, name in api.router.route_table()}
        for name, (method, pattern, tag, roles, summary, responses) in foreign.items():
            if name in present:
                api.document_route(method, pattern, name=name, tag=tag, summary=summary,
                                   roles=roles, responses=responses)
        # The viewer pages (server/_pages.py) and the host console (server/_pages_host.py).
        from shopcast.server._pages import documented_routes
        from shopcast.server._pages_host import documented_host_routes
        from shopcast.server._interaction import documented_chat_routes

        for method, pattern, name, summary, content_type, roles, responses in documented_chat_routes():
            if name in present:
                api.document_route(method, pattern, name=name, tag="live", summary=summary,
                                   roles=roles, responses=responses, content_type=content_type)

        for method, pattern, name, summary, content_type, roles, responses in (
                documented_routes() + documented_host_routes()):
            if name in present:
                api.document_route(method, pattern, name=name, tag="pages", summary=summary,
                                   roles=roles, responses=responses, content_type=content_type)

    async def document(self, request, claims, body, query) -> Response:
        assert self.api is not None
        return Response.json(self.api.openapi(title="shopcast", version=shopcast.__version__,
                                              server_url=self.app.webtransport_base_url))
