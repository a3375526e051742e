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


async def test_edit_a_product_and_restock_a_variant(api, shop):
    pid, sku = shop.product["id"], shop.sku_id
    path = f"/api/v1/products/{pid}"
    reply = await api.call("PATCH", path, {"title": "Trail runner 3", "brand": "Acme Co",
                                           "images": [], "price": 4999, "external_ref": "ext-9"},
                           token=shop.host)
    assert reply.status == 200, reply.body
    edited = reply.body
    assert (edited["title"], edited["brand"], edited["images"], edited["external_ref"]) == (
        "Trail runner 3", "Acme Co", [], "ext-9")
    assert edited["skus"][0]["price"] == 4999 and edited["description"] == shop.product["description"]
    assert (await api.call("GET", path)).body == edited
    # A variant restocked and repriced on its own.
    reply = await api.call("PATCH", f"{path}/skus/{sku}", {"stock": 250, "price": 4500}, token=shop.host)
    assert reply.status == 200 and (reply.body["skus"][0]["stock"], reply.body["skus"][0]["price"]) == (
        250, 4500)
    assert await shop.stock() == 250
    # Restocking after a sale: held units stay held; a sold-out variant sells again.
    await api.call("PATCH", f"{path}/skus/{sku}", {"stock": 1}, token=shop.host)
    await shop.go_live()
    assert (await shop.buy()).status == 201
    sold_out = await shop.buy()
    assert sold_out.status == 409 and sold_out.body["error"]["code"] == "sold_out"
    assert (await api.call("PATCH", f"{path}/skus/{sku}", {"stock": 3}, token=shop.host)).status == 200
    bought = await shop.buy()
    assert bought.status == 201 and bought.body["unit_price"] == 4500
    assert await shop.stock() == 2
    # Who may: the owner and operators; not another seller, a buyer, or anyone.
    assert (await api.call("PATCH", path, {"title": "By op"}, token=shop.operator)).status == 200
    other = await api.user("otherseller", "host")
    for token, status in ((other, 403), (shop.buyer, 403), (None, 401)):
        reply = await api.call("PATCH", path, {"title": "Mine"}, token=token)
        assert reply.status == status, reply.body
        reply = await api.call("PATCH", f"{path}/skus/{sku}", {"stock": 99}, token=token)
        assert reply.status == status, reply.body
    assert (await api.call("GET", path)).body["title"] == "By op"
    assert await shop.stock() == 2
    # Bad edits name the field and change nothing.
    for body, field in (({}, "body"), ({"title": ""}, "title"), ({"colour": "red"}, "colour"),
                        ({"images": ["/api/v1/product-images/nothere.png"]}, "images[0]")):
        reply = await api.call("PATCH", path, body, token=shop.host)
        assert reply.status == 400 and reply.error_field == field, (body, reply.body)
    reply = await api.call("PATCH", f"{path}/skus/snothere", {"stock": 5}, token=shop.host)
    assert reply.status == 404 and reply.error_field == "sku_id"
    reply = await api.call("PATCH", f"{path}/skus/{sku}", {"currency": "USD"}, token=shop.host)
    assert reply.status == 400 and reply.error_field == "currency"
    assert (await api.call("PATCH", "/api/v1/products/pnothere", {"title": "x"}, token=shop.host)).status == 404


async def test_an_edit_into_restricted_goods_is_refused(api, shop):
    rule = await api.call("POST", "/api/v1/restricted-goods",
                          {"kind": "keyword", "value": "ivory", "reason": "CITES"}, token=shop.operator)
    assert rule.status == 201
    path = f"/api/v1/products/{shop.product['id']}"
    reply = await api.call("PATCH", path, {"description": "Carved IVORY toe cap."}, token=shop.host)
    assert reply.status == 409 and reply.body["error"]["code"] == "restricted_goods", reply.body
    assert "'ivory'" in reply.body["error"]["message"] and reply.error_field == "description"
    assert (await api.call("GET", path)).body == shop.product  # nothing changed
    category = await api.call("POST", "/api/v1/restricted-goods", {"kind": "category", "value": "weapons"},
                              token=shop.operator)
    assert category.status == 201
    reply = await api.call("PATCH", path, {"category": "Weapons"}, token=shop.host)
    assert reply.status == 409 and reply.error_field == "category"


async def test_find_products_by_external_reference(api, shop, product_body):
    service = api.service_token()
    made = [(await api.call("POST", "/api/v1/products", product_body(external_ref=ref), token=service)).body
            for ref in ("plat-1", "plat-2", "plat-1")]
    found = await api.call("GET", "/api/v1/products?external_ref=plat-1", token=service)
    assert found.status == 200
    assert sorted(p["id"] for p in found.body["products"]) == sorted([made[0]["id"], made[2]["id"]])
    everything = await api.call("GET", "/api/v1/products", token=service)
    assert {p["id"] for p in everything.body["products"]} == {p["id"] for p in made}
    # A host sees only its own products; an operator everyone's.
    mine = await api.call("GET", "/api/v1/products?external_ref=ext-1", token=shop.host)
    assert [p["id"] for p in mine.body["products"]] == [shop.product["id"]]
    assert (await api.call("GET", "/api/v1/products?external_ref=plat-1", token=shop.host)).body[
        "products"] == []
    ops = await api.call("GET", "/api/v1/products", token=shop.operator)
    assert len(ops.body["products"]) == 4
    assert (await api.call("GET", "/api/v1/products", token=shop.buyer)).status == 403
    assert (await api.call("GET", "/api/v1/products?external_ref=", token=service)).status == 200
    assert (await api.call("GET", "/api/v1/products?external_ref=" + "x" * 101,
                           token=service)).status == 400
