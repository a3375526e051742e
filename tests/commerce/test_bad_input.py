"""Bad input for every field of every commerce request body: 400 with a JSON
error naming the field, and the server serves on. A field added to a commerce
schema without a case here fails the coverage check (tests/rooms/test_bad_input.py
covers the other tags)."""

import pytest
from shopcast.server._config import ConfigError, load_config

SKU = {"name": "EU 42", "price": 5999, "currency": "EUR", "stock": 10}
BAD = {
    ("products_create", "title"): "",
    ("products_create", "description"): "x" * 6000,
    ("products_create", "category"): 7,
    ("products_create", "brand"): "b" * 101,
    ("products_create", "images"): ["javascript:alert(1)"],
    ("products_create", "external_ref"): "",
    ("products_create", "skus"): [],
    ("restricted_goods_add", "kind"): "brand",
    ("restricted_goods_add", "value"): "",
    ("restricted_goods_add", "reason"): ["not", "text"],
    ("coupons_create", "code"): "no spaces allowed",
    ("coupons_create", "kind"): "bogo",
    ("coupons_create", "value"): 0,
    ("coupons_create", "currency"): "DOGE",
    ("coupons_create", "max_uses"): 1.5,
    ("orders_buy_now", "sku_id"): 12,
    ("orders_buy_now", "quantity"): 0,
    ("orders_buy_now", "coupon_code"): "x",
    ("orders_buy_now", "pin_id"): "",
    ("pins_create", "kind"): "banner",
    ("pins_create", "product_id"): None,
    ("pins_create", "media_us"): -1,
    ("pins_create", "flash_sale"): "soon",
    ("pins_create", "coupon_code"): "no spaces",
    ("orders_ship", "tracking_number"): "",
    ("orders_ship", "carrier"): "c" * 65,
    ("orders_complain", "text"): "",
    ("products_edit", "title"): "",
    ("products_edit", "description"): 5,
    ("products_edit", "category"): "c" * 101,
    ("products_edit", "brand"): None,
    ("products_edit", "images"): ["ftp://cdn.example/x.png"],
    ("products_edit", "external_ref"): "",
    ("products_edit", "price"): 1.5,
    ("products_sku_edit", "name"): "",
    ("products_sku_edit", "price"): -1,
    ("products_sku_edit", "stock"): "many",
    ("products_sku_edit", "per_buyer_limit"): 0,
    ("complaints_resolve", "resolution"): "",
}
# Fields inside a variant, named with their path.
SKU_BAD = [
    ({**SKU, "price": 59.99}, "skus[0].price"),
    ({**SKU, "price": -1}, "skus[0].price"),
    ({**SKU, "price": "5999"}, "skus[0].price"),
    ({**SKU, "currency": "eur"}, "skus[0].currency"),
    ({**SKU, "stock": -3}, "skus[0].stock"),
    ({**SKU, "name": ""}, "skus[0].name"),
    ({**SKU, "per_buyer_limit": 0}, "skus[0].per_buyer_limit"),
    ({**SKU, "colour": "red"}, "skus[0].colour"),
    ({k: v for k, v in SKU.items() if k != "stock"}, "skus[0].stock"),
]


async def test_every_commerce_field_has_a_bad_input_case(api):
    doc = (await api.call("GET", "/api/v1/openapi.json")).body
    fields = set()
    for methods in doc["paths"].values():
        for operation in methods.values():
            if "requestBody" in operation and "commerce" in operation["tags"]:
                schema = operation["requestBody"]["content"]["application/json"]["schema"]
                fields |= {(operation["operationId"], f) for f in schema.get("properties", {})}
    assert fields == set(BAD)


