"""The viewer pages in headless Chromium, served by the server itself (a real origin): the live
room plays the demo room (frames decoded, canvas pixels change), registration and login work,
two browsers chat with emoji, both see the view count change when a third joins, a moderator's
mute takes effect at once, and a page without WebTransport says so. Screenshots of every page
go to test-artifacts/web/.
"""

from __future__ import annotations

import time

import pytest
import trio

pytestmark = pytest.mark.e2e

PLAY_TIMEOUT_MS = 25_000
"""From page load to decoded, drawn frames."""
CHAT_TIMEOUT_MS = 10_000
"""For a chat message, a view count or a mute to reach another browser."""
CHANGE_FRAMES = 30
"""Frames the page must decode between the two canvas samples that must differ."""

# The canvas the player draws on: a summary of its pixels (the element draws with a 2d
# context, so getContext("2d") is the very context it uses).
CANVAS_SAMPLE = """() => {
  const canvas = document.querySelector("moq-watch canvas");
  if (!canvas || !canvas.width || !canvas.height) return null;
  const {data} = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
  let hash = 0x811c9dc5, lit = 0;
  const colours = new Set();
  for (let i = 0; i < data.length; i += 4) {
    hash = Math.imul(hash ^ data[i], 16777619); hash = Math.imul(hash ^ data[i + 1], 16777619);
    hash = Math.imul(hash ^ data[i + 2], 16777619);
    if ((data[i] * 299 + data[i + 1] * 587 + data[i + 2] * 114) / 1000 > 16) lit++;
    if (colours.size < 4096) colours.add((data[i] >> 4) << 8 | (data[i + 1] >> 4) << 4 | (data[i + 2] >> 4));
  }
  return {hash: (hash >>> 0).toString(16), litFraction: lit / (data.length / 4), colours: colours.size,
          width: canvas.width, height: canvas.height, stats: window.shopcast.stats()};
}"""


async def _new_page(browser, base: str, log: list[str], **context_options):
    context = await browser.new_context(ignore_https_errors=True, base_url=base, **context_options)
    page = await context.new_page()
    page.on("console", lambda m: log.append(f"console.{m.type}: {m.text}"))
    page.on("pageerror", lambda e: log.append(f"pageerror: {e}"))
    return context, page


def _tail(log: list[str]) -> str:
    return "\n".join(log[-40:])


async def test_live_page_plays_the_demo_room(web_server, run_browser, artifacts):
    from shopcast.server._interaction import live_edge_us

    base = f"https://127.0.0.1:{web_server.port}"
    broadcast = web_server.app.relay.broadcasts["demo"]

    async def scenario(browser):
        log: list[str] = []
        context, page = await _new_page(browser, base, log, viewport={"width": 1280, "height": 720})
        loaded = time.monotonic()
        await page.goto("/live/demo")
        await page.wait_for_function("() => window.shopcast && window.shopcast.stats && "
                                     "window.shopcast.stats().framesDecoded > 0", timeout=PLAY_TIMEOUT_MS)
        first_frame_s = time.monotonic() - loaded
        await page.wait_for_function(f"() => {{ const s = ({CANVAS_SAMPLE})(); return s && s.litFraction > 0.25; }}",
                                     timeout=PLAY_TIMEOUT_MS)
        first = await page.evaluate(CANVAS_SAMPLE)
        target = first["stats"]["framesDecoded"] + CHANGE_FRAMES
        await page.wait_for_function(f"() => window.shopcast.stats().framesDecoded >= {target}",
                                     timeout=PLAY_TIMEOUT_MS)
        later = await page.evaluate(CANVAS_SAMPLE)
        # Measured, not asserted: how far the picture on screen is behind the relay's newest
        # frame (the demo clip loops, so samples across a loop point are left out).
        behind_ms = []
        for _ in range(20):
            shown_us = await page.evaluate("() => window.shopcast.player.playoutUs()")
            edge_us = trio.from_thread.run_sync(live_edge_us, broadcast)
            if shown_us is not None and 0 <= edge_us - shown_us < 2_000_000:
                behind_ms.append((edge_us - shown_us) / 1000)
            await page.wait_for_timeout(100)
        await page.wait_for_function("() => /1/.test(document.getElementById('viewer-count').textContent)",
                                     timeout=CHAT_TIMEOUT_MS)
        unmute_label = await page.get_by_role("button", name="Unmute").count()
        muted_audio = await page.evaluate("() => window.shopcast.stats().audioBytes")
        # Unmuting (a user gesture) brings the audio track in.
        await page.get_by_role("button", name="Unmute").click()
        await page.wait_for_function("() => window.shopcast.stats().audioBytes > 0", timeout=PLAY_TIMEOUT_MS)
        pressed = await page.locator("#unmute").get_attribute("aria-pressed")
        await page.screenshot(path=str(artifacts / "live-landscape.png"))
        # Portrait: the side panel goes under the video.
        await page.set_viewport_size({"width": 390, "height": 844})
        await page.wait_for_function("() => { const s = document.querySelector('.stage').getBoundingClientRect();"
                                     " const c = document.querySelector('.side').getBoundingClientRect();"
                                     " return c.top >= s.bottom - 1; }", timeout=5000)
        await page.screenshot(path=str(artifacts / "live-portrait.png"), full_page=True)
        await context.close()
        return first, later, (unmute_label, muted_audio, pressed), first_frame_s, sorted(behind_ms), log

    first, later, (unmute_label, muted_audio, pressed), first_frame_s, behind_ms, log = await run_browser(scenario)
    print(f"first {first}\nlater {later}")
    if behind_ms:
        print(f"load to first decoded frame {first_frame_s:.2f} s; picture behind the relay's live edge: "
              f"p50 {behind_ms[len(behind_ms) // 2]:.0f} ms, max {behind_ms[-1]:.0f} ms ({len(behind_ms)} samples)")
    assert (first["width"], first["height"]) == (640, 360), _tail(log)
    assert later["colours"] >= 16 and later["litFraction"] > 0.25, _tail(log)
    assert later["hash"] != first["hash"], f"canvas did not change over {CHANGE_FRAMES} frames\n{_tail(log)}"
    assert later["stats"]["frameTimestampMs"] > first["stats"]["frameTimestampMs"]
    assert unmute_label == 1, "muted autoplay shows an Unmute button"
    assert muted_audio == 0, "muted autoplay fetches no audio"
    assert pressed == "true"


