"""Speech in over the audio WebSocket, playback events out, and nothing a client sends can hurt
another session. Positions are asserted in media time (seconds of the segment's audio)."""

from __future__ import annotations

import asyncio
import json
import threading
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import WSMsgType
from aiohttp.client_exceptions import WSServerHandshakeError

from livehuman.cli import main as livehuman_main
from stream.cli import audio_ws_url
from tests.fakes import FakeBackend
from tests.test_api import CONFIG, LIMITS, TOKEN, Harness
from tests.test_scheduler import tone

PACKET = 320  # 20 ms at 16 kHz
MAX_MESSAGE = 4096
AHEAD_S = 5.0


@pytest.fixture(scope="module")
def server() -> Harness:
    harness = Harness(FakeBackend(CONFIG), max_message_bytes=MAX_MESSAGE, max_audio_ahead_s=AHEAD_S)
    yield harness
    harness.close()


@pytest.fixture(autouse=True)
def no_sessions_left(server: Harness) -> None:
    yield
    left = len(server.manager)
    server.run(server.manager.close_all())  # so that one failure does not cascade
    assert left == 0, "a test left a session open"


def pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


async def send_speech(ws: Any, seconds: float, rate: int = 16000) -> None:
    """``seconds`` of speech in 20 ms packets, as fast as the socket takes them."""
    samples = tone(seconds * rate / 16000)  # tone() counts 16 kHz samples
    packet = rate // 50
    for offset in range(0, len(samples), packet):
        await ws.send_bytes(pcm16(samples[offset : offset + packet]))


async def next_event(ws: Any, timeout: float = 10.0) -> dict:
    msg = await ws.receive(timeout)
    assert msg.type is WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
    return json.loads(msg.data)


async def closed_with(ws: Any, timeout: float = 5.0) -> tuple[int, str]:
    """Skip events until the server closes; its code and reason."""
    while True:
        msg = await ws.receive(timeout)
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED):
            return ws.close_code, msg.extra or ""
        assert msg.type is WSMsgType.TEXT, msg


def audio_path(session_id: str) -> str:
    return f"/v1/sessions/{session_id}/audio"


def test_two_seconds_of_speech_in_20ms_packets_plays_to_its_end(server: Harness) -> None:
    async def main() -> list[dict]:
        session_id = await server.create()
        async with server.client.ws_connect(audio_path(session_id)) as ws:
            await send_speech(ws, 2.0)
            await ws.send_json({"type": "end_of_speech"})
            events = [await next_event(ws), await next_event(ws)]
        await server.client.delete(f"/v1/sessions/{session_id}")
        return events

    started, finished = server.run(main())
    assert started == {"type": "playback_started", "segment_id": 1}
    assert finished["type"] == "playback_finished" and finished["segment_id"] == 1
    assert finished["interrupted"] is False
    assert finished["playback_position"] == pytest.approx(2.0, abs=0.02)


def test_a_declared_sample_rate_and_a_new_segment(server: Harness) -> None:
    async def main() -> list[dict]:
        session_id = await server.create()
        async with server.client.ws_connect(audio_path(session_id)) as ws:
            await ws.send_json({"type": "start", "sample_rate": 24000})
            await send_speech(ws, 0.4, rate=24000)
            await ws.send_json({"type": "segment"})
            await send_speech(ws, 0.6, rate=24000)
            await ws.send_json({"type": "end_of_speech"})
            events = [await next_event(ws) for _ in range(4)]
        await server.client.delete(f"/v1/sessions/{session_id}")
        return events

    events = server.run(main())
    assert [(e["type"], e["segment_id"]) for e in events] == [
        ("playback_started", 1),
        ("playback_finished", 1),
        ("playback_started", 2),
        ("playback_finished", 2),
    ]
    # 24 kHz audio counts in seconds too (the resampler holds back a few ms at a segment's end).
    assert events[1]["playback_position"] == pytest.approx(0.4, abs=0.01)
    assert events[3]["playback_position"] == pytest.approx(0.6, abs=0.01)


