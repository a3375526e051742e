"""The demo room's shop (plugins/_demo_shop.py): with ``[demo]`` on, the
looping demo broadcast carries product and flash-sale cards on its commerce
track like a host's room, stamped with the media timestamps of its video; a
viewer buys a demo product through the normal Buy Now, payment page and
signed test-provider event; a restart on the same data directory finds the
demo products instead of adding them again."""

import importlib.util
import os
import urllib.parse

import trio

from shopcast.client import connect
from shopcast.plugins._demo_shop import DEMO_OWNER, DEMO_PRODUCTS
from shopcast.server.moq import decode_frame_untrusted


def _load(name):
    spec = importlib.util.spec_from_file_location(
        f"_shopcast_demo_{name}", os.path.join(os.path.dirname(__file__), f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


payments = _load("test_payments")  # pay_page, start_payment, GOOD
pins = _load("test_pins")          # decode, next_message

FAST_ACCOUNTS = {"scrypt_n": 1024, "scrypt_r": 8, "scrypt_p": 1}
# A short show: a product card 0.5 s into every 6 s cycle, a flash-sale card at 1 s.
SHOW = {"enabled": True, "cycle_s": 6.0, "product_pin_s": 0.5, "product_unpin_s": 5.5,
        "flash_sale_every": 1, "flash_pin_s": 1.0, "flash_unpin_s": 5.0}


async def demo_server(server_factory, make_client, data_dir=None):
    overrides = {"accounts": FAST_ACCOUNTS, "demo": SHOW}
    if data_dir is not None:
        overrides["server"] = {"data_dir": str(data_dir)}
    return make_client(await server_factory(overrides))


async def wait_demo_broadcast(app):
    """The demo broadcast once its video track exists (run_demo_room starts it after listening)."""
    with trio.fail_after(10):
        while "demo" not in app.relay.broadcasts or "video" not in app.relay.broadcasts["demo"].tracks:
            await trio.sleep(0.01)


async def test_demo_cards_arrive_on_the_commerce_track_at_video_timestamps(server_factory, make_client):
    api = await demo_server(server_factory, make_client)
    app = api.app
    await wait_demo_broadcast(app)
    async with connect(f"https://127.0.0.1:{app.port}/moq",
                       certificate_sha256=app.certificate.sha256_hex) as viewer:
        commerce = await viewer.subscribe("demo", "commerce")
        video = await viewer.subscribe("demo", "video")
        seen_video = set()

        async def watch_video():
            async for frame in video.frames:
                seen_video.add(decode_frame_untrusted(frame.payload)[0])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_video)
            found = {}
            with trio.fail_after(20):
                while len(found) < 2:
                    _, timestamp_us, message = await pins.next_message(commerce, "pin")
                    found[message["pin"]["kind"]] = (timestamp_us, message["pin"])
            product_ts, card = found["product"]
            flash_ts, flash = found["flash_sale"]
            # Stamped with the live edge: the timestamp of a video frame of the demo.
            with trio.fail_after(10):
                while not {product_ts, flash_ts} <= seen_video:
                    await trio.sleep(0.05)
            assert product_ts == card["media_us"] > 0 and flash_ts == flash["media_us"] > product_ts
            nursery.cancel_scope.cancel()
    assert card["product"]["id"] == "pdemo-tee" and len(card["product"]["skus"]) == 3
    assert card["product"]["stock"] == 3 * app.config.demo.shop_stock
    sale = flash["flash_sale"]
    assert flash["product"]["id"] == "pdemo-mug" and sale["sku_id"] == "sdemo-mug-yellow"
    assert sale["price_minor"] == 1200 * app.config.demo.flash_price_percent // 100
    assert sale["stock_cap"] == app.config.demo.flash_stock_cap
    # The card's image is a file the server itself serves.
    image = await api.call("GET", card["product"]["images"][0])
    assert image.status == 200 and image.headers["content-type"].startswith("image/svg+xml")
    assert b"<svg" in image.body
    # The REST lists answer for the demo room too.
    listed = await api.call("GET", "/api/v1/rooms/demo/products")
    assert listed.status == 200 and [p["id"] for p in listed.body["products"]] == ["pdemo-tee", "pdemo-mug"]
    assert (await api.call("GET", "/api/v1/rooms/demo/pins")).status == 200
    # The demo room is no room of the rooms table: discovery and the room routes do not list it.
    assert (await api.call("GET", "/api/v1/rooms/demo")).status == 404


async def test_buy_now_in_the_demo_room_is_paid_with_the_test_card(server_factory, make_client):
    api = await demo_server(server_factory, make_client)
    commerce = api.app.plugins.get("commerce")
    buyer = await api.user("demo_buyer", "audience")
    before = await api.app.db.read(lambda c: c.execute(
        "SELECT stock FROM skus WHERE id = 'sdemo-tee-m'").fetchone()[0])
    reply = await api.call("POST", "/api/v1/rooms/demo/orders", {"sku_id": "sdemo-tee-m", "quantity": 2},
                           token=buyer)
    assert reply.status == 201, reply.body
    placed = reply.body
    assert placed["status"] == "pending" and placed["room_id"] == "demo" and placed["total_minor"] == 3800
    after = await api.app.db.read(lambda c: c.execute(
        "SELECT stock FROM skus WHERE id = 'sdemo-tee-m'").fetchone()[0])
    assert after == before - 2

    class Buyer:  # what test_payments' helpers need of a shop
        pass

    shop = Buyer()
    shop.buyer = buyer
    intent = await payments.start_payment(api, shop, placed["id"])
    done = await payments.pay_page(api, intent["payment_url"], payments.GOOD)
    assert done.status == 200 and "succeeded" in done.body
    with trio.fail_after(20):
        await commerce.wait_events_applied(1)
    paid = await payments.order(api, shop, placed["id"])
    assert paid["status"] == "paid" and [h["status"] for h in paid["history"]] == ["pending", "paid"]
    # A variant that is not on the demo room's list is refused by the normal check.
    other = await api.call("POST", "/api/v1/rooms/demo/orders", {"sku_id": "s-nope", "quantity": 1},
                           token=buyer)
    assert other.status == 404 and other.body["error"]["field"] == "sku_id"
    # Any other room id without a row is still unknown.
    unknown = await api.call("POST", "/api/v1/rooms/not-demo/orders", {"sku_id": "sdemo-tee-m", "quantity": 1},
                             token=buyer)
    assert unknown.status == 404 and unknown.body["error"]["field"] == "room_id"


async def test_demo_shop_is_created_once_per_data_dir(tmp_path, nursery):
    from shopcast.server._app import run_server
    from shopcast.server._config import load_config

    config = load_config(environ={}, overrides={
        "server": {"host": "127.0.0.1", "port": 0, "drain_timeout_s": 2.0, "data_dir": str(tmp_path / "data")},
        "rtmp": {"port": 0}, "accounts": FAST_ACCOUNTS, "demo": SHOW})

    async def start():
        shutdown = trio.Event()
        stopped = trio.Event()

        async def run(task_status):
            try:
                await run_server(config, shutdown=shutdown, task_status=task_status)
            finally:
                stopped.set()

        started = await nursery.start(run)
        return started.app, shutdown, stopped

    def active_pins(c):
        return [r[0] for r in c.execute("SELECT id FROM pins WHERE room_id = 'demo' AND unpinned_at IS NULL")]

    def counts(c):
        return (c.execute("SELECT count(*) FROM products WHERE owner_id = ?", (DEMO_OWNER,)).fetchone()[0],
                c.execute("SELECT count(*) FROM skus WHERE product_id LIKE 'pdemo-%'").fetchone()[0],
                c.execute("SELECT count(*) FROM room_products WHERE room_id = 'demo'").fetchone()[0],
                c.execute("SELECT stock FROM skus WHERE id = 'sdemo-mug-black'").fetchone()[0])

    app, shutdown, stopped = await start()
    first = await app.db.read(counts)
    # A sale lowers a variant's stock; a card is still pinned when the server stops.
    await app.db.write(lambda c: c.execute("UPDATE skus SET stock = 7 WHERE id = 'sdemo-mug-black'"))
    with trio.fail_after(10):
        while not (left := await app.db.read(active_pins)):
            await trio.sleep(0.05)
    shutdown.set()
    with trio.fail_after(15):
        await stopped.wait()

    app, shutdown, stopped = await start()
    products, skus, listed, stock = await app.db.read(counts)
    assert (products, skus, listed) == first[:3]
    assert products == len(DEMO_PRODUCTS) == listed and skus == sum(len(p["skus"]) for p in DEMO_PRODUCTS)
    assert stock == app.config.demo.shop_stock == first[3]  # topped up again
    # The cards of the previous run are no longer pinned.
    assert not set(left) & set(await app.db.read(active_pins))
    shutdown.set()
    with trio.fail_after(15):
        await stopped.wait()


async def test_old_demo_cards_are_forgotten_unless_an_order_refers_to_one(server_factory, make_client):
    # One-second cycles: a product card and a flash-sale card each.
    fast_show = {**SHOW, "cycle_s": 1.0, "product_pin_s": 0.1, "product_unpin_s": 0.6,
                 "flash_pin_s": 0.2, "flash_unpin_s": 0.8}
    api = make_client(await server_factory({"accounts": FAST_ACCOUNTS, "demo": fast_show}))
    app = api.app
    buyer = await api.user("demo_buyer", "audience")
    await wait_demo_broadcast(app)
    async with connect(f"https://127.0.0.1:{app.port}/moq",
                       certificate_sha256=app.certificate.sha256_hex) as viewer:
        commerce = await viewer.subscribe("demo", "commerce")
        _, _, first = await pins.next_message(commerce, "pin")
        while first["pin"]["kind"] != "product":
            _, _, first = await pins.next_message(commerce, "pin")
        bought = await api.call("POST", "/api/v1/rooms/demo/orders",
                                {"sku_id": "sdemo-tee-s", "quantity": 1, "pin_id": first["pin"]["id"]},
                                token=buyer)
        assert bought.status == 201 and bought.body["pin_id"] == first["pin"]["id"], bought.body
        seen = 1
        while seen < 10:  # five cycles
            await pins.next_message(commerce, "pin")
            seen += 1
    kept = await app.db.read(lambda c: [r[0] for r in c.execute("SELECT id FROM pins WHERE room_id = 'demo'")])
    assert first["pin"]["id"] in kept  # an order refers to it
    # The rest: at most the cards of the last two cycles.
    assert len(kept) - 1 <= 4 < seen, kept


def test_demo_timings_out_of_order_are_a_config_error():
    import pytest

    from shopcast.server._config import ConfigError, load_config

    with pytest.raises(ConfigError, match="demo.product_unpin_s must be after demo.product_pin_s"):
        load_config(environ={}, overrides={"demo": {"product_pin_s": 50.0, "product_unpin_s": 10.0}})
    with pytest.raises(ConfigError, match="demo.flash_unpin_s must be after demo.flash_pin_s and at most "
                                          "demo.cycle_s"):
        load_config(environ={}, overrides={"demo": {"cycle_s": 60.0, "flash_pin_s": 15.0,
                                                    "flash_unpin_s": 100.0, "product_unpin_s": 50.0}})
