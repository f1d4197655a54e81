"""The whole live path on one server: WebSocket speech in, WHEP out, interrupt, teardown.

One server per module on 127.0.0.1, the fake energy backend (frames and timing are closed
form), real aiortc on both ends. Timing is asserted in media time (pts), never wall time.
"""

from __future__ import annotations

import asyncio
import threading

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from stream.app import MANAGER_KEY, ServerConfig, build_app
from stream.stamps import detect_markers, read_stamp
from stream.webrtc import WHEP_SERVICE
from stream.whep_client import WhepClient
from tests.fakes import FakeBackend, fake_config

RATE = 16_000
PACKET = 320  # 20 ms


def tone(seconds: float, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


async def stream_speech(
    ws: aiohttp.ClientWebSocketResponse, audio: np.ndarray, stop: asyncio.Event | None = None
):  # noqa: ANN201
    """Push PCM16 in 20 ms packets at real-time pace from one start time, as an agent does."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(0, len(audio), PACKET):
        if stop is not None and stop.is_set():
            return
        await ws.send_bytes((np.clip(audio[i : i + PACKET], -1, 1) * 32767).astype("<i2").tobytes())
        await asyncio.sleep(max(0.0, start + (i + PACKET) / RATE - loop.time()))


async def collect_events(ws: aiohttp.ClientWebSocketResponse, events: list[dict]) -> None:
    async for message in ws:
        if message.type == aiohttp.WSMsgType.TEXT:
            events.append(message.json())


async def open_session(http: aiohttp.ClientSession, base: str) -> dict:
    png = await (await http.get(f"{base}/demo/portrait.png")).read()
    form = aiohttp.FormData()
    form.add_field("image", png, filename="portrait.png", content_type="image/png")
    async with http.post(f"{base}/v1/sessions", data=form) as response:
        assert response.status == 201, await response.text()
        return await response.json()


async def watched_session(
    http: aiohttp.ClientSession, base: str, **viewer: object
) -> tuple[dict, WhepClient]:
    """A new session and a WHEP viewer connected to it."""
    session = await open_session(http, base)
    client = WhepClient(**viewer)
    await client.connect(http, f"{base}{session['whep_url']}")
    return session, client


def run_with_server(scenario, bench_stamp: bool = False, size: int = 16):  # noqa: ANN001, ANN201
    """Start the real app (fake backend) on 127.0.0.1, run ``scenario(http, base, app)``."""
    config = fake_config(size, playout_delay_ms=520, compute_budget_ms=100)

    async def main():  # noqa: ANN202
        server_config = ServerConfig(ice_hosts=("127.0.0.1",), bench_stamp=bench_stamp)
        app = build_app(server_config, FakeBackend(config))
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as http:
                return await scenario(http, str(server.make_url("")).rstrip("/"), app)
        finally:
            await server.close()

    return asyncio.run(main())


def test_speech_over_websocket_arrives_as_25fps_video_and_audio_over_whep() -> None:
    seconds = 10.0

    async def scenario(http, base, app):  # noqa: ANN001, ANN202
        session, viewer = await watched_session(http, base)
        events: list[dict] = []
        async with http.ws_connect(f"{base}{session['audio_url']}") as ws:
            reader = asyncio.create_task(collect_events(ws, events))
            await stream_speech(ws, tone(seconds))
            await ws.send_json({"type": "end_of_speech"})
            while not any(e["type"] == "playback_finished" for e in events):
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            reader.cancel()
        pair = viewer.selected_pair()
        await viewer.close()
        return viewer, events, pair

    viewer, events, pair = run_with_server(scenario)
    assert pair == ("127.0.0.1", "127.0.0.1")
    video_pts = [v.pts for v in viewer.video]
    assert all(b - a == 3600 for a, b in zip(video_pts, video_pts[1:], strict=False)), "25 fps, no gaps"
    video_s = len(video_pts) / 25
    audio_s = sum(len(a.samples) for a in viewer.audio) / 48_000
    assert video_s >= seconds
    assert abs(video_s - audio_s) <= 0.04 + 4 * 0.02, "aiortc's receiver holds back a few audio packets"
    finished = [e for e in events if e["type"] == "playback_finished"]
    assert len(finished) == 1 and not finished[0]["interrupted"]
    assert finished[0]["playback_position"] == pytest.approx(seconds, abs=0.02)


def test_interrupt_silences_speech_within_200_ms_of_the_play_head() -> None:
    async def scenario(http, base, app):  # noqa: ANN001, ANN202
        session, viewer = await watched_session(http, base)
        events: list[dict] = []
        async with http.ws_connect(f"{base}{session['audio_url']}") as ws:
            reader = asyncio.create_task(collect_events(ws, events))
            stop = asyncio.Event()
            pusher = asyncio.create_task(stream_speech(ws, tone(6.0), stop))
            while (
                not any(np.abs(a.samples).max() > 0.1 for a in viewer.audio[-5:]) or len(viewer.audio) < 100
            ):
                await asyncio.sleep(0.05)
            play_head_s = viewer.audio[-1].pts / 48_000  # what the viewer hears now
            await ws.send_json({"type": "interrupt"})
            stop.set()
            await pusher
            await asyncio.sleep(1.5)
            reader.cancel()
        await viewer.close()
        return viewer, events, play_head_s

    viewer, events, play_head_s = run_with_server(scenario)
    before = [a for a in viewer.audio if a.pts / 48_000 < play_head_s]
    after = [a for a in viewer.audio if a.pts / 48_000 > play_head_s + 0.2]
    assert np.sqrt(np.mean(np.concatenate([a.samples for a in before[-10:]]) ** 2)) > 0.1, (
        "speech was playing"
    )
    assert after, "the stream went on after the interrupt"
    assert max(float(np.abs(a.samples).max()) for a in after) < 0.02, "speech after the cut"
    finished = [e for e in events if e["type"] == "playback_finished"]
    assert len(finished) == 1 and finished[0]["interrupted"]
    assert 0.5 < finished[0]["playback_position"] < 6.0


def test_ten_sessions_with_viewers_leave_nothing_behind() -> None:
    def threads() -> list[str]:
        """Threads other than the event loop's executor pool, which idles on by design."""
        return sorted(t.name for t in threading.enumerate() if not t.name.startswith("asyncio_"))

    def owned_tasks() -> list[str]:
        """Every task the server owns is named; unnamed ones are aiohttp's keep-alive connections."""
        return sorted(t.get_name() for t in asyncio.all_tasks() if not t.get_name().startswith("Task-"))

    async def scenario(http, base, app):  # noqa: ANN001, ANN202
        threads_before = threads()
        tasks_before = owned_tasks()
        for _ in range(10):
            session, viewer = await watched_session(http, base)
            while not viewer.video:
                await asyncio.sleep(0.05)
            async with http.delete(f"{base}/v1/sessions/{session['id']}") as response:
                assert response.status in (200, 204)
            await viewer.close()
        await asyncio.sleep(0.5)
        whep = app[WHEP_SERVICE].stats()
        return (
            threads_before, threads(), tasks_before, owned_tasks(),
            whep, len(app[MANAGER_KEY].sessions),
        )  # fmt: skip

    threads_before, threads_after, tasks_before, tasks_after, whep, sessions = run_with_server(scenario)
    assert sessions == 0
    assert whep["viewers"] == 0 and whep["encoders"] == [], whep
    assert threads_after == threads_before, "worker or encoder threads leaked"
    assert tasks_after == tasks_before, "tasks leaked"


def test_bench_stamps_tie_every_received_frame_to_its_audio_within_40_ms() -> None:
    async def scenario(http, base, app):  # noqa: ANN001, ANN202
        session, viewer = await watched_session(http, base, keep_images=True)
        async with http.ws_connect(f"{base}{session['audio_url']}") as ws:
            await stream_speech(ws, tone(5.0, 0.05))
        await asyncio.sleep(0.5)
        await viewer.close()
        return viewer

    viewer = run_with_server(scenario, bench_stamp=True, size=128)
    assert len(viewer.video) >= 75
    stamps = [read_stamp(v.image) for v in viewer.video]
    assert all(stamp == v.pts // 3600 for stamp, v in zip(stamps, viewer.video, strict=True)), "every frame"
    first, last = viewer.audio[0].pts, viewer.audio[-1].pts
    timeline = np.zeros(last - first + len(viewer.audio[-1].samples), np.float32)
    for chunk in viewer.audio:
        timeline[chunk.pts - first : chunk.pts - first + len(chunk.samples)] = chunk.samples
    markers = detect_markers(timeline, first)
    received = {v.pts // 3600 for v in viewer.video}
    paired = [m for m in markers if m.frame in received]
    assert len(paired) >= 2, markers
    offsets_ms = [(m.sample / 48_000 - m.frame / 25) * 1000 for m in paired]
    assert max(abs(o) for o in offsets_ms) <= 40, offsets_ms
