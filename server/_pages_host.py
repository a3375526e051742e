"""The host console's pages: ``/host`` (log in, list, create and schedule rooms) and
``/host/{room_id}`` (products and coupons, go live from the browser or OBS, pins, orders,
figures, chat moderation, links and downloads),
both one page under server/static/host/ (its files are served by the pages' general
``/static/{path}`` route, server/_pages.py), and the ``[host_console]`` settings the page
encodes with at ``/host/settings.json``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from shopcast.server._config import Config, HostConsoleConfig
from shopcast.server._routing import HTTPError, Request, Response, Router
from shopcast.server._static import STATIC_DIR, StaticFiles

__all__ = ["HOST_STATIC_DIR", "documented_host_routes", "register_host_pages"]

HOST_STATIC_DIR = STATIC_DIR / "host"
CONSOLE_PAGE = "console.html"
# The rooms plugin's ids (plugins/_rooms.py): "r" and 16 hex digits.
_ROOM_ID = re.compile(r"r[0-9a-f]{16}")


def console_settings_of(settings: HostConsoleConfig, config: Config | None) -> dict[str, Any]:
    """What /host/settings.json says: the [host_console] section, and (with the whole
    configuration) the paths and bounds of other sections the console's forms repeat, so a
    changed bound reaches the page instead of a copy in its HTML."""
    out: dict[str, Any] = dataclasses.asdict(settings)
    if config is None:
        return out
    out.update({
        "moq_path": config.relay.path, "chat_path": config.chat.path,
        "datagram_path": config.datagram.path, "player_latency_ms": config.web.player_latency_ms,
        "room_duration_min_s": config.rooms.duration_min_s,
        "room_duration_max_s": config.rooms.duration_max_s,
        "flash_countdown_min_s": config.commerce.flash_countdown_min_s,
        "flash_countdown_max_s": config.commerce.flash_countdown_max_s,
        "flash_duration_min_s": config.commerce.flash_duration_min_s,
        "flash_duration_max_s": config.commerce.flash_duration_max_s,
        "price_max_minor": config.commerce.price_max_minor,
        "stock_max": config.commerce.stock_max,
        "quantity_max": config.commerce.quantity_max,
        "currencies": list(config.commerce.currencies),
        "coupon_percent_max": config.commerce.coupon_percent_max,
        "coupon_uses_max": config.commerce.coupon_uses_max,
        "chat_slow_mode_max_s": 300,
    })
    return out


def register_host_pages(router: Router, *, max_age_s: int, settings: HostConsoleConfig,
                        config: Config | None = None) -> None:
    """Add the console's routes to ``router``; ``config`` (the whole configuration) adds the
    other sections' paths and bounds to /host/settings.json."""
    files = StaticFiles(HOST_STATIC_DIR, max_age_s=max_age_s)

    async def console(request: Request) -> Response:
        return await files.handle(request, CONSOLE_PAGE)

    async def room_console(request: Request, room_id: str) -> Response:
        if not _ROOM_ID.fullmatch(room_id):
            raise HTTPError(404, "not_found", "a room id is 'r' and 16 hex digits", "room_id")
        return await files.handle(request, CONSOLE_PAGE)

    settings_json = console_settings_of(settings, config)

    async def console_settings(request: Request) -> Response:
        return Response.json(settings_json, headers=(("cache-control", "no-cache"),))

    router.add("GET", "/host", console, "host_console")
    router.add("GET", "/host/settings.json", console_settings, "host_console_settings")
    router.add("GET", "/host/{room_id}", room_console, "host_room_console")


def documented_host_routes() -> list[tuple[str, str, str, str, str, tuple[str, ...], dict]]:
    """(method, pattern, name, summary, content type, roles, responses) of the console's
    routes, for the OpenAPI document (plugins/_openapi.py)."""
    everyone = ("anonymous", "viewer", "host", "operator", "service")
    page = {200: ("The console page: an HTML shell that loads its ES module.", {"type": "string"})}
    error = {"$ref": "#/components/schemas/Error"}
    return [
        ("GET", "/host", "host_console", "The host console: log in, list, create and schedule rooms.",
         "text/html", everyone, page),
        ("GET", "/host/settings.json", "host_console_settings",
         ("The [host_console] settings the console captures and encodes with, and the paths "
          "and bounds of other sections its forms use."), "application/json",
         everyone, {200: ("The settings.", {"type": "object"})}),
        ("GET", "/host/{room_id}", "host_room_console",
         "A room's console: go live from the browser or OBS, pins, figures, chat moderation.",
         "text/html", everyone, {**page, 404: ("Not a room id.", error)}),
    ]
