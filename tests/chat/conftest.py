"""Helpers of the chat tests: HTTP GETs with a Bearer token."""

import ssl
import urllib.error
import urllib.request

import pytest
import trio


def _get(port: int, path: str, token: str | None) -> tuple[int, bytes]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(f"https://127.0.0.1:{port}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture
def http_get():
    """``await http_get(started, path, token)``: (status, body) of a GET to the server."""
    async def get(started, path: str, token: str | None) -> tuple[int, bytes]:
        return await trio.to_thread.run_sync(_get, started.port, path, token)

    return get
