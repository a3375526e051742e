"""The recordings plugin (ISO IWA 41 §5.5): a room's recording downloaded as
fragmented MP4 by its owner and operators, nobody else.

The recorder and the replay live in the server core (server/_recording.py);
this plugin only adds the download route and its authorization.
"""

from __future__ import annotations

import tempfile
from typing import Any

import trio

from shopcast.plugins._api import Api
from shopcast.plugins._hookspecs import hookimpl
from shopcast.server._recording import export_mp4
from shopcast.server._routing import HTTPError, Response

__all__ = ["RecordingsPlugin", "may_manage_room"]

SHUTDOWN_REASON = "shutdown"
"""The rooms plugin's end reason for an operator's emergency shutdown."""


async def may_manage_room(plugins: Any, claims: Any, room_id: str) -> None:
    """Allow the room's owner and operators, nobody else; else 401/403.

    Allowed: an operator or service token for the room; a host token (an
    account's, or a media token) whose subject is the account that owns the
    room; a host token minted for ``room_id`` when the rooms plugin knows no
    such room (a broadcast the platform manages itself). A host token of a
    team member is refused: the team runs the live, the owner keeps the
    video and the figures (IWA 41 §5.5)."""
    if claims is None:
        raise HTTPError(401, "missing_token", "an Authorization: Bearer token is required",
                        "authorization")
    if claims.role in ("operator", "service") and claims.allows_room(room_id):
        return
    if claims.role == "host":
        rooms = plugins.get("rooms")
        room = None
        if rooms is not None:
            try:
                room = await rooms.get(room_id)
            except HTTPError as exc:
                if exc.status != 404:
                    raise
        if room is None:
            if claims.room == room_id:
                return
        elif room["owner_id"] == claims.subject:
            return
    raise HTTPError(403, "not_owner", "only the room's owner and operators may do this",
                    "authorization")


def _size(path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


class RecordingsPlugin:
    """The ``GET /api/v1/rooms/{room_id}/recording.mp4`` route, and the
    announcement of ended rooms' replays."""

    requires = ("rooms",)

    def __init__(self) -> None:
        self.app: Any = None
        self.plugins: Any = None
        self.downloads: trio.Semaphore | None = None
        """MP4 downloads being made (recording.max_concurrent_downloads)."""

    @hookimpl
    def shopcast_configure(self, app: Any, plugins: Any) -> None:
        self.app, self.plugins = app, plugins
        self.downloads = trio.Semaphore(app.config.recording.max_concurrent_downloads)

    @hookimpl
    async def shopcast_startup(self, app: Any, nursery: Any) -> None:
        # Rooms shut down by an operator are never replayed, after a restart too.
        withheld = await app.db.read(lambda c: [r[0] for r in c.execute(
            "SELECT id FROM rooms WHERE end_reason = ?", (SHUTDOWN_REASON,))])
        for room_id in withheld:
            app.replays.withhold(room_id)
        # The replays of rooms that ended before this start are announced again.
        recorded = await trio.to_thread.run_sync(app.replays.recorded_names)
        if not recorded:
            return
        marks = ", ".join("?" * len(recorded))
        ended = await app.db.read(lambda c: [r[0] for r in c.execute(
            f"SELECT id FROM rooms WHERE state = 'ended' AND id IN ({marks})",
            tuple(recorded))])
        for room_id in sorted(ended, key=recorded.__getitem__):
            app.replays.announce(room_id, recorded[room_id])

    @hookimpl
    def shopcast_room_ended(self, room: dict[str, Any], reason: str) -> None:
        if reason == SHUTDOWN_REASON:
            # An emergency shutdown (IWA 41 §6.2 f): what was shown must not
            # be shown again to the public; the owner and operators can still
            # download it.
            self.app.replays.withhold(room["id"])
            return
        # Announced as a replay from now on (if anything was recorded).
        if self.app.recorder.path(room["id"]) is not None:
            self.app.replays.announce(room["id"])

    @hookimpl
    def shopcast_register_routes(self, api: Api) -> None:
        api.route("GET", "/api/v1/rooms/{room_id}/recording.mp4", self.download, name="recording_mp4",
                  tag="recordings", roles=("host", "operator", "service"),
                  content_type="video/mp4",
                  summary="The room's recording as fragmented MP4 (H.264 + AAC); owner and operators.",
                  responses={200: ("The MP4 file.", None),
                             404: ("Nothing was recorded for this room.",
                                   {"$ref": "#/components/schemas/Error"}),
                             413: ("Longer than recording.max_download_bytes: use shopcast export.",
                                   {"$ref": "#/components/schemas/Error"})})

    async def download(self, request, claims, body, query, room_id: str) -> Response:
        await may_manage_room(self.plugins, claims, room_id)
        path = self.app.recorder.path(room_id)
        size = await trio.to_thread.run_sync(_size, path) if path is not None else None
        if size is None:
            raise HTTPError(404, "not_recorded", f"room {room_id} has no recording", "room_id")
        limit = self.app.config.recording.max_download_bytes
        if size > limit:
            # The transport sends a whole body; a longer live is exported on the machine.
            raise HTTPError(413, "recording_too_large",
                            f"the recording is {size} bytes, more than recording.max_download_bytes "
                            f"({limit}); export it with `shopcast export {room_id} FILE.mp4`", "room_id")
        assert self.downloads is not None
        try:
            self.downloads.acquire_nowait()
        except trio.WouldBlock:
            raise HTTPError(503, "downloads_busy",
                            f"{self.downloads.max_value} downloads are being made "
                            "(recording.max_concurrent_downloads); try again shortly", "room_id",
                            headers=(("retry-after", "5"),)) from None

        def export() -> bytes:
            # Written fragment by fragment to a file beside the recordings
            # (never tmpfs), then read once: the body is the only copy held.
            with tempfile.TemporaryFile(dir=path.parent, prefix=".export-") as out:
                export_mp4(path, out)
                out.seek(0)
                return out.read()

        try:
            data = await trio.to_thread.run_sync(export)
        except ValueError as exc:
            raise HTTPError(404, "not_recorded", f"room {room_id}: {exc}", "room_id") from None
        finally:
            self.downloads.release()
        return Response(200, (("content-type", "video/mp4"),
                              ("content-disposition", f'attachment; filename="{room_id}.mp4"')), data)
