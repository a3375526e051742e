"""Static files (the web pages under server/static/) with content types, cache
headers and ETags, and no way out of the root directory.

Register it on a router with a trailing path parameter::

    static = StaticFiles(STATIC_DIR, max_age_s=config.http.static_max_age_s)
    router.add("GET", "/static/{path:path}", static.handle, "static")
"""

from __future__ import annotations

import os
import stat
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import trio

from ._routing import HTTPError, Request, Response

#: Where the server's own pages live.
STATIC_DIR = Path(__file__).resolve().parent / "static"

# An explicit table rather than the mimetypes module: its answers depend on the
# machine's /etc/mime.types, and a browser refuses a module script or wasm served
# with the wrong type.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".txt": "text/plain; charset=utf-8",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".wasm": "application/wasm",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
}
DEFAULT_CONTENT_TYPE = "application/octet-stream"


def content_type_for(name: str) -> str:
    """The Content-Type for a file name, by its extension."""
    return CONTENT_TYPES.get(os.path.splitext(name)[1].lower(), DEFAULT_CONTENT_TYPE)


@dataclass(frozen=True, slots=True)
class _FileVersion:
    path: Path
    size_bytes: int
    etag: str


def _relative_parts_untrusted(raw_path: str) -> list[str]:
    """The decoded segments of a percent-encoded relative path, or HTTPError 404 when a
    segment could step outside the root or name a hidden file."""
    # A trailing slash names the directory itself ("player/" is "player").
    raw_path = raw_path.removesuffix("/")
    if not raw_path:
        return []
    parts = []
    for raw_segment in raw_path.split("/"):
        try:
            segment = urllib.parse.unquote(raw_segment, errors="strict")
        except UnicodeDecodeError:
            raise HTTPError(404, "not_found", "no such file", "path") from None
        # Empty segments ("//etc/passwd") would let Path join an absolute path; dot
        # segments and separators inside a segment (%2e%2e, %2f, %5c) could climb out;
        # hidden files (.git, .env) are never meant to be served.
        if not segment or segment.startswith(".") or "/" in segment or "\\" in segment or "\0" in segment:
            raise HTTPError(404, "not_found", "no such file", "path")
        parts.append(segment)
    return parts


class StaticFiles:
    """Serves the files under ``root``: GET and HEAD (through the router), ``index.html``
    for a directory, ``Cache-Control: public, max-age=<max_age_s>``, and a 304 when
    ``If-None-Match`` names the current ETag. Symbolic links are followed only when
    they stay inside ``root``."""

    def __init__(self, root: Path, *, max_age_s: int) -> None:
        self.root = Path(root).resolve()
        self.cache_control = f"public, max-age={max_age_s}"

    def _locate(self, raw_path: str) -> _FileVersion:
        """Blocking: resolve and stat the file (run in a thread)."""
        candidate = self.root.joinpath(*_relative_parts_untrusted(raw_path)).resolve()
        if not candidate.is_relative_to(self.root):
            raise HTTPError(404, "not_found", "no such file", "path")
        try:
            info = candidate.stat()
            if stat.S_ISDIR(info.st_mode):
                candidate = candidate / "index.html"
                info = candidate.stat()
        except OSError:
            raise HTTPError(404, "not_found", "no such file", "path") from None
        if not stat.S_ISREG(info.st_mode):
            raise HTTPError(404, "not_found", "no such file", "path")
        # Size and modification time change whenever the content does, so the ETag
        # needs no hashing and a 304 needs no read.
        etag = f'"{info.st_size:x}-{info.st_mtime_ns:x}"'
        return _FileVersion(candidate, info.st_size, etag)

    async def handle(self, request: Request, path: str = "") -> Response:
        """The file at ``path`` (percent-encoded, relative to the root)."""
        version = await trio.to_thread.run_sync(self._locate, path)
        headers = (
            ("cache-control", self.cache_control),
            ("etag", version.etag),
        )
        if _etag_matches_untrusted(request.header("if-none-match"), version.etag):
            return Response(304, headers)
        try:
            body = await trio.to_thread.run_sync(version.path.read_bytes)
        except OSError:
            raise HTTPError(404, "not_found", "no such file", "path") from None
        return Response(
            200,
            (
                ("content-type", content_type_for(version.path.name)),
                ("x-content-type-options", "nosniff"),
                *headers,
            ),
            body,
        )


def _etag_matches_untrusted(if_none_match: str | None, etag: str) -> bool:
    """Whether an If-None-Match header names ``etag`` (weak comparison, RFC 9110)."""
    if if_none_match is None:
        return False
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False
