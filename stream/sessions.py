"""The server's sessions: create with a fresh id, look up, close; bounded in number and in idle time.

Every route module (the JSON API, audio in, WHEP, RTMP) finds sessions here, so one place owns
their lifetime: a cap on concurrent sessions (slots are reserved before the portrait or video is
encoded, so a burst of creates cannot overshoot it), an idle reaper run by one owned background
task, and teardown that is idempotent and closes everything when the manager closes.

The manager also keeps the numbers ``/metrics`` exports that must outlive a session: per-stage
latency histograms fed from each scheduler's window records, taken in before the session goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from engine.clock import Clock, MonotonicClock
from engine.config import ConfigError, ModelConfig
from engine.media import read_image, read_video
from engine.redub import MAX_SECONDS, SourceVideo, check_source_length, check_video
from engine.runtime.base import Backend
from engine.scheduler import OutputFrame, WindowRecord
from stream.session import FrameHook, Session, SessionOptions
from stream.sources import SourceNotFound, SourceStore

log = logging.getLogger(__name__)


# Window compute per stage, in seconds: 1 ms (a fake or a tiny stage) to 2.5 s (a stalled GPU).
LATENCY_BUCKETS_S: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
FPS_WINDOW_S = 2.0  # the fps gauge counts fresh frames over this much of the session clock


class SessionNotFound(LookupError):
    """No live session has this id (never created, closed, or reaped as idle)."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"no session {session_id!r}")
        self.session_id = session_id


class AtCapacity(RuntimeError):
    """Every session slot is taken; the client should retry after ``retry_after_s``."""

    def __init__(self, max_sessions: int, retry_after_s: int) -> None:
        super().__init__(f"all {max_sessions} session slots are in use; retry later")
        self.retry_after_s = retry_after_s


class ManagerClosed(RuntimeError):
    """The server is shutting down and takes no new sessions."""


@dataclass(frozen=True)
class SessionLimits:
    max_sessions: int = 4
    # A session with no audio pushed and no subscriber (viewer, RTMP push) for this long is closed.
    idle_timeout_s: float = 120.0
    sweep_interval_s: float = 1.0
    retry_after_s: int = 10  # what a 503 at capacity tells the client

    def __post_init__(self) -> None:
        if self.max_sessions < 1 or self.idle_timeout_s <= 0 or self.sweep_interval_s <= 0:
            raise ValueError(f"invalid session limits: {self}")


class Histogram:
    """A cumulative Prometheus histogram (seconds)."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)  # per bucket, not cumulative
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break

    def cumulative(self) -> Iterator[tuple[float, int]]:
        """``(le, count <= le)`` pairs ending with ``(inf, count)``, as the text format wants."""
        running = 0
        for bound, n in zip(self.buckets, self.counts, strict=True):
            running += n
            yield bound, running
        yield math.inf, self.count


class FrameMeter:
    """A frame hook that counts fresh (not repeated) frames on the session clock; returns the
    frame unchanged, so it observes without taking part in the pipeline."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._times: deque[float] = deque(maxlen=256)

    def __call__(self, frame: OutputFrame) -> OutputFrame:
        if not frame.repeated:
            self._times.append(self._clock.now())
        return frame

    def fps(self) -> float:
        since = self._clock.now() - FPS_WINDOW_S
        return sum(1 for t in self._times if t > since) / FPS_WINDOW_S


@dataclass(eq=False)
class _Entry:
    session: Session
    meter: FrameMeter
    last_active: float
    last_record: WindowRecord | None = None  # the newest record taken into the histograms
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    close_reason: str = ""