@pytest.mark.parametrize("via", ["websocket", "http"])
def test_interrupt_mid_speech_reports_the_played_position(server: Harness, via: str) -> None:
    async def main() -> dict:
        session_id = await server.create()
        async with server.client.ws_connect(audio_path(session_id)) as ws:
            await send_speech(ws, 2.0)
            assert (await next_event(ws))["type"] == "playback_started"
            await asyncio.sleep(0.4)
            if via == "websocket":
                await ws.send_json({"type": "interrupt"})
            else:
                assert (await server.client.post(f"/v1/sessions/{session_id}/interrupt")).status == 204
            finished = await next_event(ws)
        await server.client.delete(f"/v1/sessions/{session_id}")
        return finished

    finished = server.run(main())
    assert finished["type"] == "playback_finished" and finished["interrupted"] is True
    # About the 0.4 s waited after the first frame played (which may lead its audio by up to one
    # frame), and short of the whole 2 s.
    assert 0.35 <= finished["playback_position"] < 2.0


def test_bad_frames_close_only_their_connection_and_never_touch_another_session(server: Harness) -> None:
    async def main() -> tuple[list, list[dict], list[str]]:
        bad, good = await server.create(), await server.create()
        closes, errors = [], []
        async with server.client.ws_connect(audio_path(good)) as good_ws:
            await send_speech(good_ws, 0.4)
            await good_ws.send_json({"type": "end_of_speech"})
            async with server.client.ws_connect(audio_path(bad)) as ws:
                await ws.send_bytes(b"\x00\x01\x02")  # odd length: not whole PCM16 samples
                closes.append(await closed_with(ws))
            async with server.client.ws_connect(audio_path(bad)) as ws:  # the session lives on
                for text in ("{oops", "[1]", '{"type": "sing"}', '{"type": "start", "sample_rate": 7}'):
                    await ws.send_str(text)
                    event = await next_event(ws)
                    assert event["type"] == "error"
                    errors.append(event["error"])
                await ws.send_bytes(bytes(MAX_MESSAGE + 2))
                closes.append(await closed_with(ws))
            async with server.client.ws_connect(audio_path(bad)) as ws:
                await send_speech(ws, AHEAD_S + 0.5)  # a runaway sender
                closes.append(await closed_with(ws))
            events = [await next_event(good_ws), await next_event(good_ws)]
        assert (await server.client.get(f"/v1/sessions/{bad}")).status == 200
        for session_id in (bad, good):
            await server.client.delete(f"/v1/sessions/{session_id}")
        return closes, events, errors

    closes, events, errors = server.run(main())
    assert closes[0] == (1003, "PCM16 frames need an even byte count, got 3 bytes")
    assert closes[1] == (1009, f"message larger than the {MAX_MESSAGE}-byte limit")
    assert closes[2] == (1008, f"speech pushed more than {AHEAD_S:g} s ahead of playback")
    assert errors[0].startswith("malformed JSON")
    assert errors[1] == 'a control message is a JSON object with a "type"'
    assert errors[2] == "type: unknown message type 'sing'"
    assert errors[3].startswith("sample_rate: an integer in [8000, 48000]")
    assert [e["type"] for e in events] == ["playback_started", "playback_finished"]
    assert events[1]["playback_position"] == pytest.approx(0.4, abs=0.02)
    assert events[1]["interrupted"] is False


def test_connection_rules_token_one_socket_per_session_and_unknown_ids(server: Harness) -> None:
    async def main() -> list[int]:
        session_id = await server.create()
        statuses = []
        for path, headers in [
            (audio_path("nope"), None),
            (audio_path(session_id), {"Authorization": ""}),
            (audio_path(session_id) + "?token=wrong", {"Authorization": ""}),
        ]:
            with pytest.raises(WSServerHandshakeError) as refused:
                await server.client.ws_connect(path, headers=headers)
            statuses.append(refused.value.status)
        # Browsers cannot set headers on a WebSocket: the token may come in the query.
        url = audio_path(session_id) + f"?token={TOKEN}"
        async with server.client.ws_connect(url, headers={"Authorization": ""}) as ws:
            with pytest.raises(WSServerHandshakeError) as second:
                await server.client.ws_connect(audio_path(session_id))
            statuses.append(second.value.status)
            await server.client.delete(f"/v1/sessions/{session_id}")  # closing it closes the socket
            code, reason = await closed_with(ws)
        assert (code, reason) == (1001, "session closed: closed by client")
        return statuses

    assert server.run(main()) == [404, 401, 401, 409]