async def test_registration_chat_view_counts_and_mute_between_browsers(web_server, run_browser, artifacts):
    """Issue #8's done-when, in real browsers: chat with emoji from one context to another,
    the view count changes in both when a third joins, a moderator's mute takes effect at once."""
    from shopcast.client import connect_chat

    app = web_server.app
    base = f"https://127.0.0.1:{web_server.port}"
    operator_token = app.tokens.mint(subject="moderator-op", role="operator", room="*", ttl_s=600,
                                     now=time.time())

    async def mute(account_id: str) -> dict:
        async with connect_chat(base, "demo", operator_token,
                                certificate_sha256=app.certificate.sha256_hex) as moderator:
            return await moderator.request(type="mute", account=account_id, seconds=120)

    async def register_and_login(page, name: str) -> None:
        await page.goto("/register")
        await page.get_by_label("Account name").fill(name)
        await page.get_by_label("Password").fill("password-" + name)
        await page.get_by_label("Display name").fill(name.capitalize())
        await page.get_by_label("I accept the terms of service").check()
        await page.get_by_role("button", name="Create account").click()
        await page.wait_for_function("() => /Account created/.test(document.getElementById('status').textContent)",
                                     timeout=CHAT_TIMEOUT_MS)
        await page.goto("/login?next=/live/demo")
        await page.get_by_label("Account name").fill(name)
        await page.get_by_label("Password").fill("password-" + name)
        await page.get_by_role("button", name="Log in").click()
        await page.wait_for_url("**/live/demo", timeout=CHAT_TIMEOUT_MS)
        await page.wait_for_function("() => window.shopcast && window.shopcast.chatOpen", timeout=PLAY_TIMEOUT_MS)

    async def viewers(page) -> int | None:
        return await page.evaluate("() => window.shopcast.viewers && window.shopcast.viewers.concurrent")

    async def scenario(browser):
        log: list[str] = []
        ctx_a, alice = await _new_page(browser, base, log)
        ctx_b, bob = await _new_page(browser, base, log)
        await alice.goto("/register")
        await alice.screenshot(path=str(artifacts / "register.png"))
        # The terms of service are this server's page, at the version to accept.
        version = await alice.locator("#terms-version").text_content()
        terms_href = await alice.locator("#terms-link").get_attribute("href")
        await alice.goto(terms_href)
        terms_shown = await alice.locator("#terms-version").text_content()
        await alice.screenshot(path=str(artifacts / "terms.png"), full_page=True)
        await register_and_login(alice, "alice")
        await register_and_login(bob, "bob")
        # Both watch: two viewers, seen by both.
        for page in (alice, bob):
            await page.wait_for_function("() => window.shopcast.viewers && window.shopcast.viewers.concurrent === 2",
                                         timeout=PLAY_TIMEOUT_MS)
        # Alice writes with the emoji picker, by keyboard only; Bob reads it.
        await alice.get_by_label("Message").fill("hello from Alice ")
        await alice.keyboard.press("Shift+Tab")            # the emoji button, before the input
        await alice.keyboard.press("Enter")                # opens the picker on its first emoji
        for _ in range(3):
            await alice.keyboard.press("ArrowRight")
        await alice.keyboard.press("ArrowDown")            # row 2, column 4: the 12th emoji, 🎉
        picked = await alice.evaluate("() => document.activeElement.textContent")
        await alice.keyboard.press("Enter")                # inserted; focus back in the input
        await alice.keyboard.press("Enter")                # sends
        await bob.wait_for_function("() => window.shopcast.chatMessages.some(m => m.text === 'hello from Alice 🎉')",
                                    timeout=CHAT_TIMEOUT_MS)
        assert picked == "🎉", picked
        author = await bob.evaluate("() => window.shopcast.chatMessages.find(m => m.text === 'hello from Alice 🎉').name")
        await bob.get_by_label("Message").fill("hi Alice 👋")
        await bob.get_by_label("Message").press("Enter")
        await alice.wait_for_function("() => window.shopcast.chatMessages.some(m => m.text === 'hi Alice 👋')",
                                      timeout=CHAT_TIMEOUT_MS)
        # Alice replies to Bob's message; Bob sees the reply pointing at it.
        await alice.get_by_role("button", name="Reply: Bob").click()
        await alice.get_by_label("Message").fill("welcome Bob")
        await alice.get_by_label("Message").press("Enter")
        await bob.wait_for_function(
            "() => { const m = window.shopcast.chatMessages; const hi = m.find(x => x.text === 'hi Alice 👋');"
            " return m.some(x => x.text === 'welcome Bob' && hi && x.reply_to === hi.id); }", timeout=CHAT_TIMEOUT_MS)
        await alice.get_by_role("button", name="Heart").click()
        await bob.wait_for_function("() => Number(document.getElementById('reaction-count-heart').textContent) >= 1",
                                    timeout=CHAT_TIMEOUT_MS)
        # A third viewer joins: both see the count go to 3.
        ctx_c, carol = await _new_page(browser, base, log)
        await carol.goto("/live/demo")
        for page in (alice, bob):
            await page.wait_for_function("() => window.shopcast.viewers && window.shopcast.viewers.concurrent === 3",
                                         timeout=CHAT_TIMEOUT_MS)
        counts = [await viewers(alice), await viewers(bob)]
        await alice.screenshot(path=str(artifacts / "live-chat.png"))
        # The moderator mutes Bob: his message leaves both screens, his next one is refused.
        bob_id = await bob.evaluate("() => JSON.parse(localStorage.getItem('shopcast.account')).id")
        answer = trio.from_thread.run(mute, bob_id)
        for page in (alice, bob):
            await page.wait_for_function(
                "(bob) => !window.shopcast.chatMessages.some(m => m.author === bob) && "
                "!document.querySelector(`#chat-log li[data-author='${bob}']`) && "
                "!document.querySelector('#chat-log').textContent.includes('hi Alice')", arg=bob_id,
                timeout=CHAT_TIMEOUT_MS)
        await bob.get_by_label("Message").fill("am I muted?")
        await bob.get_by_role("button", name="Send").click()
        await bob.wait_for_function("() => window.shopcast.notices.some(n => n.code === 'muted')", timeout=CHAT_TIMEOUT_MS)
        notice = await bob.locator("#chat-notice").text_content()
        alice_still_sees_own = await alice.evaluate(
            "() => window.shopcast.chatMessages.some(m => m.text === 'hello from Alice 🎉')")
        await bob.screenshot(path=str(artifacts / "live-muted.png"))
        for context in (ctx_a, ctx_b, ctx_c):
            await context.close()
        return counts, answer, notice, alice_still_sees_own, author, (terms_href, version, terms_shown), log

    counts, answer, notice, alice_still_sees_own, author, terms, log = await run_browser(scenario)
    assert terms == ("/terms", app.config.accounts.terms_version, f"Version {app.config.accounts.terms_version}"), terms
    assert author == "Alice", "chat shows the account's display name"
    assert counts == [3, 3], _tail(log)
    assert answer["type"] == "ok", answer
    assert "muted" in notice.lower(), notice
    assert alice_still_sees_own, "muting Bob removed only Bob's messages"


