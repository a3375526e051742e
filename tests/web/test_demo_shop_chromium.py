"""The README's first check in headless Chromium: the server as `shopcast serve` starts it
(the demo room and its show with the default [demo] timings), a viewer opens /live/demo, the
demo product card appears on the page from the demo broadcast's commerce track with its
bundled image, and Buy Now on it goes through the test provider's payment page with a test
card to a paid order (plugins/_demo_shop.py)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e

CARD_TIMEOUT_MS = 25_000
"""From page load to the demo card on screen (includes the player's start and
demo.product_pin_s)."""
PAYMENT_TIMEOUT_MS = 20_000
"""From Buy Now to the paid order page."""


async def test_demo_room_shows_its_card_and_sells_from_it(server_factory, web_config, make_client,
                                                          run_browser, artifacts):
    # The server's public name is the page's origin, so the payment page returns the buyer to
    # an order page that has the login token (localStorage is per origin).
    web_server = await server_factory({**web_config, "server": {"public_names": ["127.0.0.1"]}})
    web_api = make_client(web_server)
    base = f"https://127.0.0.1:{web_server.port}"
    buyer = await web_api.user("demobuyer", "audience")
    buyer_account = (await web_api.call("GET", "/api/v1/me", token=buyer)).body

    async def scenario(browser):
        context = await browser.new_context(ignore_https_errors=True, base_url=base)
        page = await context.new_page()
        log: list[str] = []
        page.on("console", lambda m: log.append(f"console.{m.type}: {m.text}"))
        page.on("pageerror", lambda e: log.append(f"pageerror: {e}"))
        await page.goto("/")
        await page.evaluate("([token, account]) => { localStorage.setItem('shopcast.token', token);"
                            " localStorage.setItem('shopcast.account', JSON.stringify(account)); }",
                            [buyer, buyer_account])
        await page.goto("/live/demo")
        card = page.locator("article.product-card").filter(has_text="shopcast demo tee")
        try:
            await card.wait_for(timeout=CARD_TIMEOUT_MS)
        except Exception as exc:
            raise AssertionError("no demo card:\n" + "\n".join(log[-40:])) from exc
        pin_id = await card.get_attribute("data-pin")
        shown_at = await page.evaluate("() => window.shopcast.player.playoutUs()")
        image = await card.locator("img").evaluate(
            "(img) => img.decode().then(() => [img.getAttribute('src'), img.naturalWidth])")
        price = await card.locator(".price").text_content()
        await page.screenshot(path=str(artifacts / "demo-card.png"))
        await card.get_by_role("button", name="Buy now").click()
        await page.get_by_role("button", name="Go to payment").click()
        await page.wait_for_url("**/pay/test/**", timeout=PAYMENT_TIMEOUT_MS)
        await page.get_by_label("Card number").fill("4242424242424242")
        await page.get_by_role("button", name="Pay").click()
        try:
            await page.wait_for_url("**/orders/**", timeout=5000)
        except Exception:  # the result page links to the order instead of redirecting
            await page.locator('a[href*="/orders/"]').first.click()
        await page.wait_for_selector('#order-status[data-status="paid"]', timeout=PAYMENT_TIMEOUT_MS)
        order_id = page.url.rstrip("/").rsplit("/", 1)[1]
        await context.close()
        return pin_id, shown_at, image, price, order_id

    pin_id, shown_at, image, price, order_id = await run_browser(scenario)
    assert image[0] == "/static/img/demo-tee.svg" and image[1] > 0, image
    assert "19.00" in price, price
    pin = await web_server.app.db.read(lambda c: dict(c.execute(
        "SELECT room_id, media_us FROM pins WHERE id = ?", (pin_id,)).fetchone()))
    assert pin["room_id"] == "demo" and shown_at >= pin["media_us"] > 0, (pin, shown_at)
    order = await web_api.call("GET", f"/api/v1/orders/{order_id}", token=buyer)
    assert order.status == 200 and order.body["room_id"] == "demo" and order.body["status"] == "paid"
    assert order.body["pin_id"] == pin_id
