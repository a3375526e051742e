"""The committed player bundle (server/static/vendor/moq-watch.js) is exactly what esbuild
makes from the committed entry (server/static/src/) and the packages pinned in
tests/web/package-lock.json: rebuild it and compare byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from shopcast.server._pages import BUNDLE_OUT, build_player_bundle
from shopcast.server._static import STATIC_DIR


async def test_committed_bundle_is_rebuilt_identically(web_packages, tmp_path):
    lock = json.loads((Path(web_packages) / "package-lock.json").read_text())
    installed = json.loads((Path(web_packages) / "node_modules" / "@moq" / "watch" / "package.json").read_text())
    assert installed["version"] == lock["packages"]["node_modules/@moq/watch"]["version"], \
        "tests/web/node_modules differs from the lockfile; run `npm ci` there"
    rebuilt = tmp_path / "moq-watch.js"
    await trio.to_thread.run_sync(build_player_bundle, Path(web_packages), rebuilt)
    committed = (STATIC_DIR / BUNDLE_OUT).read_bytes()
    assert rebuilt.read_bytes() == committed, (
        "server/static/vendor/moq-watch.js is not what its source builds to; run "
        "`python -m shopcast.server._pages build` and commit the result")
