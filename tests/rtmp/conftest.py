"""Helpers of the RTMP ingest tests: push URLs, ffmpeg publishers, a Python
RTMP publisher (RtmpConnection in the client role) and MoQ viewers."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from shopcast.codecs import FlvTag, TagType
from shopcast.server._hang_mux import load_flv_clip
from shopcast.server._rtmp_protocol import (
    CommandReceived,
    MessageType,
    Role,
    RtmpConnection,
)

REPO = Path(__file__).resolve().parents[2]
DEMO_CLIP = REPO / "server" / "media" / "demo.flv"
WAIT_S = 20.0
"""Upper bound on any wait in these tests (a hang fails instead of blocking)."""


async def push_url(started, room: str) -> str:
    """The room's push URL on the test server's loopback RTMP port."""
    key = await trio.to_thread.run_sync(started.app.stream_keys.get_or_create, room)
    return f"rtmp://127.0.0.1:{started.app.rtmp_port}/live/{key.key}"


async def wait_until(predicate, timeout_s: float = WAIT_S, what: str = "condition") -> None:
    """Poll ``predicate`` until true, failing after ``timeout_s``."""
    with trio.move_on_after(timeout_s):
        while not predicate():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


async def wait_for_tracks(started, room: str, names=("video", "audio")) -> None:
    def ready() -> bool:
        broadcast = started.app.relay.broadcasts.get(room)
        return broadcast is not None and all(n in broadcast.tracks for n in names)
    await wait_until(ready, what=f"room {room} tracks {names}")


def ffmpeg_command(ffmpeg: str, url: str, *, seconds: float, video: str = "testsrc2",
                   audio: str = "sine", video_args: tuple[str, ...] = (), audio_args: tuple[str, ...] = (),
                   output: tuple[str, ...] | None = None, realtime: bool = True) -> list[str]:
    """``ffmpeg -re -f lavfi -i testsrc2 -f lavfi -i sine -c:v libx264 -c:a aac -f flv URL``
    with extra arguments and a duration."""
    command = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error"]
    if realtime:
        command.append("-re")
    command += ["-f", "lavfi", "-i", video]
    if realtime:
        command.append("-re")
    command += ["-f", "lavfi", "-i", audio, "-t", str(seconds),
                "-c:v", "libx264", *video_args, "-c:a", "aac", *audio_args]
    command += list(output) if output is not None else ["-f", "flv", url]
    return command


@dataclass
class FfmpegRun:
    returncode: int | None = None
    stderr: str = ""


async def run_ffmpeg(command: list[str], result: FfmpegRun, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run ffmpeg to the end (killed if cancelled), recording its exit and stderr."""
    task_status.started()
    completed = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    result.returncode = completed.returncode
    result.stderr = completed.stderr.decode(errors="replace")


def run_ffmpeg_sync(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@dataclass
class RawPublisher:
    """A Python RTMP publisher over TCP, for tests that need control over
    every byte (and for a healthy publisher beside a misbehaving one)."""

    stream: trio.SocketStream
    rtmp: RtmpConnection = field(default_factory=lambda: RtmpConnection(Role.CLIENT))
    commands: list[CommandReceived] = field(default_factory=list)

    @classmethod
    async def connect(cls, port: int) -> "RawPublisher":
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        return cls(stream)

    async def flush(self) -> None:
        data = self.rtmp.data_to_send()
        if data:
            await self.stream.send_all(data)

    async def receive(self) -> bool:
        """Read once; False when the server closed the connection."""
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return False
        if not data:
            return False
        for event in self.rtmp.receive_data(data):
            if isinstance(event, CommandReceived):
                self.commands.append(event)
        await self.flush()
        return True

    async def wait_command(self, predicate) -> CommandReceived | None:
        """The first received command matching ``predicate``; None if the
        server closes first."""
        with trio.fail_after(WAIT_S):
            while True:
                for command in self.commands:
                    if predicate(command):
                        return command
                if not await self.receive():
                    return None

    async def wait_closed(self) -> None:
        """Until the server closes the connection (reading and dropping the rest)."""
        with trio.fail_after(WAIT_S):
            while await self.receive():
                pass

    async def handshake_and_connect(self, app: str = "live") -> None:
        await self.flush()
        with trio.fail_after(WAIT_S):
            while not self.rtmp.handshake_complete:
                assert await self.receive(), "server closed during the handshake"
        self.rtmp.send_set_chunk_size(4096)
        self.rtmp.send_command("connect", 1.0, {"app": app, "type": "nonprivate",
                                                "tcUrl": f"rtmp://127.0.0.1/{app}"})
        await self.flush()

    async def publish(self, key: str, app: str = "live") -> CommandReceived | None:
        """connect, releaseStream, FCPublish, createStream, publish; returns the
        publish onStatus (None if the server closed first)."""
        await self.handshake_and_connect(app)
        result = await self.wait_command(lambda c: c.name in ("_result", "_error") and c.transaction_id == 1.0)
        if result is None or result.name == "_error":
            return result
        self.rtmp.send_command("releaseStream", 2.0, None, key)
        self.rtmp.send_command("FCPublish", 3.0, None, key)
        self.rtmp.send_command("createStream", 4.0, None)
        await self.flush()
        created = await self.wait_command(lambda c: c.name == "_result" and c.transaction_id == 4.0)
        if created is None:
            return None
        self.rtmp.send_command("publish", 5.0, None, key, "live", message_stream_id=int(created.arguments[0]))
        await self.flush()
        return await self.wait_command(lambda c: c.name == "onStatus")

    async def send_tag(self, tag: FlvTag, offset_ms: int = 0) -> None:
        kind = MessageType.VIDEO if tag.tag_type == TagType.VIDEO else MessageType.AUDIO
        self.rtmp.send_media(kind, tag.timestamp_ms + offset_ms, tag.body)
        await self.flush()

    async def play_demo(self, *, loops: int = 1000) -> None:
        """Send the demo clip's tags in real time, looping (sequence headers once)."""
        clip = load_flv_clip(DEMO_CLIP.read_bytes())
        started = trio.current_time()
        for loop in range(loops):
            offset = loop * clip.duration_ms
            for index, tag in enumerate(clip.tags):
                if loop and index < 2:
                    continue  # the two sequence headers lead the clip
                await trio.sleep_until(started + (offset + tag.timestamp_ms) / 1000)
                try:
                    await self.send_tag(tag, offset)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


@pytest.fixture
def demo_clip():
    return load_flv_clip(DEMO_CLIP.read_bytes())


@pytest.fixture
def rtmp_helpers():
    """This module's helpers, for test modules (which cannot import a conftest)."""
    import types

    return types.SimpleNamespace(
        push_url=push_url, wait_until=wait_until, wait_for_tracks=wait_for_tracks,
        ffmpeg_command=ffmpeg_command, FfmpegRun=FfmpegRun, run_ffmpeg=run_ffmpeg,
        run_ffmpeg_sync=run_ffmpeg_sync, RawPublisher=RawPublisher, DEMO_CLIP=DEMO_CLIP,
        WAIT_S=WAIT_S, REPO=REPO)
