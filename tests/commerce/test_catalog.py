"""The catalog and a room's product list: who may add what, and when."""



async def test_products_with_variants_and_integer_prices(api, shop):
    product = shop.product
    assert product["id"].startswith("p") and product["external_ref"] == "ext-1"
    assert product["skus"][0]["price"] == 5999 and product["skus"][0]["currency"] == "EUR"
    shown = await api.call("GET", f"/api/v1/products/{product['id']}")
    assert shown.status == 200 and shown.body == product
    listed = await api.call("GET", f"/api/v1/rooms/{shop.room_id}/products")
    assert listed.status == 200 and [p["id"] for p in listed.body["products"]] == [product["id"]]
    assert (await api.call("GET", "/api/v1/products/pnothere")).status == 404


async def test_who_may_create_products(api, shop):
    marketer = await api.user("marketeer", "marketer")
    body = {"title": "Socks", "category": "apparel",
            "skus": [{"name": "M", "price": 500, "currency": "USD", "stock": 3}]}
    assert (await api.call("POST", "/api/v1/products", body, token=marketer)).status == 201
    service = await api.call("POST", "/api/v1/products", body, token=api.service_token())
    assert service.status == 201
    # A platform's product may go on any room's list.
    put = await api.call("PUT", f"/api/v1/rooms/{shop.room_id}/products/{service.body['id']}",
                         token=shop.host)
    assert put.status == 200 and len(put.body["products"]) == 2
    for token in (shop.buyer, shop.operator, None):
        reply = await api.call("POST", "/api/v1/products", body, token=token)
        assert reply.status in (401, 403), reply.body
    # Variant names differ.
    twice = {**body, "skus": body["skus"] * 2}
    reply = await api.call("POST", "/api/v1/products", twice, token=marketer)
    assert reply.status == 400 and reply.error_field == "skus"


async def test_room_list_is_for_owner_and_team_before_the_start(api, shop, product_body):
    other = await api.user("otherhost", "host")
    theirs = (await api.call("POST", "/api/v1/products", product_body(), token=other)).body
    path = f"/api/v1/rooms/{shop.room_id}/products/{theirs['id']}"
    # Not on the team: refused; someone else's product: refused.
    reply = await api.call("PUT", path, token=other)
    assert reply.status == 403 and reply.body["error"]["code"] == "not_on_team"
    reply = await api.call("PUT", path, token=shop.host)
    assert reply.status == 403 and reply.body["error"]["code"] == "not_your_product"
    # Adding twice is harmless; removing works once.
    own = f"/api/v1/rooms/{shop.room_id}/products/{shop.product['id']}"
    assert len((await api.call("PUT", own, token=shop.host)).body["products"]) == 1
    assert (await api.call("DELETE", own, token=shop.host)).status == 204
    assert (await api.call("DELETE", own, token=shop.host)).status == 404
    assert (await api.call("PUT", own, token=shop.host)).status == 200
    # Once live, the list is fixed.
    await shop.go_live()
    reply = await api.call("DELETE", own, token=shop.host)
    assert reply.status == 409 and reply.body["error"]["code"] == "room_started"
    assert (await api.call("PUT", own, token=shop.host)).status == 409


async def test_room_list_has_a_limit(make_shop, product_body):
    small = await make_shop({"commerce": {"products_per_room_max": 2}})
    await small.add_product(title="Second")
    extra = (await small.api.call("POST", "/api/v1/products", product_body(title="Third"),
                                  token=small.host)).body
    reply = await small.api.call("PUT", f"/api/v1/rooms/{small.room_id}/products/{extra['id']}",
                                 token=small.host)
    assert reply.status == 409 and reply.body["error"]["code"] == "room_products_full"


async def test_closed_room_forgets_its_list(api, shop):
    assert (await api.call("DELETE", f"/api/v1/rooms/{shop.room_id}", token=shop.host)).status == 204
    rows = await api.app.db.read(lambda c: c.execute("SELECT count(*) FROM room_products").fetchone()[0])
    assert rows == 0


async def test_account_exit_removes_commerce_data(api, shop):
    await shop.go_live()
    order = (await shop.buy(key="k-exit")).body
    reply = await api.call("DELETE", "/api/v1/me", {"password": "password-buyer", "confirm": True},
                           token=shop.buyer)
    assert reply.status in (200, 204), reply.body

    def load(c):
        return (c.execute("SELECT buyer_id FROM orders WHERE id = ?", (order["id"],)).fetchone()[0],
                c.execute("SELECT count(*) FROM idempotency_keys").fetchone()[0])

    buyer, keys = await api.app.db.read(load)
    assert buyer.startswith("sha256:") and keys == 0
