"""Shared fixtures: real external programs for end-to-end tests.

A test that needs ffmpeg, ffprobe or chromium asks for the fixture of that
name. Where the program is missing the test is skipped with the reason,
unless SHOPCAST_E2E=required (set by .ci/run), which turns the skip into a
failure so CI can never pass by skipping.
"""

import os
import shutil

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
async def running_server(tmp_path, nursery):
    """The whole server (run_server) on 127.0.0.1 with an ephemeral port and a
    fresh data directory; yields the Started record (``.app``, ``.port``)."""
    import trio

    from shopcast.server._app import run_server
    from shopcast.server._config import load_config

    config = load_config(environ={}, overrides={"server": {
        "host": "127.0.0.1", "port": 0, "data_dir": str(tmp_path / "data"), "drain_timeout_s": 2.0}})
    shutdown = trio.Event()
    started = await nursery.start(lambda task_status: run_server(
        config, shutdown=shutdown, task_status=task_status))
    yield started
    shutdown.set()