async def test_every_page_renders_in_both_languages(web_server, web_api, run_browser, artifacts):
    base = f"https://127.0.0.1:{web_server.port}"
    token = await web_api.user("pagebuyer", "audience")
    account = (await web_api.call("GET", "/api/v1/me", token=token)).body
    # The statistics and replay pages of a real ended room: test_ended_room_chromium.py.
    pages = ["/", "/upcoming", "/search?q=shoes", "/login", "/register", "/profile", "/orders",
             "/orders/o-none", "/embed/demo", "/replay/demo"]

    async def scenario(browser):
        log: list[str] = []
        found = {}
        for lang in ("en", "zh"):
            context, page = await _new_page(browser, base, log, viewport={"width": 1100, "height": 800})
            await page.goto("/")
            await page.evaluate("([lang, token, account]) => { localStorage.setItem('shopcast.lang', lang);"
                                " localStorage.setItem('shopcast.token', token);"
                                " localStorage.setItem('shopcast.account', JSON.stringify(account)); }",
                                [lang, token, account])
            for path in pages:
                await page.goto(path)
                await page.wait_for_selector("main", timeout=CHAT_TIMEOUT_MS)
                await page.wait_for_load_state("networkidle", timeout=CHAT_TIMEOUT_MS)
                name = path.strip("/").replace("/", "-").replace("?", "-").replace("=", "-") or "home"
                await page.screenshot(path=str(artifacts / f"page-{name}-{lang}.png"), full_page=True)
                found[(lang, path)] = {
                    "lang": await page.evaluate("() => document.documentElement.lang"),
                    "text": await page.locator("body").inner_text(),
                    "unlabelled": await page.evaluate(
                        "() => [...document.querySelectorAll('input, select, button')].filter(e =>"
                        " !e.closest('moq-watch') && e.type !== 'hidden' && !(e.labels && e.labels.length) &&"
                        " !e.getAttribute('aria-label') && !e.textContent.trim()).map(e => e.outerHTML)")}
            await context.close()
        return found, log

    found, log = await run_browser(scenario)
    for (lang, path), page in found.items():
        assert page["lang"] == ("zh-CN" if lang == "zh" else "en"), (lang, path)
        assert not page["unlabelled"], f"{path}: controls without a label: {page['unlabelled']}"
    assert "Live now" in found[("en", "/")]["text"] and "正在直播" in found[("zh", "/")]["text"]
    assert "pagebuyer" in found[("en", "/profile")]["text"]
    assert "我的订单" in found[("zh", "/orders")]["text"]