class SessionManager:
    """Owns every live session of one server. Call ``start()`` on the serving loop and
    ``aclose()`` at shutdown (both idempotent); ``clock`` only measures idle time."""

    def __init__(
        self,
        backend: Backend,
        limits: SessionLimits | None = None,
        clock: Clock | None = None,
        config: ModelConfig | None = None,
    ) -> None:
        self.backend = backend
        self.config = config or backend.config  # what every new session is created with
        self.limits = limits or SessionLimits()
        self.stage_latency: dict[str, Histogram] = {}
        self.created_total = 0
        self.rejected_total = 0
        self._clock = clock or MonotonicClock()
        self.frame_hooks: list[FrameHook] = []  # applied to every new session, in order
        self._entries: dict[str, _Entry] = {}
        self._reserved = 0  # slots held by creates still encoding their portrait
        # Encoded re-dub sources by content: a host video is reused session after session (a
        # reconnect, the next broadcast), and encoding it takes about as long as it plays.
        self.sources = SourceStore(backend)
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False

    # --- lifetime ------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._reaper is None and not self._closed:
            self._reaper = asyncio.create_task(self._reap(), name="session-manager-idle-reaper")

    async def aclose(self, timeout: float = 5.0) -> None:
        """Stop the reaper and close every session; safe to call twice."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._reaper, timeout)
            self._reaper = None
        await self.close_all("server shutting down")

    # --- sessions --------------------------------------------------------------------------------------
    async def create(
        self,
        portrait: bytes | np.ndarray | None = None,
        options: SessionOptions | None = None,
        *,
        video: bytes | np.ndarray | None = None,
        source: str | None = None,
    ) -> Session:
        """A new live session from exactly one of ``portrait``, ``video`` (to re-dub) or ``source``
        (the id of a video given to ``sources`` before). Each is encoded (decoded off the loop; a
        ``MediaError`` if it is not an image or a video) or uint8 RGB at the model's size, (H, W, 3)
        or (F, H, W, 3) at 25 fps. A video on a model that cannot re-dub, one shorter than 1 s or
        longer than 30 s, or a source that is not ready is a ``ConfigError`` naming the field."""
        if sum(x is not None for x in (portrait, video, source)) != 1:
            raise ValueError("a session needs a portrait, a video or a source to re-dub, exactly one of them")
        if portrait is None:
            check_video(self.config)  # before a slot is taken and the upload decoded
        ready = None if source is None else self._ready_source(source)
        if self._closed:
            raise ManagerClosed("the server is shutting down")
        if len(self._entries) + self._reserved >= self.limits.max_sessions:
            self.rejected_total += 1
            raise AtCapacity(self.limits.max_sessions, self.limits.retry_after_s)
        self._reserved += 1
        try:
            image = None if portrait is None else await self._portrait(portrait)
            if video is not None:
                ready = await self.sources.ready(await self.decode_video(video))
            session_id = secrets.token_urlsafe(9)  # 72 random bits: unguessable, and unique in practice
            session = await Session.create(session_id, self.backend, self.config, image, options, video=ready)
        finally:
            self._reserved -= 1
        if self._closed:  # shut down while the portrait or video was encoding
            await session.close()
            raise ManagerClosed("the server is shutting down")
        session.frame_hooks.extend(self.frame_hooks)
        meter = FrameMeter(session.clock)
        session.frame_hooks.append(meter)
        self._entries[session_id] = _Entry(session, meter, last_active=self._clock.now())
        self.created_total += 1
        log.info(
            "session %s created from a %s (%d/%d)",
            session_id,
            session.source,
            len(self._entries),
            self.limits.max_sessions,
        )
        return session

    def get(self, session_id: str) -> Session:
        return self._entry(session_id).session

    def find(self, session_id: str) -> Session | None:
        entry = self._entries.get(session_id)
        return None if entry is None else entry.session

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._entries

    @property
    def sessions(self) -> list[Session]:
        return [entry.session for entry in self._entries.values()]

    def touch(self, session_id: str) -> None:
        """Client activity (audio, control): restarts the idle countdown."""
        self._entry(session_id).last_active = self._clock.now()

    def idle_seconds(self, session_id: str) -> float:
        entry = self._entry(session_id)
        if entry.session.subscribers:
            return 0.0
        return max(self._clock.now() - entry.last_active, 0.0)

    def fps(self, session_id: str) -> float:
        return self._entry(session_id).meter.fps()

    async def wait_closed(self, session_id: str) -> str:
        """Wait until the session is closed; returns why (at once if it is already gone)."""
        entry = self._entries.get(session_id)
        if entry is None:
            return "session closed"
        await entry.closed.wait()
        return entry.close_reason

    async def close(self, session_id: str, reason: str = "closed by client") -> bool:
        """Close one session; False if there was none (closing twice is not an error)."""
        entry = self._entries.pop(session_id, None)
        if entry is None:
            return False
        entry.close_reason = reason
        try:
            await entry.session.close()
        except Exception:
            log.exception("session %s: close failed", session_id)
        finally:
            entry.closed.set()
            self._take_records(entry)
        log.info("session %s closed: %s", session_id, reason)
        return True

    async def close_all(self, reason: str = "closed") -> None:
        for session_id in list(self._entries):
            await self.close(session_id, reason)

    # --- idle and metrics ----------------------------------------------------------------------------
    async def sweep(self) -> list[str]:
        """Close sessions idle longer than the limit; returns their ids."""
        now = self._clock.now()
        expired = []
        for session_id, entry in list(self._entries.items()):
            if entry.session.subscribers:
                entry.last_active = now
            elif now - entry.last_active >= self.limits.idle_timeout_s:
                expired.append(session_id)
        for session_id in expired:
            await self.close(session_id, f"idle for {self.limits.idle_timeout_s:g} s")
        return expired

    def collect(self) -> None:
        """Take in window records produced since the last call (called by ``/metrics``)."""
        for entry in self._entries.values():
            self._take_records(entry)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(self.limits.sweep_interval_s)
            try:
                await self.sweep()
            except Exception:
                log.exception("idle sweep failed")

    def _take_records(self, entry: _Entry) -> None:
        # The worker thread appends to a bounded deque: copy it (one C call, atomic under the
        # GIL) and take what follows the last record already seen; all of it if that was evicted.
        records = entry.session.scheduler.records.copy()
        new: list[WindowRecord] = []
        for record in reversed(records):
            if record is entry.last_record:
                break
            new.append(record)
        for record in reversed(new):
            for stage, ms in record.timings_ms.items():
                self.stage_latency.setdefault(stage, Histogram()).observe(ms / 1000.0)
        if records:
            entry.last_record = records[-1]

    def _entry(self, session_id: str) -> _Entry:
        entry = self._entries.get(session_id)
        if entry is None:
            raise SessionNotFound(session_id)
        return entry

    async def _portrait(self, portrait: bytes | np.ndarray) -> np.ndarray:
        height, width = self.config.height, self.config.width
        if isinstance(portrait, bytes):
            # Decoding and resizing a large photo takes long enough to stall every other session.
            return await asyncio.to_thread(read_image, portrait, height, width)
        if portrait.shape != (height, width, 3) or portrait.dtype != np.uint8:
            raise ValueError(
                f"portrait must be uint8 ({height}, {width}, 3), got {portrait.dtype} {portrait.shape}"
            )
        return portrait

    def _ready_source(self, source_id: str) -> SourceVideo:
        try:
            job = self.sources.get(source_id)
        except SourceNotFound:
            message = f"source: no source {source_id!r} here (give the video to /v1/sources first)"
            raise ConfigError(message) from None
        if job.source is None:
            state = job.error or f"still encoding, {job.done} of {job.total} latents"
            raise ConfigError(f"source: {source_id!r} is not ready ({state})")
        return job.source

    async def decode_video(self, video: bytes | np.ndarray) -> np.ndarray:
        """A re-dub source's frames at the model's size: a file decoded off the loop (a
        ``MediaError`` if it is not a video), or frames checked; 1-30 s (else a ``ConfigError``)."""
        height, width = self.config.height, self.config.width
        if isinstance(video, bytes):
            # Decoding seconds of video stalls every other session if it runs on the loop.
            video = await asyncio.to_thread(read_video, video, height, width, MAX_SECONDS)
        elif video.ndim != 4 or video.shape[1:] != (height, width, 3) or video.dtype != np.uint8:
            raise ValueError(
                f"video must be uint8 (F, {height}, {width}, 3), got {video.dtype} {video.shape}"
            )
        check_source_length(len(video))
        return video
