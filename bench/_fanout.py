"""The fan-out suite: what one delivered 1200-byte packet costs the server.

shopcast runs in its own process (pinned to one core where the machine
allows), the publisher and N subscribers as real QUIC clients in another.
Measured from the server's own resource use while it relays N subscribers at
a given bitrate: CPU microseconds per delivered 1200-byte packet, delivered
packets per second, loss, publish-to-receipt delay p50/p99, memory per
subscriber. In the same run: the machine's floor (plain non-blocking UDP
sendto of as many 1200-byte packets, and with GSO where the kernel has it)
and a baseline relay on stock aioquic + asyncio, under the same load.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

from shopcast.bench._record import Record

__all__ = ["run"]

PACKET_BYTES = 1200
# Linux's UDP generic segmentation offload: one sendmsg, many datagrams.
SOL_UDP = 17
UDP_SEGMENT = 103
GSO_SEGMENTS = 32
MBIT = 1_000_000


def _pin(index: int):
    """A preexec_fn that pins the child to the ``index``-th core this process may use, when
    there is one (a container's CPU set need not start at core 0)."""
    def pin() -> None:
        if hasattr(os, "sched_getaffinity"):
            cores = sorted(os.sched_getaffinity(0))
            if index < len(cores):
                os.sched_setaffinity(0, {cores[index]})
    return pin


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def _rss_bytes(pid: int) -> int:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) * 1024 if match else 0


def _read_until(stream, pattern: str, deadline_s: float) -> re.Match:
    end = time.monotonic() + deadline_s
    lines = []
    while time.monotonic() < end:
        line = stream.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    raise RuntimeError(f"expected {pattern!r}; got:\n{''.join(lines)}")


def _start_shopcast(data_dir: Path, config: str | None,
                    env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int, str]:
    # RTMP on a port of its own (0), so a server already on 1935 does not stop the run.
    env = {**os.environ, "SHOPCAST_DEMO__ENABLED": "false", "SHOPCAST_LOG__LEVEL": "warning",
           "SHOPCAST_RTMP__PORT": "0", **(env or {})}
    command = [sys.executable, "-m", "shopcast.server._cli", "serve", "--host", "127.0.0.1",
               "--port", "0", "--data-dir", str(data_dir)]
    if config:
        command += ["--config", config]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True, env=env, preexec_fn=_pin(0))
    port = int(_read_until(process.stdout, r"https://localhost:(\d+)/", 120).group(1))
    sha = _read_until(process.stdout, r"sha256 ([0-9a-f]{64})", 10).group(1)
    return process, port, sha


def _host_token(data_dir: Path) -> str:
    from shopcast.server._tokens import TokenAuthority, load_or_create_api_key
    key, _ = load_or_create_api_key(data_dir)
    return TokenAuthority([key]).mint(subject="bench", role="host", room="bench", ttl_s=3600,
                                      now=time.time())


def _drive_clients(server: subprocess.Popen, module: str, client_args: list[str],
                   seconds: float) -> dict:
    """Run the clients process ``module`` against ``server``; measure the server's CPU and
    memory between GO and DONE; return the clients' JSON result with those added."""
    clients = subprocess.Popen([sys.executable, "-m", module, *client_args],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               preexec_fn=_pin(1))
    try:
        rss_before = _rss_bytes(server.pid)
        _read_until(clients.stdout, r"^READY", 180)
        rss_after = _rss_bytes(server.pid)
        cpu_start, wall_start = _cpu_seconds(server.pid), time.monotonic()
        clients.stdin.write("GO\n")
        clients.stdin.flush()
        _read_until(clients.stdout, r"^DONE", seconds + 60)
        cpu_s, wall_s = _cpu_seconds(server.pid) - cpu_start, time.monotonic() - wall_start
        result = json.loads(_read_until(clients.stdout, r"^\{.*\}$", 60).group(0))
    finally:
        clients.kill()
        clients.wait()
        clients.stdin.close()
        clients.stdout.close()
    return {**result, "cpu_s": cpu_s, "wall_s": wall_s,
            "rss_grown": max(0, rss_after - rss_before)}


