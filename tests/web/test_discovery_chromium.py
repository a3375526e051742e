"""Search with the API's filters (hashtag, host, start range, state) and the home page's
recommendations and replays, in headless Chromium: each filter narrows the results to the
rooms the API finds, and an ended room links to its replay."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.e2e

PAGE_TIMEOUT_MS = 15_000


async def test_search_filters_recommendations_and_replays(web_server, web_api, room_body, run_browser, artifacts):
    base = f"https://127.0.0.1:{web_server.port}"
    shoes_host = await web_api.user("shoeshost", "host")
    hats_host = await web_api.user("hatshost", "host")
    buyer = await web_api.user("findbuyer", "audience")
    buyer_account = (await web_api.call("GET", "/api/v1/me", token=buyer)).body

    async def room(title: str, token: str, hashtag: str, start_in_s: float) -> str:
        reply = await web_api.call("POST", "/api/v1/rooms", room_body(title, hashtags=(hashtag,), start_in_s=start_in_s),
                                   token=token)
        assert reply.status == 201, reply.body
        return reply.body["room"]["id"]

    soon = await room("Trail shoes", shoes_host, "#shoes", 3600)
    later = await room("Winter shoes", shoes_host, "#shoes", 5 * 86400)
    hats = await room("Summer hats", hats_host, "#hats", 7200)
    ended = await room("Old shoes", shoes_host, "#shoes", 1800)
    reply = await web_api.call("POST", f"/api/v1/rooms/{ended}/end", {}, token=shoes_host)
    assert reply.status == 200 and reply.body["state"] == "ended", reply.body
    assert (await web_api.call("PUT", "/api/v1/accounts/shoeshost/follow", token=buyer)).status in (200, 204)
    day_after = time.strftime("%Y-%m-%dT%H:%M", time.localtime(time.time() + 86400))

    async def scenario(browser):
        context = await browser.new_context(ignore_https_errors=True, base_url=base, viewport={"width": 1100, "height": 900})
        page = await context.new_page()
        found = {}
        for name, path in (("hashtag", "/search?hashtag=hats"), ("host", "/search?host=shoeshost"),
                           ("range", f"/search?hashtag=shoes&from={day_after}"),
                           ("ended", "/search?state=ended"), ("live", "/search?q=shoes&state=live")):
            await page.goto(path)
            await page.locator("#status").filter(has_text="Results").wait_for(timeout=PAGE_TIMEOUT_MS)
            found[name] = await page.evaluate("() => [...document.querySelectorAll('#results li')]"
                                              ".map((li) => [li.dataset.room, li.querySelector('a').getAttribute('href')])")
            await page.screenshot(path=str(artifacts / f"search-{name}.png"), full_page=True)
        # The form keeps the filters it was given, and submitting it searches again.
        await page.goto("/search")
        await page.get_by_label("Hashtag").fill("#hats")
        await page.get_by_label("State").select_option("scheduled")
        await page.get_by_role("button", name="Search").click()
        await page.locator("#status").filter(has_text="Results").wait_for(timeout=PAGE_TIMEOUT_MS)
        found["form"] = await page.evaluate("() => [...document.querySelectorAll('#results li')].map((li) => li.dataset.room)")
        # Home, logged in: recommendations (following the host comes first) and replays.
        await page.evaluate("([token, account]) => { localStorage.setItem('shopcast.token', token);"
                            " localStorage.setItem('shopcast.account', JSON.stringify(account)); }", [buyer, buyer_account])
        await page.goto("/")
        await page.locator("#recommended-rooms li").first.wait_for(timeout=PAGE_TIMEOUT_MS)
        found["recommended"] = await page.evaluate("() => [...document.querySelectorAll('#recommended-rooms li')].map((li) => li.dataset.room)")
        found["replays"] = await page.evaluate("() => [...document.querySelectorAll('#replay-rooms li a')].map((a) => a.getAttribute('href'))")
        await page.screenshot(path=str(artifacts / "home-logged-in.png"), full_page=True)
        await context.close()
        return found

    found = await run_browser(scenario)
    assert [r for r, _ in found["hashtag"]] == [hats], found["hashtag"]
    assert sorted(r for r, _ in found["host"]) == sorted([soon, later, ended]), found["host"]
    assert [r for r, _ in found["range"]] == [later], found["range"]
    assert found["ended"] == [[ended, f"/replay/{ended}"]], found["ended"]
    assert found["live"] == [], found["live"]
    assert found["form"] == [hats], found["form"]
    assert set(found["recommended"][:2]) == {soon, later}, ("the followed host first", found["recommended"])
    assert hats in found["recommended"] and ended not in found["recommended"], found["recommended"]
    assert f"/replay/{ended}" in found["replays"], found["replays"]
