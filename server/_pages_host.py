"""The host console's pages: ``/host`` (log in, list, create and schedule rooms) and
``/host/{room_id}`` (go live from the browser or OBS, pins, figures, chat moderation),
both one page under server/static/host/, that folder's files at ``/static/host/``, and
the ``[host_console]`` settings the page encodes with at ``/host/settings.json``.
"""

from __future__ import annotations

import dataclasses
import re

from shopcast.server._config import HostConsoleConfig
from shopcast.server._routing import HTTPError, Request, Response, Router
from shopcast.server._static import STATIC_DIR, StaticFiles

__all__ = ["HOST_STATIC_DIR", "register_host_pages"]

HOST_STATIC_DIR = STATIC_DIR / "host"
CONSOLE_PAGE = "console.html"
# The rooms plugin's ids (plugins/_rooms.py): "r" and 16 hex digits.
_ROOM_ID = re.compile(r"r[0-9a-f]{16}")


def register_host_pages(router: Router, *, max_age_s: int, settings: HostConsoleConfig) -> None:
    """Add the console's routes to ``router``. ``/static/host/`` is served here too, so
    the console works without the general static route (a literal segment outranks
    ``/static/{path:path}``, and both serve the same files)."""
    files = StaticFiles(HOST_STATIC_DIR, max_age_s=max_age_s)

    async def console(request: Request) -> Response:
        return await files.handle(request, CONSOLE_PAGE)

    async def room_console(request: Request, room_id: str) -> Response:
        if not _ROOM_ID.fullmatch(room_id):
            raise HTTPError(404, "not_found", "a room id is 'r' and 16 hex digits", "room_id")
        return await files.handle(request, CONSOLE_PAGE)

    settings_json = dataclasses.asdict(settings)

    async def console_settings(request: Request) -> Response:
        return Response.json(settings_json, headers=(("cache-control", "no-cache"),))

    router.add("GET", "/host", console, "host_console")
    router.add("GET", "/host/settings.json", console_settings, "host_console_settings")
    router.add("GET", "/host/{room_id}", room_console, "host_room_console")
    router.add("GET", "/static/host/{path:path}", files.handle, "host_static")
