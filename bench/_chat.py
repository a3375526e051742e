"""Chat load: deliveries per second at 1000 subscribers.

A burst of messages from many accounts goes through the chat engine
(validation, rate limits, batching per tick) and out on a relay track to
1000 in-process subscribers, as the server's fan-out does before QUIC.
Measured: message deliveries (messages x subscribers) per second of this
process's CPU, and the processing delay from a message's submission to its
arrival at the subscribers, p50 and p99 (a message also waits up to one
tick for its batch). QUIC's own per-packet cost is measured
separately by the fan-out suite.
"""

from __future__ import annotations

import time
from typing import TextIO

import msgpack
import trio

from shopcast.bench._record import Record
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


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else -1.0


def run(quick: bool, progress: TextIO) -> list[Record]:
    messages = 2000 if quick else 20000
    print(f"bench chat: {messages} messages to {SUBSCRIBERS} subscribers", file=progress)
    rate, _, delays = trio.run(_measure, messages, 50)
    return [
        Record("chat", f"chat/{SUBSCRIBERS}-subs/deliveries-per-cpu-s", rate, "deliveries/s"),
        # Processing only: a message also waits for the next tick ([chat]
        # tick_ms, 50 ms by default) and then the network.
        Record("chat", f"chat/{SUBSCRIBERS}-subs/processing-delay-p50", _percentile(delays, 0.5), "ms"),
        Record("chat", f"chat/{SUBSCRIBERS}-subs/processing-delay-p99", _percentile(delays, 0.99), "ms"),
    ]
