"""Webhooks: signed with HMAC-SHA256 over ``timestamp.body``, retried with
backoff until the receiver takes them, and kept in an outbox that survives a
restart. The receiver is a real local HTTP server."""

import hashlib
import hmac
import http.server
import json
import threading

import pytest
import trio

from shopcast.server._app import run_server
from shopcast.server._config import load_config

SECRET = "test-webhook-secret"


class Receiver:
    """A local HTTP endpoint answering 500 to the first ``failures`` POSTs."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts: list[dict] = []
        self.accepted: list[dict] = []
        self.got_accepted = threading.Event()
        self.got_attempt = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                record = {"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
                receiver.attempts.append(record)
                receiver.got_attempt.set()
                if len(receiver.attempts) <= receiver.failures:
                    self.send_response(500)
                else:
                    receiver.accepted.append(record)
                    receiver.got_accepted.set()
                    self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def events(self, kind: str) -> list[dict]:
        return [json.loads(a["body"]) for a in self.accepted if a["headers"]["shopcast-event"] == kind]


def signature_ok(record: dict) -> bool:
    timestamp = record["headers"]["shopcast-timestamp"]
    expected = hmac.new(SECRET.encode(), timestamp.encode() + b"." + record["body"],
                        hashlib.sha256).hexdigest()
    return hmac.compare_digest(record["headers"]["shopcast-signature"], f"v1={expected}")


@pytest.fixture
def receiver_factory():
    made = []

    def make(failures: int) -> Receiver:
        made.append(Receiver(failures))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


async def wait_thread_event(event: threading.Event) -> None:
    assert await trio.to_thread.run_sync(event.wait, 20), "timed out waiting for the receiver"


def webhook_config(url: str) -> dict:
    return {"webhooks": {"urls": [url], "secret": SECRET, "retry_base_s": 0.05, "retry_max_s": 0.2}}


async def test_fails_twice_then_delivered_once_signed(server_factory, fast_config, make_client,
                                                      receiver_factory, room_fields):
    receiver = receiver_factory(failures=2)
    api = make_client(await server_factory({**fast_config, **webhook_config(receiver.url)}))
    host = await api.user("maria", "host")
    created = await api.call("POST", "/api/v1/rooms", room_fields(), token=host)
    await wait_thread_event(receiver.got_accepted)
    scheduled = [a for a in receiver.attempts if a["headers"]["shopcast-event"] == "room.scheduled"]
    assert len(scheduled) == 3
    assert len({a["headers"]["shopcast-event-id"] for a in scheduled}) == 1
    events = receiver.events("room.scheduled")
    assert len(events) == 1
    assert events[0]["data"]["room"]["id"] == created.body["room"]["id"]
    assert all(signature_ok(a) for a in scheduled)
    tampered = dict(scheduled[-1], body=scheduled[-1]["body"] + b" ")
    assert not signature_ok(tampered)
    # Delivered events leave the outbox.
    with trio.fail_after(10):
        await api.app.plugins.get("webhooks").wait_delivered(1)
    rows = await api.app.db.read(lambda c: c.execute("SELECT count(*) FROM webhook_outbox").fetchone()[0])
    assert rows == 0


async def test_restart_during_pending_webhook_still_delivers(tmp_path, fast_config, make_client,
                                                            receiver_factory, room_fields):
    receiver = receiver_factory(failures=10**6)
    data_dir = str(tmp_path / "data")
    layered = {**fast_config, **webhook_config(receiver.url),
               "server": {"host": "127.0.0.1", "port": 0, "drain_timeout_s": 2.0, "data_dir": data_dir}}
    config = load_config(environ={}, overrides=layered)

    async with trio.open_nursery() as nursery:
        shutdown = trio.Event()
        started = await nursery.start(lambda task_status: run_server(
            config, shutdown=shutdown, task_status=task_status))
        api = make_client(started)
        host = await api.user("maria", "host")
        room_id = (await api.call("POST", "/api/v1/rooms", room_fields(), token=host)).body["room"]["id"]
        await wait_thread_event(receiver.got_attempt)
        shutdown.set()
    assert receiver.accepted == []
    # The receiver recovers; a second server on the same data delivers.
    receiver.failures = 0
    async with trio.open_nursery() as nursery:
        shutdown = trio.Event()
        started = await nursery.start(lambda task_status: run_server(
            config, shutdown=shutdown, task_status=task_status))
        await wait_thread_event(receiver.got_accepted)
        with trio.fail_after(10):
            await started.app.plugins.get("webhooks").wait_delivered(1)
        shutdown.set()
    events = receiver.events("room.scheduled")
    assert len(events) == 1 and events[0]["data"]["room"]["id"] == room_id
    assert signature_ok(receiver.accepted[0])
