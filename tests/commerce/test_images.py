"""Product images uploaded to the server: kept in the data directory under
their SHA-256, served with immutable cache headers, an ETag and 304; bad
uploads refused with the field named, and nothing kept."""

import hashlib
import http.client
import json
import os
import ssl
import struct
import zlib

import trio


def png(width: int = 2, height: int = 2, colour: bytes = b"\xff\x00\x00") -> bytes:
    """A real PNG (8-bit RGB) made with zlib."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + colour * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


WEBP = b"RIFF\x1a\x00\x00\x00WEBPVP8L\x0d\x00\x00\x00\x2f\x00\x00\x00\x10\x07\x10\x11\x11\x88\x88\xfe\x07\x00"


def _send(port, method, path, body, headers):
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        connection.close()


async def send(api, method, path, body=None, *, token=None, content_type=None, headers=None):
    """(status, headers, body: JSON when it is) with any Content-Type."""
    headers = dict(headers or {})
    if token:
        headers["authorization"] = f"Bearer {token}"
    if content_type:
        headers["content-type"] = content_type
    status, reply_headers, data = await trio.to_thread.run_sync(
        _send, api.port, method, path, body, headers)
    if reply_headers.get("content-type", "").startswith("application/json"):
        data = json.loads(data)
    return status, reply_headers, data


def stored(api):
    root = api.app.data_dir / "product-images"
    return sorted(os.listdir(root)) if root.exists() else []


async def test_upload_serve_and_cache(api, shop):
    pid = shop.product["id"]
    image = png()
    status, _, body = await send(api, "POST", f"/api/v1/products/{pid}/images", image,
                                 token=shop.host, content_type="image/png")
    assert status == 201, body
    url = body["url"]
    assert url.startswith("/api/v1/product-images/") and url.endswith(".png")
    # The external URL is kept beside the served one.
    assert body["product"]["images"] == ["https://cdn.example/p/trail2.jpg", url]
    shown = await api.call("GET", f"/api/v1/products/{pid}")
    assert shown.body["images"][-1] == url
    # Kept in the data directory, named by its SHA-256.
    digest = hashlib.sha256(image).hexdigest()
    assert stored(api) == [digest + ".png"]
    assert (api.app.data_dir / "product-images" / (digest + ".png")).read_bytes() == image
    # Served to anyone with cache headers.
    status, headers, data = await send(api, "GET", url)
    assert status == 200 and data == image
    assert headers["content-type"] == "image/png"
    max_age = api.app.config.commerce.image_max_age_s
    assert headers["cache-control"] == f"public, max-age={max_age}, immutable"
    assert headers["etag"] == f'"{digest}"'
    status, headers, data = await send(api, "GET", url, headers={"if-none-match": f'"{digest}"'})
    assert status == 304 and data == b"" and headers["etag"] == f'"{digest}"'
    status, _, data = await send(api, "GET", url, headers={"if-none-match": '"other"'})
    assert status == 200 and data == image
    # The same image again is kept once and listed once; a WebP is added.
    status, _, body = await send(api, "POST", f"/api/v1/products/{pid}/images", image,
                                 token=shop.host, content_type="image/png")
    assert status == 201 and body["product"]["images"].count(url) == 1
    status, _, body = await send(api, "POST", f"/api/v1/products/{pid}/images", WEBP,
                                 token=shop.host, content_type="image/webp")
    assert status == 201 and body["url"].endswith(".webp")
    status, headers, _ = await send(api, "GET", body["url"])
    assert status == 200 and headers["content-type"] == "image/webp"
    assert len(stored(api)) == 2
    # Unknown or malformed names are 404.
    for name in ("0" * 64 + ".png", "../shopcast.db", digest + ".gif"):
        status, _, _ = await send(api, "GET", "/api/v1/product-images/" + name)
        assert status == 404, name


async def test_bad_uploads_are_refused_and_nothing_is_kept(make_shop):
    shop = await make_shop({"commerce": {"image_max_bytes": 2048, "images_max": 2}})
    api = shop.api
    path = f"/api/v1/products/{shop.product['id']}/images"
    cases = [
        ("a GIF", b"GIF89a" + b"\x00" * 40, "image/gif", 415, "Content-Type"),
        ("no content type", png(), None, 415, "Content-Type"),
        ("JSON", b'{"x": 1}', "application/json", 415, "Content-Type"),
        ("not an image", b"hello, this is text" * 4, "image/png", 415, "body"),
        ("a PNG said to be JPEG", png(), "image/jpeg", 415, "Content-Type"),
        ("too big", png(200, 200, b"\x01\x02\x03")[:8] + os.urandom(4000), "image/png", 413, "body"),
    ]
    for name, body, content_type, status, field in cases:
        got, _, reply = await send(api, "POST", path, body, token=shop.host, content_type=content_type)
        assert got == status and reply["error"]["field"] == field, (name, got, reply)
        assert "image/png" in reply["error"]["message"] or got != 415 or field == "body", reply
    # Someone else's product, a buyer, no token, no such product.
    other = await api.user("otherseller", "host")
    got, _, reply = await send(api, "POST", path, png(), token=other, content_type="image/png")
    assert got == 403 and reply["error"]["code"] == "not_your_product"
    got, _, reply = await send(api, "POST", path, png(), token=shop.buyer, content_type="image/png")
    assert got == 403
    got, _, reply = await send(api, "POST", path, png(), content_type="image/png")
    assert got == 401
    got, _, reply = await send(api, "POST", "/api/v1/products/pnothere/images", png(),
                               token=shop.host, content_type="image/png")
    assert got == 404
    assert stored(api) == []
    product = (await api.call("GET", f"/api/v1/products/{shop.product['id']}")).body
    assert product["images"] == ["https://cdn.example/p/trail2.jpg"]
    # An operator may add one; then the product is full (images_max = 2).
    got, _, reply = await send(api, "POST", path, png(), token=shop.operator, content_type="image/png")
    assert got == 201, reply
    got, _, reply = await send(api, "POST", path, png(1, 1), token=shop.host, content_type="image/png")
    assert got == 409 and reply["error"]["code"] == "images_full"
    assert (await api.call("GET", "/healthz")).status == 200


async def test_image_urls_in_product_bodies(api, shop, product_body):
    # An uploaded image's URL may be used in a product body; an unknown one may not.
    status, _, body = await send(api, "POST", f"/api/v1/products/{shop.product['id']}/images", png(),
                                 token=shop.host, content_type="image/png")
    assert status == 201
    url = body["url"]
    made = await api.call("POST", "/api/v1/products", product_body(images=[url]), token=shop.host)
    assert made.status == 201 and made.body["images"] == [url]
    missing = "/api/v1/product-images/" + "a" * 64 + ".png"
    for bad in (missing, "javascript:alert(1)", "/etc/passwd"):
        reply = await api.call("POST", "/api/v1/products", product_body(images=[bad]), token=shop.host)
        assert reply.status == 400 and reply.error_field == "images[0]", (bad, reply.body)
