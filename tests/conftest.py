"""Shared fixtures: real external programs for end-to-end tests.

A test that needs ffmpeg, ffprobe or chromium asks for the fixture of that
name. Where the program is missing the test is skipped with the reason,
unless SHOPCAST_E2E=required (set by .ci/run), which turns the skip into a
failure so CI can never pass by skipping.
"""

import contextlib
import functools
import http.server
import os
import shutil
import threading

import pytest


def _require(program: str) -> str:
    path = shutil.which(program)
    if path is not None:
        return path
    reason = f"{program} is not installed (apt-get install {program})"
    if os.environ.get("SHOPCAST_E2E") == "required":
        pytest.fail(f"SHOPCAST_E2E=required but {reason}")
    pytest.skip(reason)


@pytest.fixture
def ffmpeg() -> str:
    """Path of the ffmpeg executable."""
    return _require("ffmpeg")


@pytest.fixture
def ffprobe() -> str:
    """Path of the ffprobe executable."""
    return _require("ffprobe")


@pytest.fixture
def curl_path() -> str:
    """Path of the curl executable."""
    return _require("curl")


@pytest.fixture
def chromium() -> str:
    """Path of Debian's chromium, for Playwright's executable_path."""
    return _require("chromium")


CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def chromium_flags() -> list[str]:
    """The flags every headless Chromium in the tests is started with."""
    return list(CHROMIUM_FLAGS)


@pytest.fixture
async def server_factory(tmp_path, nursery):
    """A function that starts the whole server (run_server) on 127.0.0.1 with
    ephemeral ports (HTTPS/QUIC and RTMP), a fresh data directory and the
    given config overrides (``{"relay": {"latency_budget_ms": 100}}``);
    returns the Started record (``.app``, ``.port``; ``.app.rtmp_port``).
    Every server started is shut down at the end."""
    import trio

    from shopcast.server._app import run_server
    from shopcast.server._config import load_config

    shutdowns = []

    async def start(overrides: dict | None = None):
        layered = {"server": {"host": "127.0.0.1", "port": 0, "drain_timeout_s": 2.0,
                              "data_dir": str(tmp_path / f"data{len(shutdowns)}")},
                   "rtmp": {"port": 0}}
        for section, values in (overrides or {}).items():
            layered.setdefault(section, {}).update(values)
        config = load_config(environ={}, overrides=layered)
        shutdown = trio.Event()
        shutdowns.append(shutdown)
        return await nursery.start(lambda task_status: run_server(
            config, shutdown=shutdown, task_status=task_status))

    yield start
    for shutdown in shutdowns:
        shutdown.set()


@pytest.fixture
async def running_server(server_factory):
    """The whole server with the default configuration (demo room included);
    yields the Started record (``.app``, ``.port``)."""
    return await server_factory()


WEB_DIR = os.path.join(os.path.dirname(__file__), "web")


@pytest.fixture
def web_packages() -> str:
    """tests/web with its pinned npm packages installed (``npm ci`` there): the
    directory holding node_modules/@moq/watch and node_modules/.bin/esbuild.
    Skipped with the reason where they are missing, failed under
    SHOPCAST_E2E=required, like the programs above."""
    problems = []
    for relative, what in (("node_modules/@moq/watch/package.json", "@moq/watch"),
                           ("node_modules/.bin/esbuild", "esbuild")):
        if not os.path.exists(os.path.join(WEB_DIR, relative)):
            problems.append(what)
    if not problems:
        return WEB_DIR
    reason = (f"{' and '.join(problems)} not installed in tests/web/node_modules "
              f"(cd tests/web && npm ci)")
    if os.environ.get("SHOPCAST_E2E") == "required":
        pytest.fail(f"SHOPCAST_E2E=required but {reason}")
    pytest.skip(reason)


@contextlib.contextmanager
def _directory_server(directory):
    class Handler(http.server.SimpleHTTPRequestHandler):
        extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                          ".js": "text/javascript", ".html": "text/html; charset=utf-8"}

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def directory_server():
    """A context manager serving a directory at http://127.0.0.1:PORT/ from a
    thread, yielding that base URL. Browser tests load their pages from it: a
    real loopback origin is a secure context, and Chromium's local network
    access checks let it reach the server on 127.0.0.1 (a page fulfilled by
    the test driver has no address and is refused)."""
    return _directory_server


# --- RTMP ingest (tests/rtmp) ------------------------------------------------------------
#
# This replaces the server_factory above (pytest takes the last definition of a
# name): the same, plus RTMP on an ephemeral port, so that no test binds 1935
# and tests on a shared machine never collide. The bound port is
# ``started.app.rtmp_port``.


@pytest.fixture
def moq_watch_helpers():
    """The @moq/watch page helpers of tests/relay/test_moq_watch_chromium.py
    (``build_bundle``, ``watch_rooms``, ``CANVAS_SAMPLE``...), loaded from that
    file so other end-to-end tests drive the same player the same way."""
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "relay", "test_moq_watch_chromium.py")
    spec = importlib.util.spec_from_file_location("_shopcast_moq_watch_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _rtmp_on_ephemeral_port(monkeypatch):
    """`shopcast serve` started by a test (tests/server/test_app.py) listens for
    RTMP on a free port rather than 1935, so tests never collide on it."""
    monkeypatch.setenv("SHOPCAST_RTMP__PORT", "0")