async def test_a_browser_without_webtransport_is_told_so(web_server, run_browser, artifacts):
    base = f"https://127.0.0.1:{web_server.port}"

    async def scenario(browser):
        log: list[str] = []
        context, page = await _new_page(browser, base, log)
        await context.add_init_script("delete window.WebTransport;")
        await page.goto("/live/demo")
        await page.wait_for_function("() => window.shopcast && window.shopcast.noWebTransport", timeout=CHAT_TIMEOUT_MS)
        text = await page.locator(".status").text_content()
        await page.screenshot(path=str(artifacts / "live-no-webtransport.png"))
        await context.close()
        return text

    assert "no WebTransport" in await run_browser(scenario)


async def test_the_embed_element_plays_the_room_on_another_site(web_server, run_browser, directory_server,
                                                                  tmp_path, artifacts):
    """A platform's page on another origin loads /static/embed.js (a classic script, no CORS
    needed) and puts <shopcast-live room="demo"> on it: the room plays inside."""
    base = f"https://127.0.0.1:{web_server.port}"
    (tmp_path / "shop.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>A shop</title></head><body>"
        "<h1>Our shop</h1>"
        f"<script src='{base}/static/embed.js'></script>"
        "<shopcast-live room='demo' style='display:block;width:420px;height:760px'></shopcast-live>"
        "</body></html>", encoding="utf-8")

    async def scenario(browser):
        log: list[str] = []
        with directory_server(tmp_path) as shop_url:
            context, page = await _new_page(browser, base, log, viewport={"width": 500, "height": 800})
            await page.goto(f"{shop_url}shop.html")
            handle = await page.wait_for_selector("shopcast-live iframe", timeout=CHAT_TIMEOUT_MS)
            frame = await handle.content_frame()
            try:
                await frame.wait_for_function("() => window.shopcast && window.shopcast.stats && "
                                              "window.shopcast.stats().framesDecoded > 10", timeout=PLAY_TIMEOUT_MS)
            except Exception as exc:
                raise AssertionError(f"the embedded room did not play\n{_tail(log)}") from exc
            header = await frame.evaluate("() => document.querySelector('header') === null")
            src = await handle.get_attribute("src")
            await page.screenshot(path=str(artifacts / "embed-on-another-site.png"))
            await context.close()
        return header, src, log

    no_header, src, log = await run_browser(scenario)
    assert src == f"{base}/embed/demo"
    assert no_header, "the embedded form has no site header"