def _drive(server: subprocess.Popen, client_args: list[str], seconds: float) -> dict:
    """Run the fan-out clients against ``server``; the cost per delivered packet."""
    result = _drive_clients(server, "shopcast.bench._fanout_clients", client_args, seconds)
    cpu_s, wall_s = result["cpu_s"], result["wall_s"]
    delivered_bytes = result["frames_received"] * result["frame_bytes"]
    packets = max(1, delivered_bytes // PACKET_BYTES)
    expected = result["frames_sent"] * result["subscribers"]
    return {**result, "packets": packets,
            "us_per_packet": cpu_s * 1e6 / packets, "packets_per_s": packets / wall_s,
            "loss": 1 - result["frames_received"] / expected if expected else 0.0,
            "rss_per_subscriber": result["rss_grown"] / result["subscribers"]}


def _floor(packets: int) -> dict[str, float]:
    """CPU microseconds per 1200-byte packet for plain sendto, and with GSO."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setblocking(False)
    address = sink.getsockname()
    payload = bytes(PACKET_BYTES)
    results = {}
    start = time.thread_time()
    for _ in range(packets):
        try:
            sender.sendto(payload, address)
        except BlockingIOError:
            pass  # the floor counts the send call's cost, delivered or not
    results["sendto"] = (time.thread_time() - start) * 1e6 / packets
    batch = payload * GSO_SEGMENTS
    control = [(SOL_UDP, UDP_SEGMENT, struct.pack("H", PACKET_BYTES))]
    try:
        sender.sendmsg([batch], control, 0, address)
        start = time.thread_time()
        for _ in range(max(1, packets // GSO_SEGMENTS)):
            try:
                sender.sendmsg([batch], control, 0, address)
            except BlockingIOError:
                pass
        results["gso"] = (time.thread_time() - start) * 1e6 / (max(1, packets // GSO_SEGMENTS) * GSO_SEGMENTS)
    except OSError:
        pass  # no UDP GSO in this kernel
    sender.close()
    sink.close()
    return results


def run(quick: bool, progress: TextIO, config: str | None = None,
        subscriber_counts: tuple[int, ...] | None = None, bitrate_bps: int = 2 * MBIT) -> list[Record]:
    """Run the fan-out suite; return its records."""
    counts = subscriber_counts or ((10,) if quick else (10, 50))
    seconds = 3.0 if quick else 10.0
    records: list[Record] = []
    with tempfile.TemporaryDirectory(prefix="shopcast-bench-") as tmp:
        tmp_path = Path(tmp)
        for n in counts:
            print(f"bench fanout: shopcast, {n} subscribers at {bitrate_bps / MBIT:g} Mbit/s", file=progress)
            server, port, sha = _start_shopcast(tmp_path / f"data-{n}", config)
            try:
                token = _host_token(tmp_path / f"data-{n}")
                ours = _drive(server, ["shopcast", f"https://127.0.0.1:{port}/moq", sha, token, str(n),
                                       str(bitrate_bps), str(seconds)], seconds)
            finally:
                server.terminate()
                server.wait(timeout=30)
                server.stdout.close()

            print(f"bench fanout: baseline relay (aioquic + asyncio), {n} subscribers", file=progress)
            cert_dir = tmp_path / f"data-{n}" / "tls"
            relay = subprocess.Popen(
                [sys.executable, "-m", "shopcast.bench._baseline_relay",
                 str(cert_dir / "self-signed.pem"), str(cert_dir / "self-signed.key")],
                stdout=subprocess.PIPE, text=True, preexec_fn=_pin(0))
            try:
                relay_port = _read_until(relay.stdout, r"PORT (\d+)", 60).group(1)
                baseline = _drive(relay, ["baseline", relay_port, "-", "-", str(n), str(bitrate_bps),
                                          str(seconds)], seconds)
            finally:
                relay.kill()
                relay.wait()
                relay.stdout.close()

            print("bench fanout: floor (UDP sendto, GSO)", file=progress)
            records += fanout_records(n, ours, baseline, _floor(ours["packets"]), bitrate_bps)
    return records


def fanout_records(n: int, ours: dict, baseline: dict, floor: dict[str, float],
                   bitrate_bps: int) -> list[Record]:
    """The figures of one fan-out run with ``n`` subscribers: shopcast's and the baseline's
    cost and delivery, the floor, and the cost ratios and viewers per core that follow."""
    records: list[Record] = []
    tag = f"{n}-subs"
    name = f"fanout/{tag}/shopcast/cpu-per-packet"
    records += [
        Record("fanout", name, ours["us_per_packet"], "us/packet"),
        Record("fanout", f"fanout/{tag}/baseline/cpu-per-packet", baseline["us_per_packet"],
               "us/packet"),
        Record("fanout", f"fanout/{tag}/floor/sendto", floor["sendto"], "us/packet"),
        # Ratios are cost ratios: how many times the compared figure's cost.
        Record("fanout", f"fanout/{tag}/shopcast-vs-floor", ours["us_per_packet"] / floor["sendto"],
               "x cost", against=f"fanout/{tag}/floor/sendto",
               ratio=ours["us_per_packet"] / floor["sendto"]),
        Record("fanout", f"fanout/{tag}/shopcast-vs-baseline",
               ours["us_per_packet"] / baseline["us_per_packet"], "x cost",
               against=f"fanout/{tag}/baseline/cpu-per-packet",
               ratio=ours["us_per_packet"] / baseline["us_per_packet"]),
    ]
    if "gso" in floor:
        records.append(Record("fanout", f"fanout/{tag}/floor/gso", floor["gso"], "us/packet"))
        records.append(Record("fanout", f"fanout/{tag}/shopcast-vs-gso",
                              ours["us_per_packet"] / floor["gso"], "x cost",
                              against=f"fanout/{tag}/floor/gso",
                              ratio=ours["us_per_packet"] / floor["gso"]))
    for label, result in (("shopcast", ours), ("baseline", baseline)):
        records += [
            Record("fanout", f"fanout/{tag}/{label}/packets-per-s", result["packets_per_s"], "packets/s"),
            Record("fanout", f"fanout/{tag}/{label}/loss", result["loss"] * 100, "%"),
            Record("fanout", f"fanout/{tag}/{label}/delay-p50", result["delay_p50_ms"], "ms"),
            Record("fanout", f"fanout/{tag}/{label}/delay-p99", result["delay_p99_ms"], "ms"),
            Record("fanout", f"fanout/{tag}/{label}/memory-per-subscriber",
                   result["rss_per_subscriber"] / 1024, "KiB"),
        ]
    # A viewer at the run's bitrate needs this many 1200-byte packets a
    # second; one core's worth of CPU at the measured cost serves this many.
    packets_per_viewer = bitrate_bps / 8 / PACKET_BYTES
    for label, result in (("shopcast", ours), ("baseline", baseline)):
        records.append(Record("fanout", f"fanout/{tag}/{label}/viewers-per-core-at-{bitrate_bps / MBIT:g}mbps",
                              1e6 / (result["us_per_packet"] * packets_per_viewer), "viewers"))
    return records