def request_for(op, shop, product_body):
    return {
        "products_create": ("POST", "/api/v1/products", shop.host, product_body()),
        "restricted_goods_add": ("POST", "/api/v1/restricted-goods", shop.operator,
                                 {"kind": "keyword", "value": "ivory"}),
        "coupons_create": ("POST", f"/api/v1/rooms/{shop.room_id}/coupons", shop.host,
                           {"code": "TEN", "kind": "percent", "value": 10, "max_uses": 5}),
        "orders_buy_now": ("POST", f"/api/v1/rooms/{shop.room_id}/orders", shop.buyer,
                           {"sku_id": shop.sku_id, "quantity": 1}),
        "pins_create": ("POST", f"/api/v1/rooms/{shop.room_id}/pins", shop.host,
                        {"kind": "product", "product_id": shop.product["id"]}),
        "orders_ship": ("POST", "/api/v1/orders/onothere/ship", shop.host,
                        {"tracking_number": "1Z999", "carrier": "UPS"}),
        "orders_complain": ("POST", "/api/v1/orders/onothere/complaints", shop.buyer,
                            {"text": "never arrived"}),
        "products_edit": ("PATCH", f"/api/v1/products/{shop.product['id']}", shop.host,
                          {"title": "Edited"}),
        "products_sku_edit": ("PATCH", f"/api/v1/products/{shop.product['id']}/skus/{shop.sku_id}",
                              shop.host, {"stock": 5}),
        "complaints_resolve": ("POST", "/api/v1/complaints/cnothere/resolve", shop.operator,
                               {"resolution": "refunded"}),
    }[op]


@pytest.mark.parametrize("op,field", sorted(BAD))
async def test_bad_field_is_named(api, shop, product_body, op, field):
    method, path, token, body = request_for(op, shop, product_body)
    reply = await api.call(method, path, {**body, field: BAD[(op, field)]}, token=token)
    assert reply.status == 400, reply.body
    assert reply.error_field == field or reply.error_field.startswith(f"{field}["), reply.body
    assert (await api.call("GET", "/healthz")).status == 200


async def test_bad_variant_fields_are_named_with_their_path(api, shop, product_body):
    for sku, field in SKU_BAD:
        reply = await api.call("POST", "/api/v1/products", product_body(skus=[sku]), token=shop.host)
        assert reply.status == 400 and reply.error_field == field, (field, reply.body)
    rows = await api.app.db.read(lambda c: c.execute("SELECT count(*) FROM products").fetchone()[0])
    assert rows == 1  # only the shop's own product


async def test_missing_fields_and_malformed_bodies(api, shop, product_body):
    body = product_body()
    del body["skus"]
    reply = await api.call("POST", "/api/v1/products", body, token=shop.host)
    assert reply.status == 400 and reply.error_field == "skus"
    reply = await api.call("POST", f"/api/v1/rooms/{shop.room_id}/orders", raw=b"{oops",
                           token=shop.buyer)
    assert reply.status == 400 and reply.body["error"]["code"] == "malformed_json"
    reply = await api.call("POST", f"/api/v1/rooms/{shop.room_id}/orders", {"quantity": 1},
                           token=shop.buyer)
    assert reply.status == 400 and reply.error_field == "sku_id"


@pytest.mark.parametrize("key,value", [
    ("hold_expiry_s", 0), ("pins_max", 0), ("coupon_percent_max", 101), ("currencies", ["euro"]),
    ("currencies", []), ("per_buyer_limit_default", "5"), ("pins_state_interval_s", 0),
    ("flash_countdown_min_s", 400),
])
def test_bad_config_names_the_key(key, value):
    with pytest.raises(ConfigError) as error:
        load_config(environ={}, overrides={"commerce": {key: value}})
    assert error.value.key.startswith("commerce."), error.value


@pytest.mark.parametrize("key,value", [
    ("provider", "paypal"), ("webhook_tolerance_s", 0), ("webhook_url", "ftp://x"),
    ("max_attempts", 0), ("test_delay_s", -1), ("senders", 0),
])
def test_bad_payments_config_names_the_key(key, value):
    with pytest.raises(ConfigError) as error:
        load_config(environ={}, overrides={"payments": {key: value}})
    assert error.value.key.startswith("payments."), error.value
