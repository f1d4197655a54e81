"""Speech in over a WebSocket: ``/v1/sessions/{id}/audio``, one connection per session.

Client to server:
- binary: PCM16 little-endian mono, 16 kHz unless a ``{"type": "start", "sample_rate": N}``
  message came first (it applies to the frames after it); any size, 20 ms is typical;
- ``{"type": "end_of_speech"}``: the utterance is complete; its ``playback_finished`` follows
  once its last frame has played;
- ``{"type": "segment"}``: the audio after this starts a new utterance (a new segment id);
- ``{"type": "interrupt"}``: stop speaking now (drops what is queued).

Server to client: ``{"type": "playback_started", "segment_id"}``, ``{"type":
"playback_finished", "segment_id", "playback_position", "interrupted"}`` (position in seconds of
that segment's audio, on the media clock) and ``{"type": "error", "error"}`` for a control message
that was not understood. A frame that breaks the byte stream (odd length, over the size limit,
speech too far ahead of playback) closes the connection with a reason; the session lives on and a
new connection may continue it. The session closing (DELETE, idle, shutdown) closes it too.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Final

import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web

from engine.clock import Clock
from engine.config import MODEL_SAMPLE_RATE
from engine.scheduler import PlaybackEvent
from stream.app import AUDIO_PATH, CONFIG_KEY, MANAGER_KEY, ApiError
from stream.session import Session
from stream.sessions import SessionManager

log = logging.getLogger(__name__)

MIN_SAMPLE_RATE: Final = 8_000
MAX_SAMPLE_RATE: Final = 48_000


def setup(app: web.Application) -> None:
    app[_CONNECTIONS] = {}
    app.router.add_get(AUDIO_PATH, audio_socket)


class AudioSocket(web.WebSocketResponse):
    """aiohttp closes a message over ``max_msg_size`` with code 1009 but no reason; add one."""

    def __init__(self, max_msg_size: int) -> None:
        super().__init__(max_msg_size=max_msg_size, heartbeat=20.0)
        self.limit = max_msg_size

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True) -> bool:
        if code == WSCloseCode.MESSAGE_TOO_BIG and not message:
            message = f"message larger than the {self.limit}-byte limit".encode()
        return await super().close(code=code, message=message, drain=drain)


_CONNECTIONS: Final = web.AppKey("audio_connections", dict[str, AudioSocket])


class ProtocolError(Exception):
    """The byte stream can no longer be trusted: close the connection with this reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class Backlog:
    """A leaky bucket of pushed speech that drains at real time: bounds how far a client may push
    ahead of playback, so a runaway sender cannot fill the server's memory."""

    def __init__(self, clock: Clock, limit_s: float) -> None:
        self._clock = clock
        self._limit_s = limit_s
        self._level_s = 0.0
        self._last = clock.now()

    def add(self, seconds: float) -> None:
        now = self._clock.now()
        self._level_s = max(self._level_s - (now - self._last), 0.0) + seconds
        self._last = now
        if self._level_s > self._limit_s:
            raise ProtocolError(
                WSCloseCode.POLICY_VIOLATION, f"speech pushed more than {self._limit_s:g} s ahead of playback"
            )

    def clear(self) -> None:
        """An interrupt dropped everything queued."""
        self._level_s = 0.0


