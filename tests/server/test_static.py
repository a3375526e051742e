"""Static files: content types, cache headers, ETags, and no way out of the root."""

import os
from pathlib import Path

import pytest

from shopcast.server._metrics import Registry
from shopcast.server._routing import Request, Response, Router
from shopcast.server._static import StaticFiles, content_type_for


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "static"
    (root / "player").mkdir(parents=True)
    (root / "index.html").write_text("<h1>home</h1>")
    (root / "player" / "index.html").write_text("<h1>player</h1>")
    (root / "app.mjs").write_text("export {};")
    (root / "codec.wasm").write_bytes(b"\0asm")
    (root / ".env").write_text("SECRET=1")
    (root / "data.unknownext").write_bytes(b"?")
    (tmp_path / "secret.txt").write_text("outside")
    (root / "inside-link.mjs").symlink_to(root / "app.mjs")
    (root / "outside-link.txt").symlink_to(tmp_path / "secret.txt")
    (root / "outside-dir").symlink_to(tmp_path, target_is_directory=True)
    return root


@pytest.fixture
def router(root: Path) -> Router:
    router = Router(metrics=Registry(), latency_buckets_s=(0.1,))
    router.add("GET", "/static/{path:path}", StaticFiles(root, max_age_s=120).handle, "static")
    return router


async def get(router: Router, path: str, headers=(), method: str = "GET") -> Response:
    return await router.handle(Request(method=method, path=path, query={}, headers=tuple(headers)))


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("a.html", "text/html; charset=utf-8"),
        ("a.js", "text/javascript; charset=utf-8"),
        ("a.MJS", "text/javascript; charset=utf-8"),
        ("a.css", "text/css; charset=utf-8"),
        ("a.json", "application/json"),
        ("a.png", "image/png"),
        ("a.svg", "image/svg+xml"),
        ("a.wasm", "application/wasm"),
        ("a.woff2", "font/woff2"),
        ("a", "application/octet-stream"),
    ],
)
def test_content_types(name: str, content_type: str) -> None:
    assert content_type_for(name) == content_type


async def test_serves_files_with_cache_headers(router: Router) -> None:
    response = await get(router, "/static/app.mjs")
    assert response.status == 200
    assert response.body == b"export {};"
    assert response.header("content-type") == "text/javascript; charset=utf-8"
    assert response.header("cache-control") == "public, max-age=120"
    assert response.header("x-content-type-options") == "nosniff"
    assert (await get(router, "/static/codec.wasm")).header("content-type") == "application/wasm"
    assert (await get(router, "/static/data.unknownext")).header("content-type") == "application/octet-stream"
    assert (await get(router, "/static/inside-link.mjs")).body == b"export {};"


async def test_directories_serve_their_index(router: Router) -> None:
    assert (await get(router, "/static/player")).body == b"<h1>player</h1>"
    assert (await get(router, "/static/player/")).body == b"<h1>player</h1>"
    assert (await get(router, "/static/")).body == b"<h1>home</h1>"
    assert (await get(router, "/static/player//")).status == 404


async def test_etag_and_304(router: Router, root: Path) -> None:
    first = await get(router, "/static/index.html")
    etag = first.header("etag")
    assert etag
    cached = await get(router, "/static/index.html", [("if-none-match", f'"other", W/{etag}')])
    assert cached.status == 304
    assert cached.body == b""
    assert cached.header("etag") == etag
    assert (await get(router, "/static/index.html", [("if-none-match", '"other"')])).status == 200
    (root / "index.html").write_text("<h1>changed, longer</h1>")
    changed = await get(router, "/static/index.html", [("if-none-match", etag)])
    assert changed.status == 200
    assert changed.header("etag") != etag


async def test_head(router: Router) -> None:
    response = await get(router, "/static/app.mjs", method="HEAD")
    assert response.status == 200
    assert response.body == b""
    assert response.header("content-length") == str(len(b"export {};"))


@pytest.mark.parametrize(
    "path",
    [
        "/static/../secret.txt",
        "/static/player/../../secret.txt",
        "/static/%2e%2e/secret.txt",
        "/static/%2E%2E%2Fsecret.txt",
        "/static/player%2F..%2F..%2Fsecret.txt",
        "/static/..%5csecret.txt",
        "/static//etc/passwd",
        "/static/%2Fetc%2Fpasswd",
        "/static/" + os.fspath(Path("/etc/passwd")).replace("/", "%2F"),
        "/static/outside-link.txt",
        "/static/outside-dir/secret.txt",
        "/static/.env",
        "/static/%2eenv",
        "/static/app.mjs%00.png",
        "/static/%ff",
        "/static/missing.js",
    ],
)
async def test_no_way_out_of_the_root(router: Router, path: str) -> None:
    response = await get(router, path)
    assert response.status == 404
    assert b"outside" not in response.body
    assert b"SECRET" not in response.body


async def test_missing_root_is_404(tmp_path: Path) -> None:
    static = StaticFiles(tmp_path / "absent", max_age_s=1)
    router = Router(metrics=Registry(), latency_buckets_s=(0.1,))
    router.add("GET", "/{path:path}", static.handle, "static")
    assert (await get(router, "/index.html")).status == 404
