"""Chat load: deliveries per second at 1000 subscribers, in process and over
the network.

In process: a burst of messages from many accounts goes through the chat engine
(validation, rate limits, batching per tick) and out on a relay track to
1000 in-process subscribers, as the server's fan-out does before QUIC.
Measured: message deliveries (messages x subscribers) per second of this
process's CPU, and the processing delay from a message's submission to its
arrival at the subscribers, p50 and p99 (a message also waits up to one
tick for its batch). QUIC's own per-packet cost is measured
separately by the fan-out suite.

Over the network: the server in its own process (pinned to one core where the
machine allows), 1000 subscribers of the room's chat track and a few chat
senders as real QUIC clients in another. Measured: deliveries (messages x
subscribers) per second of wall time, the server's CPU per delivery, and the
send-to-receipt delay p50/p99, which includes the wait for the tick. The
per-account rate limit is raised for the run (a handful of senders stand for
a crowd), through the same environment overrides an operator would use.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TextIO

import msgpack
import trio

from shopcast.bench._record import Record, percentile
from shopcast.plugins._chat_engine import Author, ChatLimits, ChatRoom, decode_request_untrusted, encode_batch
from shopcast.server._relay import Relay

__all__ = ["run"]

SUBSCRIBERS = 1000


class _Sink:
    __slots__ = ("received",)

    def __init__(self) -> None:
        self.received = 0

    def group_started(self, track, group) -> None:
        pass

    def frame(self, track, group, payload) -> None:
        self.received += 1

    def group_ended(self, track, group) -> None:
        pass

    def track_ended(self, track) -> None:
        pass


async def _measure(messages: int, per_tick: int) -> tuple[float, float, list[float]]:
    relay = Relay()
    track = relay.publish("bench").track("chat")
    sinks = [_Sink() for _ in range(SUBSCRIBERS)]
    for sink in sinks:
        track.subscribe(sink)
    limits = ChatLimits(bucket_capacity=1_000_000, tick_s=0.0)
    room = ChatRoom("bench", limits)
    authors = [Author(f"u{i}", f"User {i}") for i in range(200)]
    requests = [msgpack.packb({"type": "message", "text": f"message {i} 🎉 great price!"})
                for i in range(messages)]
    delays_ms: list[float] = []
    cpu_start = time.process_time()
    now = 0.0
    for start in range(0, messages, per_tick):
        submitted = time.perf_counter()
        for i in range(start, min(start + per_tick, messages)):
            room.submit(authors[i % len(authors)], decode_request_untrusted(requests[i], limits),
                        now_s=now, media_timestamp_us=0)
        now += 0.05
        batch = room.tick(now_s=now)
        track.write_frame(encode_batch(batch), keyframe=True)
        # Every subscriber has the batch when write_frame returns.
        delays_ms.extend([(time.perf_counter() - submitted) * 1000] * len(batch.messages))
    cpu_s = time.process_time() - cpu_start
    assert all(sink.received == sinks[0].received for sink in sinks)
    deliveries = messages * SUBSCRIBERS
    return deliveries / cpu_s, cpu_s, delays_ms


def _network_run(subscribers: int, senders: int, rate: float, seconds: float, tick_ms: int | None,
                 config: str | None) -> dict:
    from shopcast.bench._fanout import _drive_clients, _start_shopcast

    env = {"SHOPCAST_CHAT__BUCKET_CAPACITY": "10000", "SHOPCAST_CHAT__BUCKET_REFILL_PER_S": "1000"}
    if tick_ms is not None:
        env["SHOPCAST_CHAT__TICK_MS"] = str(tick_ms)
    with tempfile.TemporaryDirectory(prefix="shopcast-bench-chat-") as tmp:
        data_dir = Path(tmp) / "data"
        server, port, sha = _start_shopcast(data_dir, config, env)
        try:
            return _drive_clients(
                server, "shopcast.bench._chat_clients",
                [f"https://127.0.0.1:{port}", sha, str(data_dir), str(subscribers), str(senders),
                 str(rate), str(seconds)], seconds)
        finally:
            server.terminate()
            server.wait(timeout=30)
            server.stdout.close()


def _network(quick: bool, progress: TextIO, config: str | None) -> list[Record]:
    subscribers = 50 if quick else SUBSCRIBERS
    # (senders, messages/s, seconds, tick in ms or None for the configuration's own, label).
    # The tick is the operator's knob: each tick costs one packet per subscriber. A busy
    # room saturates the one client process holding 1000 QUIC connections, whose backlog
    # then is most of the delay; a light room (2 messages/s) shows the delay a viewer
    # sees when the receiving side keeps up.
    runs: tuple[tuple[int, float, float, int | None, str], ...] = (
        ((4, 40.0, 2.0, None, ""),) if quick else
        ((20, 100.0, 10.0, None, ""), (20, 100.0, 10.0, 250, "/tick-250ms"),
         (2, 2.0, 10.0, None, "/light-2-messages-per-s")))
    records = []
    for senders, rate, seconds, tick_ms, suffix in runs:
        label = "configured tick" if tick_ms is None else f"tick {tick_ms} ms"
        print(f"bench chat: {rate:g} messages/s to {subscribers} QUIC subscribers for {seconds:g} s, "
              f"{label}", file=progress)
        result = _network_run(subscribers, senders, rate, seconds, tick_ms, config)
        tag = f"chat/network-{subscribers}-subs{suffix}"
        expected = result["sent"] * subscribers
        records += [
            Record("chat", f"{tag}/deliveries-per-s", result["deliveries"] / result["wall_s"],
                   "deliveries/s"),
            Record("chat", f"{tag}/server-cpu-per-delivery",
                   result["cpu_s"] * 1e6 / max(1, result["deliveries"]), "us/delivery"),
            Record("chat", f"{tag}/server-cpu-share", 100 * result["cpu_s"] / result["wall_s"], "% of a core"),
            Record("chat", f"{tag}/clients-cpu-share", 100 * result["client_cpu_share"], "% of a core"),
            Record("chat", f"{tag}/lost", 100 * (1 - result["deliveries"] / expected) if expected else 0.0,
                   "%"),
            Record("chat", f"{tag}/delay-p50", result["delay_p50_ms"], "ms"),
            Record("chat", f"{tag}/delay-p99", result["delay_p99_ms"], "ms"),
        ]
    return records


def run(quick: bool, progress: TextIO, config: str | None = None) -> list[Record]:
    messages = 2000 if quick else 20000
    print(f"bench chat: {messages} messages to {SUBSCRIBERS} in-process subscribers", file=progress)
    rate, _, delays = trio.run(_measure, messages, 50)
    return _network(quick, progress, config) + [
        Record("chat", f"chat/{SUBSCRIBERS}-subs/deliveries-per-cpu-s", rate, "deliveries/s"),
        # Processing only: a message also waits for the next tick ([chat]
        # tick_ms, 50 ms by default) and then the network.
        Record("chat", f"chat/{SUBSCRIBERS}-subs/processing-delay-p50", percentile(delays, 0.5), "ms"),
        Record("chat", f"chat/{SUBSCRIBERS}-subs/processing-delay-p99", percentile(delays, 0.99), "ms"),
    ]
