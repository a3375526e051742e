"""The restricted and prohibited goods catalogue (IWA 41 §6.2 d): managed by
operators, public, and enforced when a product goes on a room's list."""

import pytest
from shopcast.plugins._commerce import fold_untrusted, restricted_match


async def add_rule(api, shop, kind, value, reason=""):
    reply = await api.call("POST", "/api/v1/restricted-goods",
                           {"kind": kind, "value": value, "reason": reason}, token=shop.operator)
    assert reply.status == 201, reply.body
    return reply.body


async def test_catalogue_is_public_and_operator_managed(api, shop):
    rule = await add_rule(api, shop, "category", "Weapons", "IWA 41 §6.2 d")
    public = await api.call("GET", "/api/v1/restricted-goods")  # no token
    assert public.status == 200 and public.body["rules"] == [rule]
    assert "max-age" in public.headers["cache-control"]
    for token in (shop.host, shop.buyer, None):
        reply = await api.call("POST", "/api/v1/restricted-goods", {"kind": "keyword", "value": "x"},
                               token=token)
        assert reply.status in (401, 403)
    # The same rule folded is a duplicate.
    reply = await api.call("POST", "/api/v1/restricted-goods", {"kind": "category", "value": " WEAPONS "},
                           token=shop.operator)
    assert reply.status == 409 and reply.error_field == "value"
    reply = await api.call("POST", "/api/v1/restricted-goods", {"kind": "keyword", "value": "   "},
                           token=shop.operator)
    assert reply.status == 400 and reply.error_field == "value"
    assert (await api.call("DELETE", f"/api/v1/restricted-goods/{rule['id']}", token=shop.host)).status == 403
    assert (await api.call("DELETE", f"/api/v1/restricted-goods/{rule['id']}",
                           token=shop.operator)).status == 204
    assert (await api.call("DELETE", f"/api/v1/restricted-goods/{rule['id']}",
                           token=shop.operator)).status == 404
    assert (await api.call("GET", "/api/v1/restricted-goods")).body["rules"] == []
    audit = await api.call("GET", "/api/v1/audit-log", token=shop.operator)
    assert {"restricted_goods_add", "restricted_goods_remove"} <= {e["action"] for e in audit.body["entries"]}


@pytest.mark.parametrize("kind,value,product", [
    ("category", "Tobacco", {"category": "TOBACCO"}),
    ("category", "Armes à feu", {"category": "armes a FEU"}),
    ("keyword", "e-cigarette", {"title": "Deluxe E-Cigarette kit"}),
    ("keyword", "ivory", {"description": "Carved Ｉｖｏｒｙ figure"}),  # full-width letters
    ("keyword", "gun powder", {"brand": "GUN   Powder co"}),
])
async def test_matching_products_are_refused_naming_the_rule(api, shop, product_body, kind, value, product):
    rule = await add_rule(api, shop, kind, value, "not allowed")
    body = product_body(**product)
    created = await api.call("POST", "/api/v1/products", body, token=shop.host)
    assert created.status == 201
    reply = await api.call("PUT", f"/api/v1/rooms/{shop.room_id}/products/{created.body['id']}",
                           token=shop.host)
    assert reply.status == 409, reply.body
    error = reply.body["error"]
    assert error["code"] == "restricted_goods" and error["field"] == "product_id"
    assert f"rule {rule['id']}" in error["message"] and repr(value) in error["message"]
    assert "not allowed" in error["message"]


def test_keywords_match_whole_words_only():
    rules = [{"id": 1, "kind": "keyword", "value": "gun", "folded": fold_untrusted("gun"), "reason": ""}]
    product = {"title": "Begun again", "description": "", "brand": "", "category": "books"}
    assert restricted_match(product, rules) is None
    assert restricted_match({**product, "title": "Glue gun"}, rules) == rules[0]


async def test_a_rule_added_later_stops_buy_now(api, shop):
    await shop.go_live()
    await add_rule(api, shop, "keyword", "trail runner", "recalled")
    reply = await shop.buy()
    assert reply.status == 409 and reply.body["error"]["code"] == "order_refused"
    assert "recalled" in reply.body["error"]["message"]
    assert await shop.stock() == 10
