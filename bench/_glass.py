"""Glass-to-glass delay from a host's browser to a viewer's browser on this machine.

One headless Chromium, two contexts. The host context opens the host console
(``/host``), logs in, creates a room, starts Chromium's fake camera and
microphone, publishes (WebCodecs H.264 + Opus over moq-lite) and goes live. The
viewer context plays the room on shopcast's own viewer page ``/live/{room}``
(the main figure: its player with the server's ``[web] player_latency_ms``), on
the same page in datagram mode (``/live/{room}?mode=datagram``), and, as the
figure it is compared against, on a standalone unmodified ``@moq/watch`` (the
bundle of tests/web) with ``latency="0"`` (no added buffer). Both contexts read
one clock (``performance.timeOrigin + performance.now()``, ms since the epoch,
shared by every context of the machine):

- capture time: the camera frame's own timestamp, put on that clock by the
  smallest camera-to-page delay seen (``CameraPublisher.captureTimes``), kept per
  media timestamp by the publisher;
- render time: when the viewer page draws a decoded ``VideoFrame`` on its canvas
  (``drawImage`` of the 2d context is wrapped, before the page loads, to note the
  frame's timestamp and the time; every player draws that way).

Frames are matched by their media timestamp. Run with
``shopcast bench --suite glass`` (not part of the default run: it needs Chromium,
Playwright and tests/web/node_modules, and takes a few minutes).
tests/web/test_host_console.py drives the same steps.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, TextIO

from shopcast.bench._record import Record, percentile

__all__ = ["ConsoleHooks", "GlassRun", "api_call", "prepare_host", "build_watch_bundle", "drive_console", "percentile", "run", "serve_directory"]

REPO = Path(__file__).resolve().parents[1]
WEB_DIR = REPO / "tests" / "web"
FAKE_MEDIA_FLAGS = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
STANDARD_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
HOST_NAME = "glass_host"
HOST_PASSWORD = "password-glass-host"
STEP_TIMEOUT_MS = 30_000
"""Longest wait for one console step (a view, a state change) (ms)."""
PLAY_TIMEOUT_S = 30.0
"""Longest wait for the viewer's first drawn picture (s)."""
MEASURE_SECONDS = 25.0
"""How long the bench measures (s): several hundred frames at the camera's rate."""

RENDER_LOG_MAX = 100_000
"""Drawn frames the viewer page notes at most (a bound on its memory)."""

# Added to the viewer context before any page loads: note (media ms, wall ms) each time a
# decoded VideoFrame is drawn on a 2d canvas (<moq-watch>'s renderer and the datagram player
# both draw so; a VideoFrame's timestamp is the hang frame's media timestamp in µs).
RENDER_LOG = """(() => {
  window.__renders = [];
  const draw = CanvasRenderingContext2D.prototype.drawImage;
  CanvasRenderingContext2D.prototype.drawImage = function (image, ...rest) {
    const result = draw.call(this, image, ...rest);
    if (typeof VideoFrame !== "undefined" && image instanceof VideoFrame
        && window.__renders.length < %d) {
      window.__renders.push([image.timestamp / 1000, performance.timeOrigin + performance.now()]);
    }
    return result;
  };
})();""" % RENDER_LOG_MAX

# Runs in the viewer page: a small summary of the canvas pixels (as tests/relay's interop test).
CANVAS_SAMPLE = """() => {
  const canvas = document.querySelector("moq-watch canvas, canvas.datagram-video");
  const out = {width: canvas ? canvas.width : 0, height: canvas ? canvas.height : 0,
               renders: (window.__renders || []).length};
  if (!canvas || !canvas.width || !canvas.height) return out;
  const {data} = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
  let hash = 0x811c9dc5, lit = 0;
  const colours = new Set();
  for (let i = 0; i < data.length; i += 4) {
    const r = data[i], g = data[i + 1], b = data[i + 2];
    hash = Math.imul(hash ^ r, 16777619); hash = Math.imul(hash ^ g, 16777619); hash = Math.imul(hash ^ b, 16777619);
    if ((r * 299 + g * 587 + b * 114) / 1000 > 16) lit++;
    if (colours.size < 4096) colours.add((r >> 4) << 8 | (g >> 4) << 4 | (b >> 4));
  }
  return Object.assign(out, {hash: (hash >>> 0).toString(16), litFraction: lit / (data.length / 4),
                             colours: colours.size});
}"""