def test_an_idle_session_closes_its_socket_with_the_reason(server: Harness) -> None:
    async def main() -> tuple[int, str]:
        session_id = await server.create()
        async with server.client.ws_connect(audio_path(session_id)) as ws:
            server.idle_clock.advance(LIMITS.idle_timeout_s + 1)
            return await closed_with(ws)

    assert server.run(main()) == (1001, f"session closed: idle for {LIMITS.idle_timeout_s:g} s")


def test_ten_sessions_opened_and_closed_leave_no_tasks_threads_or_sessions(server: Harness) -> None:
    def our_threads() -> set[str]:  # the default executor's pool threads are reused, not leaked
        return {t.name for t in threading.enumerate() if not t.name.startswith("asyncio_")}

    def our_tasks() -> set[str]:  # aiohttp keeps serving the client's pooled keep-alive connection
        keep_alive = "RequestHandler.start"
        return {t.get_name() for t in asyncio.all_tasks() if t.get_coro().__qualname__ != keep_alive}

    async def main() -> tuple[set[str], set[str]]:
        tasks_before = our_tasks()
        threads_before = our_threads()
        for i in range(10):
            session_id = await server.create()
            async with server.client.ws_connect(audio_path(session_id)) as ws:
                await send_speech(ws, 0.1)
                if i % 2:  # half close the socket first, half close the session under it
                    await ws.close()
                await server.client.delete(f"/v1/sessions/{session_id}")
        await asyncio.sleep(0.05)  # let the server's connection handlers finish
        return our_tasks() - tasks_before, our_threads() - threads_before

    leaked_tasks, leaked_threads = server.run(main())
    assert leaked_tasks == set()
    assert leaked_threads == set()
    assert len(server.manager) == 0 and server.manager.created_total >= 10


def test_speak_streams_a_file_in_real_time(server: Harness, tmp_path: Path, monkeypatch: Any) -> None:
    """``livehuman speak`` end to end: a 22.05 kHz stereo wav, resampled, paced, played."""
    path = tmp_path / "hello.wav"
    samples = (tone(0.5 * 22050 / 16000, freq=300.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(22050)
        out.writeframes(np.repeat(samples, 2).tobytes())
    monkeypatch.setenv("LIVEHUMAN_TOKEN", TOKEN)

    async def main() -> tuple[int, int, int]:
        session_id = await server.create()
        url = str(server.client.make_url(f"/v1/sessions/{session_id}"))
        argv = ["speak", "--session", url, "--audio", str(path)]
        code = await asyncio.to_thread(livehuman_main, argv)
        frames = server.manager.get(session_id).stats()["frames"]
        await server.client.delete(f"/v1/sessions/{session_id}")
        unreachable = await asyncio.to_thread(
            livehuman_main, ["speak", "--session", "http://127.0.0.1:9/v1/sessions/x", "--audio", str(path)]
        )
        return code, unreachable, frames

    code, unreachable, frames = server.run(main())
    assert code == 0, "speak exits 0 once playback_finished arrived"
    assert frames >= 12  # the half second played
    assert unreachable == 2


def test_audio_ws_url_from_a_session_url() -> None:
    assert audio_ws_url("http://h:8080/v1/sessions/ab") == "ws://h:8080/v1/sessions/ab/audio"
    assert audio_ws_url("https://h/v1/sessions/ab/?x=1") == "wss://h/v1/sessions/ab/audio?x=1"
    assert audio_ws_url("ws://h/v1/sessions/ab/audio") == "ws://h/v1/sessions/ab/audio"
    with pytest.raises(ValueError, match="expected http"):
        audio_ws_url("ftp://h/v1/sessions/ab")


def test_server_shutdown_closes_open_sockets_with_a_reason() -> None:
    harness = Harness(FakeBackend(CONFIG))

    async def main() -> Any:
        session_id = await harness.create()
        ws = await harness.client.ws_connect(audio_path(session_id))
        await send_speech(ws, 0.1)
        await harness.client.server.close()  # what run_app does on SIGINT
        return await ws.receive(5.0)

    try:
        message = harness.run(main())
    finally:
        harness.close()
    assert (message.type, message.data, message.extra) == (
        WSMsgType.CLOSE,
        1001,
        "session closed: server shutting down",
    )
    assert len(harness.manager) == 0
