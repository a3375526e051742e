"""The other side of the chat network benchmark: a publisher (so the room is
live), chat senders on WebTransport chat sessions and N subscribers of the
room's ``chat`` track, all real QUIC clients in this process.

Each message's text carries its send time (CLOCK_MONOTONIC, shared by every
process on the machine), so each subscriber measures send-to-receipt delay
through validation, the tick's batching, the relay and QUIC. Protocol with the
orchestrator on stdin/stdout, as in _fanout_clients: "READY" once everyone is
connected, wait for "GO", send, "DONE", then one JSON line of results.

Run: python -m shopcast.bench._chat_clients BASE_URL SHA256 DATA_DIR SUBSCRIBERS SENDERS RATE SECONDS
(RATE in messages per second over all senders).
"""

from __future__ import annotations

import json
from pathlib import Path
import sys
import time

ROOM = "bench"
# Connections opened at once while setting up, so handshakes do not time out.
CONNECT_CONCURRENCY = 32


def _now_us() -> int:
    return time.monotonic_ns() // 1000


async def _run(base_url: str, sha: str, data_dir: str, n: int, senders: int, rate: float,
               seconds: float) -> dict:
    import msgpack
    import trio

    from shopcast.client import connect, connect_chat
    from shopcast.server._tokens import TokenAuthority, load_or_create_api_key
    from shopcast.server.moq import CATALOG_TRACK, Catalog, VideoRendition, encode_catalog

    key, _ = load_or_create_api_key(Path(data_dir))
    authority = TokenAuthority([key])

    def token(subject: str, role: str) -> str:
        return authority.mint(subject=subject, role=role, room=ROOM, ttl_s=3600, now=time.time())

    received = [0] * n
    delays: list[int] = []
    ready = trio.Semaphore(0)
    gate = trio.Semaphore(CONNECT_CONCURRENCY)
    url = f"{base_url}/moq"

    async def subscriber(index: int) -> None:
        async with gate:
            client_cm = connect(url, certificate_sha256=sha)
            client = await client_cm.__aenter__()
        try:
            for _ in range(200):
                track = await client.subscribe(ROOM, "chat")
                await track.accepted.wait()
                if not track.ended.is_set():
                    break
                await trio.sleep(0.05)  # the room is not live yet: ask again
            ready.release()
            async for frame in track.frames:
                arrival = _now_us()
                for message in msgpack.unpackb(frame.payload)["messages"]:
                    delays.append(arrival - int(message["text"].split()[1]))
                    received[index] += 1
        finally:
            await client_cm.__aexit__(None, None, None)

    sent = 0

    async def sender(index: int, go: trio.Event, done: trio.Event) -> None:
        nonlocal sent
        async with gate:
            chat_cm = connect_chat(base_url, ROOM, token(f"sender-{index}", "viewer"),
                                   certificate_sha256=sha)
            chat = await chat_cm.__aenter__()
        try:
            ready.release()
            await go.wait()
            interval = senders / rate
            start = trio.current_time() + index * interval / senders
            count = int(seconds * rate / senders)
            for i in range(count):
                await trio.sleep_until(start + i * interval)
                reply = await chat.request(type="message", text=f"{index}:{i} {_now_us()} 🎉 deal!")
                if reply.get("type") != "ok":
                    raise RuntimeError(f"chat refused a message: {reply}")
                sent += 1
        finally:
            done.set()
            await chat_cm.__aexit__(None, None, None)

    async with connect(url, token=token("bench-host", "host"), certificate_sha256=sha) as publisher:
        broadcast = publisher.publish(ROOM)
        broadcast.track(CATALOG_TRACK).write_frame(
            encode_catalog(Catalog(video=(VideoRendition(track="video", codec="avc1.42c01f"),))),
            keyframe=True)
        async with trio.open_nursery() as nursery:
            go = trio.Event()
            dones = [trio.Event() for _ in range(senders)]
            for index in range(n):
                nursery.start_soon(subscriber, index)
            for index in range(senders):
                nursery.start_soon(sender, index, go, dones[index])
            for _ in range(n + senders):
                await ready.acquire()
            print("READY", flush=True)
            await trio.to_thread.run_sync(sys.stdin.readline)
            cpu_start, wall_start = time.process_time(), time.monotonic()
            go.set()
            for done in dones:
                await done.wait()
            with trio.move_on_after(10):
                while sum(received) < sent * n:
                    await trio.sleep(0.05)
            print("DONE", flush=True)
            # Whether this process kept up: a client CPU share near 1 means the delays
            # measured are partly the subscribers' own backlog.
            client_cpu_share = (time.process_time() - cpu_start) / (time.monotonic() - wall_start)
            nursery.cancel_scope.cancel()
    delays.sort()

    def pct(p: float) -> float:
        return delays[min(len(delays) - 1, int(p * len(delays)))] / 1000 if delays else -1.0

    return {"sent": sent, "subscribers": n, "deliveries": sum(received),
            "min_received": min(received) if received else 0,
            "delay_p50_ms": pct(0.50), "delay_p99_ms": pct(0.99), "client_cpu_share": client_cpu_share}


def main(argv: list[str]) -> int:
    import trio
    base_url, sha, data_dir, n, senders, rate, seconds = argv
    result = trio.run(_run, base_url, sha, data_dir, int(n), int(senders), float(rate), float(seconds))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