def is_picture(sample: dict) -> bool:
    """A decoded camera frame drawn, not the player's black canvas. (Chromium's fake camera
    draws a green field with a moving figure: few colours, at moments only one, so
    pictures are told apart by their hashes changing, not by their colours.)"""
    return sample.get("hash") is not None and sample.get("renders", 0) > 0 and sample["litFraction"] > 0.25



def build_watch_bundle(web_dir: Path, out_dir: Path) -> None:
    """esbuild tests/web/watch-entry.js (@moq/watch, unmodified) into out_dir/watch.js,
    beside a copy of tests/web/watch.html."""
    esbuild = web_dir / "node_modules" / ".bin" / "esbuild"
    result = subprocess.run(
        [str(esbuild), "watch-entry.js", "--bundle", "--format=esm", "--target=es2022",
         "--log-level=warning", f"--outfile={out_dir / 'watch.js'}"],
        cwd=web_dir, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"esbuild failed:\n{result.stdout}\n{result.stderr}")
    shutil.copy(web_dir / "watch.html", out_dir / "watch.html")


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """Serve ``directory`` over plain HTTP on 127.0.0.1 (a real origin for the viewer page);
    yields its base URL."""
    class Handler(http.server.SimpleHTTPRequestHandler):
        extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                          ".js": "text/javascript", ".html": "text/html; charset=utf-8"}

        def log_message(self, *args: Any) -> None:
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
        thread.join(timeout=5)


@dataclass
class GlassRun:
    """What one drive of the console saw."""

    room_id: str = ""
    states: list[str] = field(default_factory=list)
    """Room states the console showed, in order (rehearsal, live, ended)."""
    delays_ms: list[float] = field(default_factory=list)
    """Capture-to-render delay of every frame drawn by the viewer and captured by the host."""
    encode_ms: list[float] = field(default_factory=list)
    """Of each, capture to the encoded frame handed to the moq-lite session (the host's part)."""
    renders: int = 0
    captures: int = 0
    publisher_stats: dict = field(default_factory=dict)
    catalog: dict = field(default_factory=dict)
    first_picture: dict | None = None
    last_sample: dict | None = None
    """The viewer's canvas the last time it was looked at before the first picture."""
    later_picture: dict | None = None
    screenshots: list[str] = field(default_factory=list)
    console_log: list[str] = field(default_factory=list)
    create_error: str = ""


class ConsoleHooks:
    """Called by drive_console at each stage, with the Playwright pages; do nothing here."""

    def viewer_storage(self) -> dict[str, str]:
        """localStorage items of the viewer context (e.g. a logged-in account), set before
        its pages load."""
        return {}

    async def created(self, room_id: str, host: Any) -> None:
        """The room exists and its console page is open, nothing published yet."""

    async def rehearsal(self, room_id: str, host: Any) -> None:
        """The browser publishes and the room rehearses (private)."""

    async def live(self, room_id: str, host: Any, viewer: Any) -> None:
        """The room is live and the viewer draws pictures."""

    async def ended(self, room_id: str, host: Any) -> None:
        """The host ended the live; the console shows it ended."""


VIEWERS = ("live", "live-datagram", "watch")
"""Viewer pages: shopcast's /live/{room}, the same in datagram mode, the standalone
@moq/watch page (tests/web/watch.html, served from ``viewer_base``)."""