async def test_datagram_mode_plays_the_demo_room(web_server, run_browser, artifacts):
    """?mode=datagram: the page's own datagram receiver (FEC, NACK, in-order release) and
    WebCodecs decoder play the demo room from /dgram, and the room tracks arrive the same way."""
    from shopcast.server._interaction import live_edge_us

    base = f"https://127.0.0.1:{web_server.port}"
    broadcast = web_server.app.relay.broadcasts["demo"]
    sample = CANVAS_SAMPLE.replace('"moq-watch canvas"', '"canvas.datagram-video"')

    async def scenario(browser):
        log: list[str] = []
        context, page = await _new_page(browser, base, log, viewport={"width": 1280, "height": 720})
        await page.goto("/live/demo?mode=datagram")
        try:
            await page.wait_for_function("() => window.shopcast.stats && window.shopcast.stats().framesDecoded > 5",
                                         timeout=PLAY_TIMEOUT_MS)
        except Exception as exc:
            raise AssertionError(f"no frames in datagram mode\n{_tail(log)}") from exc
        first = await page.evaluate(sample)
        target = first["stats"]["framesDecoded"] + CHANGE_FRAMES
        await page.wait_for_function(f"() => window.shopcast.stats().framesDecoded >= {target}", timeout=PLAY_TIMEOUT_MS)
        later = await page.evaluate(sample)
        await page.wait_for_function("() => window.shopcast.viewers !== null", timeout=CHAT_TIMEOUT_MS)
        behind_ms = []   # measured, not asserted (see the stream-mode test)
        for _ in range(20):
            shown_us = await page.evaluate("() => window.shopcast.player.playoutUs()")
            edge_us = trio.from_thread.run_sync(live_edge_us, broadcast)
            if shown_us is not None and 0 <= edge_us - shown_us < 2_000_000:
                behind_ms.append((edge_us - shown_us) / 1000)
            await page.wait_for_timeout(100)
        await page.screenshot(path=str(artifacts / "live-datagram.png"))
        limits = await page.evaluate("() => window.shopcast.player.limits")
        await context.close()
        return first, later, sorted(behind_ms), limits, log

    first, later, behind_ms, limits, log = await run_browser(scenario)
    web = web_server.app.config.web
    # The player's bounds are the config's ([web] datagram_*), not constants of its own.
    assert limits == {"tickMs": web.datagram_tick_ms, "nackAfterMs": web.datagram_nack_after_ms,
                      "heldPacketsMax": web.datagram_held_packets_max,
                      "framesPendingMax": web.datagram_frames_pending_max,
                      "audioAheadMaxS": web.datagram_audio_ahead_max_s}, limits
    print(f"datagram mode: {later['stats']}")
    if behind_ms:
        print(f"datagram mode: picture behind the relay's live edge: p50 {behind_ms[len(behind_ms) // 2]:.0f} ms, "
              f"max {behind_ms[-1]:.0f} ms ({len(behind_ms)} samples)")
    assert later["stats"]["mode"] == "datagram"
    assert (first["width"], first["height"]) == (640, 360), _tail(log)
    assert later["litFraction"] > 0.25 and later["colours"] >= 16, _tail(log)
    assert later["hash"] != first["hash"], _tail(log)
    assert later["stats"]["frameTimestampMs"] > first["stats"]["frameTimestampMs"]
