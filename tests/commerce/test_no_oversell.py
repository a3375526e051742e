"""1000 concurrent Buy Now requests over HTTPS against a stock of 100 give
exactly 100 holds: the conditional decrement in one write transaction cannot
oversell, however the requests interleave."""

import collections

import trio

REQUESTS = 1000
STOCK = 100
CONNECTIONS = 40
BUYERS = 10


async def test_1000_concurrent_buy_now_against_100_units(api, shop, product_body, connections):
    product = await shop.add_product(title="Flash sneaker", skus=[
        {"name": "EU 42", "price": 4999, "currency": "EUR", "stock": STOCK, "per_buyer_limit": STOCK}])
    sku = product["skus"][0]["id"]
    buyers = [await api.user(f"fan{i}", "audience") for i in range(BUYERS)]
    await shop.go_live()
    statuses: collections.Counter = collections.Counter()
    orders: list[str] = []
    requests = iter(range(REQUESTS))

    async def worker(connection):
        # Each connection sends its share back to back; all CONNECTIONS race.
        for n in requests:
            reply = await shop.buy({"sku_id": sku, "quantity": 1}, token=buyers[n % BUYERS],
                                   connection=connection)
            statuses[reply.status, reply.body.get("error", {}).get("code")] += 1
            if reply.status == 201:
                orders.append(reply.body["id"])

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for connection in connections(CONNECTIONS):
                nursery.start_soon(worker, connection)
    assert sum(statuses.values()) == REQUESTS
    assert statuses[201, None] == STOCK, statuses
    assert statuses[409, "sold_out"] == REQUESTS - STOCK, statuses
    assert len(set(orders)) == STOCK
    assert await shop.stock(sku) == 0
    held = await api.app.db.read(lambda c: c.execute(
        "SELECT count(*), sum(quantity) FROM orders WHERE sku_id = ? AND state = 'pending'",
        (sku,)).fetchone())
    assert tuple(held) == (STOCK, STOCK)