async def drive_console(*, chromium: str, flags: list[str], port: int, artifacts: Path,
                        measure_s: float, viewer: str = "live", viewer_base: str | None = None,
                        hooks: "ConsoleHooks | None" = None,
                        viewer_latency_ms: float | None = None,
                        screenshot_prefix: str = "host") -> GlassRun:
    """In one headless Chromium (asyncio; Playwright), do what a host and a viewer do: log
    in, create a room, publish the fake camera, rehearse, go live, watch it from a second
    context for ``measure_s``, end the live.

    The host account ``HOST_NAME`` must exist. ``viewer`` is one of VIEWERS. ``hooks``
    are awaited at each stage (the caller's own checks run meanwhile). Returns a GlassRun;
    raises TimeoutError (Playwright's) naming the step that hung. ``viewer_latency_ms``
    sets the standalone player's ``latency`` attribute (its jitter buffer); None leaves
    @moq/watch's default (the /live page uses the server's [web] player_latency_ms).
    """
    if viewer not in VIEWERS:
        raise ValueError(f"viewer must be one of {', '.join(VIEWERS)}")
    if viewer == "watch" and viewer_base is None:
        raise ValueError("the watch viewer needs viewer_base (serve_directory of the bundle)")
    hooks = hooks or ConsoleHooks()
    from playwright.async_api import async_playwright

    result = GlassRun()
    log = result.console_log
    origin = f"https://127.0.0.1:{port}"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium, args=[*flags, *[f for f in FAKE_MEDIA_FLAGS if f not in flags]])
        try:
            host_context = await browser.new_context(ignore_https_errors=True,
                                                     viewport={"width": 1280, "height": 1000})
            host = await host_context.new_page()
            host.on("console", lambda m: log.append(f"host console.{m.type}: {m.text}"))
            host.on("pageerror", lambda e: log.append(f"host pageerror: {e}"))

            # Log in with the keyboard, as a person would.
            await host.goto(f"{origin}/host")
            login = host.locator("#login-form")
            await login.get_by_label("Account name").fill(HOST_NAME)
            await login.get_by_label("Password").fill(HOST_PASSWORD)
            await login.get_by_label("Password").press("Enter")
            await host.wait_for_selector("#rooms-view:not([hidden])", timeout=STEP_TIMEOUT_MS)

            # Create and schedule a room with every field (the start is an hour ahead).
            form = host.locator("#create-form")
            await form.get_by_label("Title").fill("Glass-to-glass test room")
            await form.get_by_label("Description").fill("Camera to screen, measured.")
            await form.get_by_label("Duration (minutes)").fill("30")
            await form.get_by_label("Keywords").fill("camera, latency")
            await form.get_by_label("Hashtags").fill("#live, bench")
            await form.get_by_label("Cover image URL").fill("https://cdn.example/cover.jpg")
            await form.get_by_label("Orientation").select_option("landscape")
            await form.get_by_label("Language of the room").fill("en")
            await form.get_by_label("Region (ISO country code", exact=False).fill("CN")
            await form.get_by_label("Target regions").fill("US, DE")
            await form.get_by_role("button", name="Create room").click()
            try:
                await host.wait_for_url(f"{origin}/host/r*", timeout=STEP_TIMEOUT_MS)
            except Exception:
                result.create_error = await host.locator("#error").inner_text()
                raise
            result.room_id = host.url.rsplit("/", 1)[1]
            await host.wait_for_selector("#room-view:not([hidden])", timeout=STEP_TIMEOUT_MS)
            await host.wait_for_function("window.hostConsole && window.hostConsole.setup",
                                         timeout=STEP_TIMEOUT_MS)
            await hooks.created(result.room_id, host)
            path = artifacts / f"{screenshot_prefix}-console-room.png"
            artifacts.mkdir(parents=True, exist_ok=True)
            await host.screenshot(path=str(path), full_page=True)
            result.screenshots.append(str(path))

            async def wait_state(state: str) -> None:
                await host.wait_for_selector(f'#room-state[data-state="{state}"]', timeout=STEP_TIMEOUT_MS)
                result.states.append(state)

            await host.get_by_role("button", name="Start camera").click()
            await host.wait_for_selector("#publish:not([disabled])", timeout=STEP_TIMEOUT_MS)
            await host.get_by_role("button", name="Publish (rehearsal", exact=False).click()
            await host.wait_for_function(
                "window.hostConsole.publisher && window.hostConsole.publisher.stats.videoFrames > 10",
                timeout=STEP_TIMEOUT_MS)
            await wait_state("rehearsal")
            await hooks.rehearsal(result.room_id, host)
            await host.get_by_role("button", name="Go live now").click()
            await wait_state("live")

            viewer_context = await browser.new_context(ignore_https_errors=True,
                                                       viewport={"width": 1100, "height": 800})
            await viewer_context.add_init_script(RENDER_LOG)
            storage = hooks.viewer_storage()
            if storage:
                await viewer_context.add_init_script(
                    "for (const [k, v] of Object.entries(%s)) localStorage.setItem(k, v);"
                    % json.dumps(storage))
            viewer_page = viewer
            viewer = await viewer_context.new_page()
            viewer.on("console", lambda m: log.append(f"viewer console.{m.type}: {m.text}"))
            viewer.on("pageerror", lambda e: log.append(f"viewer pageerror: {e}"))
            if viewer_page == "watch":
                await viewer.goto(f"{viewer_base}watch.html?url=http://127.0.0.1:{port}/moq&name={result.room_id}")
            else:
                query = "?mode=datagram" if viewer_page == "live-datagram" else ""
                await viewer.goto(f"{origin}/live/{result.room_id}{query}")
            if viewer_page == "watch" and viewer_latency_ms is not None:
                await viewer.evaluate("(ms) => document.querySelector('moq-watch')"
                                      ".setAttribute('latency', String(ms))", viewer_latency_ms)
            started = time.monotonic()
            while time.monotonic() - started < PLAY_TIMEOUT_S:
                sample = await viewer.evaluate(CANVAS_SAMPLE)
                result.last_sample = sample
                if is_picture(sample):
                    result.first_picture = sample
                    break
                await viewer.wait_for_timeout(250)
            if result.first_picture is None:
                return result
            await hooks.live(result.room_id, host, viewer)
            # Measure from a clean start: frames drawn from now on.
            await viewer.evaluate("window.__renders.length = 0")
            await viewer.wait_for_timeout(measure_s * 1000)
            renders = await viewer.evaluate("window.__renders.slice()")
            captures = await host.evaluate("window.hostConsole.publisher.captureTimes()")
            result.publisher_stats = await host.evaluate("({...window.hostConsole.publisher.stats, "
                                                         "errors: window.hostConsole.publisher.errors})")
            result.catalog = await host.evaluate("window.hostConsole.publisher.catalog")
            result.later_picture = await viewer.evaluate(CANVAS_SAMPLE)
            by_media_us = {media_us: (captured, sent) for media_us, captured, sent in captures}
            result.renders, result.captures = len(renders), len(captures)
            for media_ms, wall_ms in renders:
                times = by_media_us.get(round(media_ms * 1000))
                if times is not None and times[1] is not None:
                    result.delays_ms.append(wall_ms - times[0])
                    result.encode_ms.append(times[1] - times[0])

            artifacts.mkdir(parents=True, exist_ok=True)
            for name, page in ((f"{screenshot_prefix}-console-live", host),
                               (f"{screenshot_prefix}-viewer-{viewer_page}", viewer)):
                path = artifacts / f"{name}.png"
                await page.screenshot(path=str(path), full_page=name.startswith("host-console"))
                result.screenshots.append(str(path))
            await viewer_context.close()

            await host.get_by_role("button", name="End the live").click()
            await wait_state("ended")
            await hooks.ended(result.room_id, host)
            path = artifacts / f"{screenshot_prefix}-console-ended.png"
            await host.screenshot(path=str(path), full_page=True)
            result.screenshots.append(str(path))
            await host_context.close()
        finally:
            await browser.close()
    return result