class AudioConnection:
    """One client's audio stream into one session."""

    def __init__(self, session: Session, manager: SessionManager, ahead_s: float) -> None:
        self.session = session
        self.manager = manager
        self.sample_rate = MODEL_SAMPLE_RATE
        self.backlog = Backlog(session.clock, ahead_s)

    def on_binary(self, data: bytes) -> None:
        if len(data) % 2:
            raise ProtocolError(
                WSCloseCode.UNSUPPORTED_DATA, f"PCM16 frames need an even byte count, got {len(data)} bytes"
            )
        if not data:
            return
        samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
        self.backlog.add(len(samples) / self.sample_rate)
        self.session.push_audio(samples, self.sample_rate)
        self.manager.touch(self.session.id)

    def on_text(self, text: str) -> str | None:
        """Apply a control message; returns an error for the client, or None."""
        try:
            message = json.loads(text)
        except json.JSONDecodeError as exc:
            return f"malformed JSON ({exc})"
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            return 'a control message is a JSON object with a "type"'
        kind = message["type"]
        if kind == "start":
            rate = message.get("sample_rate")
            if (
                isinstance(rate, bool)
                or not isinstance(rate, int)
                or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE
            ):
                return f"sample_rate: an integer in [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}], got {rate!r}"
            self.sample_rate = rate
        elif kind == "interrupt":
            self.session.interrupt()
            self.backlog.clear()
        elif kind in ("end_of_speech", "segment"):
            # Both close the open utterance: the next audio is a new segment either way.
            self.session.end_segment()
        else:
            return f"type: unknown message type {kind!r}"
        self.manager.touch(self.session.id)
        return None


async def audio_socket(request: web.Request) -> web.StreamResponse:
    manager = request.app[MANAGER_KEY]
    config = request.app[CONFIG_KEY]
    connections = request.app[_CONNECTIONS]
    session = manager.get(request.match_info["id"])
    if session.id in connections:
        raise ApiError(409, "audio: this session already has an audio connection")
    ws = connections[session.id] = AudioSocket(config.max_message_bytes)  # claimed before any await
    try:
        await ws.prepare(request)
        await _serve(ws, AudioConnection(session, manager, config.max_audio_ahead_s))
    finally:
        connections.pop(session.id, None)
    return ws


async def _serve(ws: AudioSocket, connection: AudioConnection) -> None:
    """Receive until either side closes, sending playback events meanwhile."""
    session, manager = connection.session, connection.manager
    events: asyncio.Queue[PlaybackEvent] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def listener(event: PlaybackEvent) -> None:
        # Sessions dispatch on the loop today; this stays correct if they ever call from a thread.
        loop.call_soon_threadsafe(events.put_nowait, event)

    session.add_listener(listener)
    tasks = [
        asyncio.create_task(_send_events(ws, events), name=f"audio-ws-{session.id}-events"),
        asyncio.create_task(
            _close_with_session(ws, manager, session.id), name=f"audio-ws-{session.id}-watch"
        ),
    ]
    try:
        await _receive(ws, connection)
    finally:
        session.remove_listener(listener)
        for task in tasks:
            task.cancel()
        for task, result in zip(tasks, await asyncio.gather(*tasks, return_exceptions=True), strict=True):
            if isinstance(result, Exception):
                log.error("%s failed", task.get_name(), exc_info=result)


async def _receive(ws: AudioSocket, connection: AudioConnection) -> None:
    async for msg in ws:
        try:
            if msg.type is WSMsgType.BINARY:
                connection.on_binary(msg.data)
            elif msg.type is WSMsgType.TEXT and (error := connection.on_text(msg.data)) is not None:
                await ws.send_str(_dumps({"type": "error", "error": error}))
        except ProtocolError as exc:
            log.info("session %s: audio connection closed: %s", connection.session.id, exc)
            await ws.close(code=exc.code, message=str(exc).encode())
            return


async def _send_events(ws: AudioSocket, events: asyncio.Queue[PlaybackEvent]) -> None:
    while True:
        event = await events.get()
        message: dict[str, Any] = {"type": event.kind, "segment_id": event.segment_id}
        if event.kind == "playback_finished":
            message["playback_position"] = round(event.playback_position, 4)
            message["interrupted"] = event.interrupted
        try:
            await ws.send_str(_dumps(message))
        except ConnectionError:
            return  # the client went away; the receive loop ends the connection


async def _close_with_session(ws: AudioSocket, manager: SessionManager, session_id: str) -> None:
    reason = await manager.wait_closed(session_id)
    await ws.close(code=WSCloseCode.GOING_AWAY, message=f"session closed: {reason}".encode())


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))
