"""Every hook a shopcast plugin can implement, grouped by lifecycle.

A plugin is an object (a module or an instance) with functions named like the
specs below and decorated with ``hookimpl``. Any hook may return an awaitable;
the plugin manager awaits it (plugins/_manager.py). Hooks run on coarse events
(start-up, a room going live, an account deleted): never per packet or frame.

Options used here, as pluggy defines them:

- ``firstresult``: the first non-None result wins and the remaining plugins are
  not called. Used for vetoes: a plugin returns a reason (a string) to refuse,
  or None to let the next plugin decide. Veto hooks must answer synchronously,
  because pluggy stops at the first non-None value and an awaitable is one.
- ``historic``: not used; every plugin is registered before the first call.

Objects passed to hooks: ``app`` is the server's ``ServerApp``; ``room`` and
``account`` are the plain dicts the HTTP API returns (their public form).
"""

from __future__ import annotations

from typing import Any

import pluggy

__all__ = ["PROJECT", "hookimpl", "hookspec"]

PROJECT = "shopcast"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- start-up: configure, then register -------------------------------------------------------


@hookspec
def shopcast_configure(app: Any, plugins: Any) -> None:
    """Called once at start-up, before anything else: keep ``app`` (config,
    token authority, relay) and ``plugins`` (the PluginManager, to reach other
    plugins by name with ``plugins.get(name)``). The database is not open yet."""


@hookspec
def shopcast_register_tables() -> list[Any]:
    """Return the plugin's schema migrations, a list of ``Migration(component,
    version, sql)`` (plugins/_storage.py). Versions count from 1 per component;
    the ones above the version recorded in ``schema_versions`` are applied in
    order at start-up, each in one transaction."""


@hookspec
def shopcast_register_routes(api: Any) -> None:
    """Add HTTP routes with ``api.route(...)`` (plugins/_api.py), which
    registers each on the router together with its OpenAPI description and the
    roles allowed to call it."""


@hookspec
def shopcast_register_permissions() -> dict[str, tuple[str, ...]]:
    """Return ``{permission: roles}``: named permissions this plugin checks
    (for example ``"rooms.shutdown": ("operator",)``), merged into
    ``plugins.permissions`` so operators and other plugins can list them."""


@hookspec
def shopcast_register_room_tracks(room: dict[str, Any]) -> list[str]:
    """Return the names of extra tracks (chat, product pins, viewer counts) a
    room's broadcast carries besides its media, so that they are recorded and
    replayed on the same timeline. Called when a room goes live."""


@hookspec
def shopcast_startup(app: Any, nursery: Any) -> Any:
    """The database is open and migrated; start background tasks in
    ``nursery`` (they are cancelled at shutdown). May be async."""


@hookspec
def shopcast_shutdown(app: Any) -> Any:
    """The server is draining: flush what must not be lost. May be async."""


# --- accounts ---------------------------------------------------------------------------------


@hookspec
def shopcast_account_created(account: dict[str, Any]) -> Any:
    """An account was registered (or an operator created from the CLI)."""


@hookspec(firstresult=True)
def shopcast_account_may_exit(account: dict[str, Any]) -> str | None:
    """Veto: a reason why ``account`` cannot leave yet (an open order, an
    unsettled balance, a live room), or None. Synchronous; first reason wins.
    Not asked when an operator forces the exit."""


@hookspec
def shopcast_account_forget(account_id: str) -> Any:
    """Delete every row of personal data and generated content of
    ``account_id`` this plugin keeps (the deletion policy in plugins/README.md).
    Called before the account row itself is removed. May be async."""


@hookspec
def shopcast_account_deleted(account_id: str, forced: bool, reason: str) -> Any:
    """An account is gone; ``forced`` when an operator removed it for
    ``reason`` (otherwise the holder left and ``reason`` is empty)."""


# --- rooms ------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def shopcast_room_may_schedule(room: dict[str, Any]) -> str | None:
    """Veto: a reason why this new or edited room must not be published (a
    restricted product category, a banned word), or None. Synchronous."""


@hookspec(firstresult=True)
def shopcast_room_may_go_live(room: dict[str, Any]) -> str | None:
    """Veto: a reason why this room must not go live now although its push
    arrived (an unapproved digital-human host, an unverified identity), or
    None. Synchronous. A vetoed push stays a private rehearsal."""


@hookspec(firstresult=True)
def shopcast_room_may_record(room_id: str) -> str | None:
    """Veto: a reason why the broadcast ``room_id`` must not be recorded (the
    room or its platform opted out), or None. Asked once when the broadcast
    becomes public. Synchronous."""


@hookspec
def shopcast_room_created(room: dict[str, Any]) -> Any:
    """A room was created, verified and scheduled."""


@hookspec
def shopcast_room_updated(room: dict[str, Any], changes: list[str]) -> Any:
    """A room's setup was edited; ``changes`` names the fields."""


@hookspec
def shopcast_room_rehearsal(room: dict[str, Any]) -> Any:
    """A push arrived before the scheduled start: a trial broadcast that only
    the room's team can watch."""


@hookspec
def shopcast_room_live(room: dict[str, Any]) -> Any:
    """The room is live and public."""


@hookspec
def shopcast_room_ended(room: dict[str, Any], reason: str) -> Any:
    """The room is over. ``reason``: "push_stopped", "duration_elapsed" or
    "shutdown" (an operator's emergency shutdown; see room["shutdown_reason"])."""


@hookspec
def shopcast_room_closed(room: dict[str, Any]) -> Any:
    """The room is removed for good (cancelled before it started, or its owner
    left); nothing of it remains."""


# --- viewers ----------------------------------------------------------------------------------


@hookspec
def shopcast_chat_author(room_id: str, subject: str, role: str) -> Any:
    """Who the holder of a token (its ``subject`` and token ``role``) is in
    the chat of ``room_id``: a dict with ``display_name``, ``role`` (viewer,
    moderator, host or operator), ``registered`` and ``follows_host``; None
    when this plugin does not know the subject. The first answer wins. Called
    once per chat session, never per message; may return an awaitable."""


@hookspec
def shopcast_viewer_joined(room_id: str, subject: str, replay: bool) -> Any:
    """A viewer's session for ``room_id`` opened (once per session);
    ``replay`` when it watches the room's recording after the live."""


@hookspec
def shopcast_viewer_left(room_id: str, subject: str, replay: bool) -> Any:
    """That session closed."""


# --- orders (for the commerce plugins) --------------------------------------------------------


@hookspec(firstresult=True)
def shopcast_order_may_place(order: dict[str, Any]) -> str | None:
    """Veto: a reason why this order must be refused (a restricted good, a
    buyer's region), or None. Synchronous."""


@hookspec
def shopcast_order_placed(order: dict[str, Any]) -> Any:
    """An order was placed and awaits payment."""


@hookspec
def shopcast_order_paid(order: dict[str, Any]) -> Any:
    """An order's payment was confirmed."""


@hookspec
def shopcast_order_cancelled(order: dict[str, Any], reason: str) -> Any:
    """An order was cancelled or refunded."""


@hookspec
def shopcast_order_updated(order: dict[str, Any], previous: str) -> Any:
    """Any change of an order after Buy Now (its ``status``, a shipment's
    tracking number, a complaint in ``order["complaint"]``); ``previous`` is
    the status before. Paid and cancelled orders are also told through the
    two hooks above."""