def api_call(port: int, method: str, path: str, body: dict | None = None,
             token: str | None = None) -> tuple[int, dict]:
    """One JSON request to the server's API over HTTPS (blocking): (status, body)."""
    import json
    import ssl
    import urllib.error
    import urllib.request

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"https://127.0.0.1:{port}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


async def prepare_host(port: int) -> str:
    """Register the host account (accepting the current terms) and log it in over the
    server's own API; its access token."""
    import trio

    def register() -> str:
        _, terms = api_call(port, "GET", "/api/v1/terms")
        status, body = api_call(port, "POST", "/api/v1/accounts", {
            "name": HOST_NAME, "password": HOST_PASSWORD, "role": "host",
            "terms_version": terms["version"], "accept_terms": True})
        if status != 201:
            raise RuntimeError(f"registering the host failed: {status} {body}")
        status, body = api_call(port, "POST", "/api/v1/auth/login",
                                {"name": HOST_NAME, "password": HOST_PASSWORD})
        if status != 200:
            raise RuntimeError(f"logging the host in failed: {status} {body}")
        return body["access_token"]

    return await trio.to_thread.run_sync(register)


SERVER_OVERRIDES = {
    "accounts": {"scrypt_n": 1024, "scrypt_r": 8, "scrypt_p": 1},
    "demo": {"enabled": False},
    # End the room as soon as the host's push stops, so "End the live" shows "ended".
    "rooms": {"push_lost_end_after_s": 0.0, "tick_interval_s": 0.2},
}


def run(quick: bool, progress: TextIO, config: str | None = None) -> list[Record]:
    """The glass-to-glass suite; an empty list (and why, on progress) when Chromium,
    Playwright or tests/web/node_modules are missing."""
    chromium = shutil.which("chromium")
    missing = [what for what, ok in (
        ("chromium", chromium is not None),
        ("playwright", _importable("playwright")),
        ("tests/web/node_modules (cd tests/web && npm ci)",
         (WEB_DIR / "node_modules" / "@moq" / "watch").is_dir())) if not ok]
    if missing:
        print(f"glass: skipped, missing {', '.join(missing)}", file=progress)
        return []
    import trio

    return trio.run(_run, chromium, MEASURE_SECONDS / (5 if quick else 1), progress, config)


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


VIEWER_VARIANTS = (
    # (figure name, viewer page, standalone player's latency attribute)
    ("live-page", "live", None),
    ("live-page-datagram", "live-datagram", None),
    ("watch-latency-0", "watch", 0.0),
)
"""The main figure: shopcast's own viewer page /live/{room}, with its player's buffer
(the server's [web] player_latency_ms); the same page in datagram mode; and the figure they
are compared against: the standalone @moq/watch with latency="0" (no added buffer)."""
BASELINE = "watch-latency-0"


def _compared(name: str, what: str, value: float, base: list[float] | None, q: float) -> Record:
    """A delay figure, with the baseline's same quantile as ``against`` and ``ratio`` when
    ``base`` (the baseline's delays) is given."""
    if base is None:
        return Record("glass", f"{name}/{what}", value, "ms")
    reference = percentile(base, q)
    return Record("glass", f"{name}/{what}", value, "ms",
                  against=f"host-browser-to-viewer-browser/{BASELINE}/{what}",
                  ratio=value / reference if reference > 0 else None)


async def _run(chromium: str, measure_s: float, progress: TextIO, config_path: str | None) -> list[Record]:
    import asyncio

    import trio

    from shopcast.server._app import run_server
    from shopcast.server._config import load_config

    runs: list[tuple[str, GlassRun]] = []
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="shopcast-glass-") as scratch:
        scratch_path = Path(scratch)
        overrides = {section: dict(values) for section, values in SERVER_OVERRIDES.items()}
        overrides["server"] = {"host": "127.0.0.1", "port": 0, "data_dir": str(scratch_path / "data")}
        overrides["rtmp"] = {"port": 0}
        overrides["log"] = {"level": "error"}
        config = load_config(config_path, environ={}, overrides=overrides)
        print(f"glass: the /live page's player buffer is [web] player_latency_ms = "
              f"{config.web.player_latency_ms} ms", file=progress)
        bundle = scratch_path / "web"
        bundle.mkdir()
        await trio.to_thread.run_sync(build_watch_bundle, WEB_DIR, bundle)
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            started = await nursery.start(lambda task_status: run_server(
                config, shutdown=shutdown, task_status=task_status))
            try:
                await prepare_host(started.port)
                with serve_directory(bundle) as viewer_base:
                    for variant, page, latency_ms in VIEWER_VARIANTS:
                        print(f"glass: {variant}: measuring {measure_s:.0f} s of camera frames",
                              file=progress)
                        drive = functools.partial(
                            drive_console, chromium=chromium, flags=STANDARD_FLAGS,
                            port=started.port, viewer=page, viewer_base=viewer_base,
                            artifacts=REPO / "test-artifacts" / "web", measure_s=measure_s,
                            viewer_latency_ms=latency_ms, screenshot_prefix=f"glass-{variant}")
                        glass = await trio.to_thread.run_sync(asyncio.run, drive())
                        if not glass.delays_ms:
                            tail = "\n".join(glass.console_log[-30:])
                            message = (f"glass: {variant}: no frame was both captured and drawn "
                                       f"(renders {glass.renders}, captures {glass.captures}, first "
                                       f"picture {glass.first_picture}, last canvas "
                                       f"{glass.last_sample})\n{tail}")
                            if page == "live-datagram":
                                # The datagram mode is reported missing, not fatal to the suite.
                                print(message, file=progress)
                                failed.append(variant)
                                continue
                            raise RuntimeError(message)
                        runs.append((variant, glass))
            finally:
                shutdown.set()
    records: list[Record] = []
    baseline = dict(runs).get(BASELINE)
    for variant, glass in runs:
        delays = glass.delays_ms
        print(f"glass: {variant}: {len(delays)} frames matched of {glass.renders} drawn; "
              f"publisher {glass.publisher_stats}", file=progress)
        name = f"host-browser-to-viewer-browser/{variant}"
        base_delays = None if baseline is None or variant == BASELINE else baseline.delays_ms
        records += [
            _compared(name, "p50", percentile(delays, 0.50), base_delays, 0.50),
            _compared(name, "p99", percentile(delays, 0.99), base_delays, 0.99),
            Record("glass", f"{name}/max", max(delays), "ms"),
            Record("glass", f"{name}/capture-to-sent-p50", percentile(glass.encode_ms, 0.50), "ms"),
            Record("glass", f"{name}/frames", float(len(delays)), "frames"),
        ]
    for variant in failed:
        print(f"glass: {variant}: no figure (see above)", file=progress)
    return records
