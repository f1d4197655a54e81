"""RTMP push: a session's frames as H.264 + AAC in flv, sent to an ingest, from a child process.
(At the end, ``Mp4Recording``: the same frames into a local mp4 file.)

Why a child process: PyAV holds the GIL while it opens a network output (the RTMP connect and
handshake), and a stalled ingest can block a write for as long as TCP lets it, which froze the
server's other threads. So the encoder and muxer live in a spawned process; the server only copies
each frame into shared memory and watches a heartbeat. A push that fails, stalls or crashes costs
its own process and never the session or the server.

Parent to child: a ring of fixed slots in shared memory (one frame of RGB, its 48 kHz audio and its
index each), guarded by one lock. When the child falls behind, the parent overwrites the oldest
queued frame and counts it as dropped, so the push lags by at most the ring (1 s by default).
Control flags and counters sit in a shared int64 array; no Event or Condition crosses the process
boundary, because a child killed while waiting on one can leave the parent blocked in ``notify``.

Failures, by who handles them:
- the ingest refuses or drops the connection: the child reconnects with exponential backoff
  (capped) and discards the backlog, so the stream resumes live instead of a second behind;
- the child stops beating (stuck in a connect or a write) or dies: the parent kills it and starts
  a new one after the same backoff;
- the session ends: the child sends what is queued, closes the stream cleanly and exits.
``stop()`` ends the child within its timeout whatever it is doing, and is safe to call twice.

Timestamps come from the frame index: video pts = index, audio pts = index * 1920 samples, both
from the first frame of each connection. Frames dropped before the child saw them leave a gap in
the video and silence in the audio, so the two tracks never drift apart; keyframes are placed by
stream time as well, so lost frames do not stretch a GOP.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import enum
import logging
import math
import multiprocessing
import multiprocessing.context
import multiprocessing.synchronize
import signal
import time
import urllib.parse
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import av
import numpy as np

from engine.config import FPS, OUTPUT_SAMPLE_RATE
from engine.media import Mp4Writer

if TYPE_CHECKING:  # keep the child's imports light: the session pulls in torch
    from engine.scheduler import OutputFrame
    from stream.session import Session, Subscription

log = logging.getLogger(__name__)

SAMPLES_PER_FRAME: Final = OUTPUT_SAMPLE_RATE // FPS  # 1920 samples of 48 kHz audio per frame
SCHEMES: Final = ("rtmp", "rtmps")
_POLL_S: Final = 0.1  # the child's longest wait before it looks at its control flags
_WATCH_S: Final = 0.25  # how often the parent checks the child's heartbeat
_LOCK_WAIT_S: Final = 0.02  # the parent's longest wait for the ring lock (it runs on the event loop)
_ERROR_BYTES: Final = 240
_STARTUP_GRACE_S: Final = 30.0  # on top of the stall timeout, for a new child's imports
_REAP_POLL_S: Final = 0.02


# --- output profile -------------------------------------------------------------------------------
@dataclass(frozen=True)
class OutputProfile:
    """What the ingest receives. Frames are scaled to fit ``width`` x ``height`` keeping their
    aspect, and the rest is padded black: a square avatar in the default 9:16 portrait canvas."""

    width: int = 720
    height: int = 1280
    # A keyframe every gop_s of stream time (ingests cut segments there): on the first frame at
    # that time, or the next one when that frame was lost.
    gop_s: float = 2.0
    video_bitrate: int = 2_500_000
    audio_bitrate: int = 128_000

    def __post_init__(self) -> None:
        checks = [
            (self.width, 16, 4096, "width"),
            (self.height, 16, 4096, "height"),
            (self.gop_s, 0.04, 10.0, "gop_s"),
            (self.video_bitrate, 100_000, 50_000_000, "video_bitrate"),
            (self.audio_bitrate, 32_000, 320_000, "audio_bitrate"),
        ]
        for value, low, high, name in checks:
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if not numeric or not low <= value <= high:
                raise ValueError(f"profile.{name} must be a number in [{low}, {high}], got {value!r}")
        for name in ("width", "height", "video_bitrate", "audio_bitrate"):
            if not isinstance(getattr(self, name), int):
                raise ValueError(f"profile.{name} must be an integer, got {getattr(self, name)!r}")
        if self.width % 2 or self.height % 2:
            raise ValueError(f"profile size must be even for yuv420p, got {self.width}x{self.height}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OutputProfile:
        """A profile from JSON; unknown keys are an error, so a typo never falls back silently."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown profile keys {unknown}; known: {sorted(known)}")
        return cls(**data)

    @property
    def gop_frames(self) -> int:
        return max(1, round(self.gop_s * FPS))

    def content_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """Where a ``width`` x ``height`` frame lands in the canvas: (x, y, w, h), all even.

        A reader of the pushed stream crops this box to get the session's picture back (to read
        bench stamps, for instance).
        """
        scale = min(self.width / width, self.height / height)
        w = min(self.width, 2 * max(1, round(width * scale / 2)))
        h = min(self.height, 2 * max(1, round(height * scale / 2)))
        x = (self.width - w) // 4 * 2
        y = (self.height - h) // 4 * 2
        return x, y, w, h


def validate_url(url: str) -> str:
    """The url if it can be pushed to (rtmp:// or rtmps:// with a host), else ValueError."""
    if not isinstance(url, str) or not url or len(url) > 2048 or any(c.isspace() for c in url):
        raise ValueError("url must be a non-empty rtmp:// or rtmps:// URL without spaces")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"url scheme must be one of {SCHEMES}, got {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError("url has no host")
    try:
        _ = parts.port
    except ValueError as exc:
        raise ValueError(f"url has a bad port: {exc}") from exc
    return url


def redact_url(url: str) -> str:
    """The url without its last path segment: RTMP stream keys are credentials, keep them out of
    logs and status replies."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    app = parts.path.rsplit("/", 1)[0]
    return f"{parts.scheme}://{host}{app}/***"


# --- shared state ---------------------------------------------------------------------------------
class _Field(enum.IntEnum):
    """Slots of the shared int64 array. STOP and EOS are written by the parent, the rest by the
    child; an aligned int64 is read and written whole, so no lock is needed."""

    STOP = 0  # end now: close the stream and exit
    EOS = 1  # no more frames will come: send what is queued, then exit
    CONNECTED = 2
    ATTEMPTS = 3  # connection attempts by any child; reconnects = attempts - 1
    SENT = 4
    DISCARDED = 5  # frames the child threw away (a stale backlog after a reconnect)
    HEARTBEAT_NS = 6  # time.monotonic_ns() of the child's last sign of life (system-wide clock)


class _Shared:
    """Control flags, counters, heartbeat and the last error, shared by parent and child."""

    def __init__(self, ctx: multiprocessing.context.SpawnContext) -> None:
        self._values = ctx.RawArray(ctypes.c_int64, len(_Field))
        self._error = ctx.RawArray(ctypes.c_char, _ERROR_BYTES)

    def get(self, field: _Field) -> int:
        return int(self._values[field])

    def set(self, field: _Field, value: int) -> None:
        self._values[field] = value

    def add(self, field: _Field, value: int = 1) -> None:
        self._values[field] += value  # one writer per field

    def beat(self) -> None:
        self._values[_Field.HEARTBEAT_NS] = time.monotonic_ns()

    def heartbeat_age_s(self) -> float:
        return (time.monotonic_ns() - self.get(_Field.HEARTBEAT_NS)) / 1e9

    @property
    def error(self) -> str:
        # Written without a lock: a read racing a write may show a mix of two messages.
        return self._error.value.decode(errors="replace")

    @error.setter
    def error(self, message: str) -> None:
        self._error.value = message.encode()[: _ERROR_BYTES - 1]


class _FrameRing:
    """Frames in flight from the parent to the child: ``slots`` fixed slots in shared memory.

    ``put`` never waits for the child: when the ring is full it overwrites the oldest frame. The
    lock is held only to copy one frame in or out.
    """

    def __init__(
        self, ctx: multiprocessing.context.SpawnContext, slots: int, height: int, width: int
    ) -> None:
        self.slots, self.height, self.width = slots, height, width
        self._header = ctx.RawArray(ctypes.c_int64, 2 + slots)  # write seq, read seq, index per slot
        self._video = ctx.RawArray(ctypes.c_uint8, slots * height * width * 3)
        self._audio = ctx.RawArray(ctypes.c_float, slots * SAMPLES_PER_FRAME)
        self.lock: multiprocessing.synchronize.Lock = ctx.Lock()
        self._items = ctx.Semaphore(0)  # released once per put; may run ahead of what is queued
        self._views: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_views"] = None  # numpy views are per process; pickling them would copy the ring
        return state

    def renew_lock(self, ctx: multiprocessing.context.SpawnContext) -> None:
        """A fresh lock for a fresh child: a child killed inside the lock would leave it held."""
        self.lock = ctx.Lock()

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._views is None:
            self._views = (
                np.frombuffer(self._header, dtype=np.int64),
                np.frombuffer(self._video, dtype=np.uint8).reshape(self.slots, self.height, self.width, 3),
                np.frombuffer(self._audio, dtype=np.float32).reshape(self.slots, SAMPLES_PER_FRAME),
            )
        return self._views

    def put(self, index: int, rgb: np.ndarray, audio: np.ndarray) -> int:
        """Queue one frame; returns how many frames were lost doing so (the oldest, or this one
        if the lock stayed busy)."""
        header, video, sound = self._arrays()
        if not self.lock.acquire(timeout=_LOCK_WAIT_S):
            return 1
        try:
            write, read = int(header[0]), int(header[1])
            lost = 0
            if write - read >= self.slots:
                header[1] = read + 1
                lost = 1
            slot = write % self.slots
            video[slot] = rgb
            sound[slot] = audio
            header[2 + slot] = index
            header[0] = write + 1
        finally:
            self.lock.release()
        self._items.release()
        return lost

    def get(self, timeout: float) -> tuple[int, np.ndarray, np.ndarray] | None:
        """The oldest queued frame (copied out), or None if none came within ``timeout``."""
        if not self._items.acquire(timeout=timeout):
            return None
        header, video, sound = self._arrays()
        with self.lock:
            write, read = int(header[0]), int(header[1])
            if read >= write:
                return None  # its frame was overwritten or discarded
            slot = read % self.slots
            item = int(header[2 + slot]), video[slot].copy(), sound[slot].copy()
            header[1] = read + 1
        return item

    def discard(self) -> int:
        """Drop everything queued; returns how many frames that was."""
        header, _, _ = self._arrays()
        with self.lock:
            count = int(header[0] - header[1])
            header[1] = header[0]
        return count

    def empty(self) -> bool:
        header, _, _ = self._arrays()
        with self.lock:
            return bool(header[0] <= header[1])


# --- the child process ----------------------------------------------------------------------------
class _Canvas:
    """Fits source frames into the profile's canvas: swscale scales the picture into its box
    (in yuv420p, so x264 needs no second conversion) and numpy pastes it over black padding."""

    def __init__(self, profile: OutputProfile, height: int, width: int) -> None:
        self.width, self.height = profile.width, profile.height
        self.x, self.y, self.box_w, self.box_h = profile.content_box(width, height)
        self.padded = (self.box_w, self.box_h) != (self.width, self.height)
        self.interpolation = "BICUBIC" if self.box_w >= width else "AREA"
        # One reformatter keeps its swscale context; a frame's own builds a new one per call,
        # which costs more (about 4 ms for 128 -> 720 px bicubic) than the scaling itself.
        self._scaler = av.video.reformatter.VideoReformatter()
        self._yuv = np.empty((self.height * 3 // 2, self.width), np.uint8)  # Y, then U, then V
        y, u, v = self._planes(self._yuv, self.width, self.height)
        y[:] = 16  # black in limited-range BT.601, which swscale produces
        u[:] = 128
        v[:] = 128

    @staticmethod
    def _planes(yuv: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        flat = yuv.reshape(-1)
        luma, chroma = width * height, width * height // 4
        return (
            flat[:luma].reshape(height, width),
            flat[luma : luma + chroma].reshape(height // 2, width // 2),
            flat[luma + chroma :].reshape(height // 2, width // 2),
        )

    def __call__(self, rgb: np.ndarray) -> av.VideoFrame:
        source = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        fitted = self._scaler.reformat(
            source, self.box_w, self.box_h, "yuv420p", interpolation=self.interpolation, threads=1
        )
        if not self.padded:
            return fitted
        box = self._planes(fitted.to_ndarray(), self.box_w, self.box_h)
        canvas = self._planes(self._yuv, self.width, self.height)
        for scale, (dst, src) in zip((1, 2, 2), zip(canvas, box, strict=True), strict=True):
            dst[
                self.y // scale : (self.y + self.box_h) // scale,
                self.x // scale : (self.x + self.box_w) // scale,
            ] = src
        return av.VideoFrame.from_ndarray(self._yuv, format="yuv420p")


class _FlvOutput:
    """One connection to the ingest: opening it connects and sends the stream header."""

    def __init__(self, url: str, profile: OutputProfile, height: int, width: int) -> None:
        self._canvas = _Canvas(profile, height, width)
        self._first: int | None = None  # index of the first frame sent on this connection
        self._next = 0
        self._gop = profile.gop_frames
        self._key_pts = 0  # pts of the last keyframe; the first frame is one
        self._closed = False
        # A live stream cannot seek back to patch duration and size into the header at the end.
        self._container = av.open(
            url, "w", format="flv", container_options={"flvflags": "no_duration_filesize"}
        )
        try:
            gop = profile.gop_frames
            self._video = self._container.add_stream(
                "libx264",
                rate=FPS,
                options={
                    "preset": "veryfast",
                    "tune": "zerolatency",  # no B-frames or lookahead: frames leave as they come
                    "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0",
                    "forced-idr": "1",  # a keyframe write() asks for is an IDR: a clean cut
                    "maxrate": str(profile.video_bitrate),
                    "bufsize": str(2 * profile.video_bitrate),
                },
            )
            self._video.width, self._video.height = profile.width, profile.height
            self._video.pix_fmt = "yuv420p"
            self._video.codec_context.bit_rate = profile.video_bitrate
            self._video.codec_context.time_base = Fraction(1, FPS)
            self._audio = self._container.add_stream("aac", rate=OUTPUT_SAMPLE_RATE, layout="mono")
            self._audio.codec_context.bit_rate = profile.audio_bitrate
            self._container.start_encoding()
        except BaseException:
            self.abort()
            raise

    def write(self, index: int, rgb: np.ndarray, audio: np.ndarray) -> bool:
        """Encode and send one frame; False if it is older than one already sent."""
        if self._first is None:
            self._first = self._next = index
        if index < self._next:
            return False
        gap = index - self._next  # frames lost on the way: their audio becomes silence
        frame = self._canvas(rgb)
        frame.pts = index - self._first
        frame.time_base = Fraction(1, FPS)
        # x264 counts keyint in frames; frames lost on the way would stretch the GOP in time.
        if frame.pts - self._key_pts >= self._gop:
            frame.pict_type = av.video.frame.PictureType.I
        packets = self._video.encode(frame)
        for packet in packets:
            if packet.is_keyframe and packet.pts is not None:
                self._key_pts = packet.pts  # codec time base (frames): muxing rebases it
        self._container.mux(packets)
        samples = np.concatenate([np.zeros(gap * SAMPLES_PER_FRAME, np.float32), audio]) if gap else audio
        # PyAV cuts the samples into the encoder's 1024-sample frames and keeps their pts.
        sound = av.AudioFrame.from_ndarray(samples[None, :], format="fltp", layout="mono")
        sound.sample_rate = OUTPUT_SAMPLE_RATE
        sound.pts = (self._next - self._first) * SAMPLES_PER_FRAME
        sound.time_base = Fraction(1, OUTPUT_SAMPLE_RATE)
        self._container.mux(self._audio.encode(sound))
        self._next = index + 1
        return True

    def close(self) -> None:
        """Flush both encoders and end the stream; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._container.mux(self._video.encode(None))
            self._container.mux(self._audio.encode(None))
        finally:
            self._container.close()

    def abort(self) -> None:
        """Drop the connection without flushing: it already failed."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(av.FFmpegError, OSError):
            self._container.close()


@dataclass(frozen=True)
class _Backoff:
    initial_s: float
    max_s: float


class _Pusher:
    """The child's loop: connect, send frames, reconnect with backoff, until told to end."""

    # A connection that carried this many frames was healthy: the next failure starts the
    # backoff afresh. (An ingest that accepts and then drops every stream keeps backing off.)
    HEALTHY_FRAMES: Final = FPS

    def __init__(
        self, url: str, profile: OutputProfile, ring: _FrameRing, shared: _Shared, backoff: _Backoff
    ) -> None:
        self.url, self.profile, self.ring, self.shared, self.backoff = url, profile, ring, shared, backoff
        self.name = redact_url(url)
        self._parent = multiprocessing.parent_process()
        self._sent_here = 0  # frames sent on the current connection

    def _told_to_end(self) -> bool:
        parent_gone = self._parent is not None and not self._parent.is_alive()
        return parent_gone or bool(self.shared.get(_Field.STOP))

    def _nothing_left(self) -> bool:
        """Ended, or the session is over while we are not connected: a new connection would
        only discard the backlog and close again."""
        return self._told_to_end() or bool(self.shared.get(_Field.EOS))

    def run(self) -> None:
        delay = self.backoff.initial_s
        while not self._nothing_left():
            self.shared.beat()
            self.shared.add(_Field.ATTEMPTS)
            self._sent_here = 0
            output: _FlvOutput | None = None
            done = False
            try:
                output = _FlvOutput(self.url, self.profile, self.ring.height, self.ring.width)
                self.shared.set(_Field.CONNECTED, 1)
                log.info("pushing to %s", self.name)
                self.shared.add(_Field.DISCARDED, self.ring.discard())  # stale by now: resume live
                self._send(output)
                done = True
                output.close()
                return
            except (av.FFmpegError, OSError) as exc:
                if output is not None:
                    output.abort()
                self.shared.set(_Field.CONNECTED, 0)
                self.shared.error = f"{type(exc).__name__}: {exc}"
                if done or self._nothing_left():  # a failed final flush is not worth a reconnect
                    return
                if self._sent_here >= self.HEALTHY_FRAMES:
                    delay = self.backoff.initial_s
                log.warning("push to %s failed (%s); reconnecting in %.1f s", self.name, exc, delay)
                self._sleep(delay)
                delay = min(2 * delay, self.backoff.max_s)

    def _send(self, output: _FlvOutput) -> None:
        """Send frames until told to end or the session's frames end; a failure raises."""
        while not self._told_to_end():
            item = self.ring.get(timeout=_POLL_S)
            self.shared.beat()
            if item is None:
                if self.shared.get(_Field.EOS) and self.ring.empty():
                    return
                continue
            if output.write(*item):
                self._sent_here += 1
                self.shared.add(_Field.SENT)
            else:
                self.shared.add(_Field.DISCARDED)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._nothing_left() and time.monotonic() < deadline:
            self.shared.beat()
            time.sleep(min(_POLL_S, max(deadline - time.monotonic(), 0.0)))


def _push_main(
    url: str, profile: OutputProfile, ring: _FrameRing, shared: _Shared, backoff: _Backoff, log_level: int
) -> None:
    """Entry point of the push process."""
    # Ctrl-C reaches the whole process group; the parent decides when the push ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=log_level, format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"
    )
    shared.beat()
    try:
        _Pusher(url, profile, ring, shared, backoff).run()
    finally:
        shared.set(_Field.CONNECTED, 0)


# --- the server side ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PushStatus:
    """What ``RtmpPush.status()`` reports; ``as_dict()`` is the API's JSON."""

    url: str  # redacted: no stream key
    running: bool  # a push process is (meant to be) up
    connected: bool
    reconnects: int
    frames_sent: int
    frames_dropped: int  # lost before the ingest: to a full queue, or as a stale backlog
    last_error: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class RtmpPush:
    """Pushes one session's frames to an RTMP ingest until ``stop()`` or the session ends.

    ``await push.start()`` subscribes to the session and spawns the push process;
    ``await push.stop()`` ends it within ``timeout`` (idempotent). ``status()`` is cheap and
    never waits on the child.
    """

    def __init__(
        self,
        session: Session,
        url: str,
        profile: OutputProfile | None = None,
        *,
        queue_frames: int = FPS,
        backoff_s: tuple[float, float] = (0.5, 10.0),
        stall_timeout_s: float = 10.0,
    ) -> None:
        if queue_frames < 1:
            raise ValueError(f"queue_frames must be at least 1, got {queue_frames}")
        if not 0 < backoff_s[0] <= backoff_s[1]:
            raise ValueError(f"backoff_s must be (initial, cap) with 0 < initial <= cap, got {backoff_s}")
        self.session = session
        self.url = validate_url(url)
        self.profile = profile or OutputProfile()
        self.stall_timeout_s = stall_timeout_s
        self._backoff = _Backoff(*backoff_s)
        self._ctx = multiprocessing.get_context("spawn")
        self._ring = _FrameRing(self._ctx, queue_frames, session.height, session.width)
        self._shared = _Shared(self._ctx)
        self._process: multiprocessing.context.SpawnProcess | None = None
        self._subscription: Subscription | None = None
        self._feed_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self._dropped = 0  # frames the parent lost into a full ring
        self._started = False

    @property
    def name(self) -> str:
        return f"rtmp-{self.session.id}"

    async def start(self) -> None:
        """Subscribe to the session and start the push process."""
        if self._started or self._stop_task is not None:
            raise RuntimeError(f"{self.name}: start() after start() or stop()")
        self._started = True
        self._spawn()
        self._subscription = self.session.subscribe(maxsize=self._ring.slots)
        self._feed_task = asyncio.create_task(self._feed(), name=f"{self.name}-feed")
        self._watch_task = asyncio.create_task(self._watch(), name=f"{self.name}-watch")
        log.info(
            "%s: pushing %dx%d to %s",
            self.name,
            self.profile.width,
            self.profile.height,
            redact_url(self.url),
        )

    def _spawn(self) -> None:
        # A spawned child re-imports the main module (the server's, torch and all) before it can
        # beat, so its first heartbeat is due a startup grace later than a stall would be.
        self._shared.set(_Field.HEARTBEAT_NS, time.monotonic_ns() + int(_STARTUP_GRACE_S * 1e9))
        self._process = self._ctx.Process(
            target=_push_main,
            args=(self.url, self.profile, self._ring, self._shared, self._backoff, log.getEffectiveLevel()),
            name=self.name,
            daemon=True,  # never outlive the server, even if stop() is never reached
        )
        # Synchronous (about 15 ms): a start that a cancelled await left running in a thread
        # could leave a child no one joins.
        self._process.start()

    async def _feed(self) -> None:
        """Session frames into the ring; when the session ends, tell the child to finish."""
        assert self._subscription is not None
        try:
            async for frame in self._subscription:
                self._dropped += self._ring.put(frame.index, frame.rgb, frame.audio)
        except Exception:
            log.exception("%s: feeding the push process failed", self.name)
        finally:
            self._shared.set(_Field.EOS, 1)

    async def _watch(self) -> None:
        """Replace a push process that died or stopped beating, after the reconnect backoff."""
        delay = self._backoff.initial_s
        while True:
            await asyncio.sleep(_WATCH_S)
            process = self._process
            assert process is not None
            if process.exitcode == 0:
                log.info("%s: push process finished", self.name)
                return
            if process.exitcode is not None:
                reason = f"push process died (exit code {process.exitcode})"
            elif self._shared.heartbeat_age_s() > self.stall_timeout_s:
                reason = f"push process stalled for over {self.stall_timeout_s:.0f} s"
            else:
                continue
            log.error("%s: %s; restarting it in %.1f s", self.name, reason, delay)
            await _end_process(process, 0.0)
            self._shared.error = reason
            self._shared.set(_Field.CONNECTED, 0)
            await asyncio.sleep(delay)
            delay = min(2 * delay, self._backoff.max_s)
            self._ring.renew_lock(self._ctx)
            self._spawn()

    def status(self) -> PushStatus:
        shared = self._shared
        running = self._process is not None and self._stop_task is None and self._process.exitcode != 0
        subscription_dropped = self._subscription.dropped if self._subscription is not None else 0
        return PushStatus(
            url=redact_url(self.url),
            running=running,
            connected=running and bool(shared.get(_Field.CONNECTED)),
            reconnects=max(0, shared.get(_Field.ATTEMPTS) - 1),
            frames_sent=shared.get(_Field.SENT),
            frames_dropped=self._dropped + subscription_dropped + shared.get(_Field.DISCARDED),
            last_error=shared.error,
        )

    async def stop(self, timeout: float = 5.0) -> None:
        """End the push: the child flushes and closes the stream, or is killed after ``timeout``.
        Safe to call twice, and concurrently: every caller returns once the child is gone."""
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._stop(timeout), name=f"{self.name}-stop")
        await asyncio.shield(self._stop_task)

    async def _stop(self, timeout: float) -> None:
        for task in (self._feed_task, self._watch_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._subscription is not None:
            self.session.unsubscribe(self._subscription)
        self._shared.set(_Field.STOP, 1)
        if self._process is not None:
            await _end_process(self._process, timeout)
        self._shared.set(_Field.CONNECTED, 0)
        log.info("%s: stopped; %s", self.name, self.status().as_dict())


async def _exited(process: multiprocessing.context.SpawnProcess, timeout: float) -> bool:
    # ``exitcode`` reaps without blocking, so the loop never waits in join() and a cancelled
    # caller leaves no thread behind that races the next one for the same child.
    deadline = time.monotonic() + timeout
    while process.exitcode is None:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(_REAP_POLL_S)
    return True


async def _end_process(process: multiprocessing.context.SpawnProcess, timeout: float) -> None:
    """Wait up to ``timeout`` for the process to exit, then terminate it, then kill it."""
    if await _exited(process, timeout):
        return
    if timeout:
        log.warning("%s: push process did not end within %.1f s; terminating it", process.name, timeout)
    process.terminate()
    if not await _exited(process, 1.0):
        process.kill()
        await _exited(process, math.inf)  # SIGKILL cannot be refused


# --- file output ----------------------------------------------------------------------------------
class Mp4Recording:
    """A live session recorded to an mp4 file by ``engine.media.Mp4Writer``, until ``stop()`` or
    the session ends.

    A local file does not block like a network write, and PyAV lets go of the GIL while it
    encodes, so this runs on one worker thread rather than in a process. Every writer call goes
    to that one thread, so a write still running when ``stop()`` comes is finished before the
    file is closed. Frames the subscription dropped (counted in ``frames_dropped``) are missing
    from the file rather than filled in: each frame keeps its own audio, so sync holds.
    """

    def __init__(self, session: Session, path: str | Path) -> None:
        self.session = session
        self.path = Path(path)
        self.frames_written = 0
        self._writer: Mp4Writer | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"mp4-{session.id}")
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Task[None] | None = None

    @property
    def frames_dropped(self) -> int:
        return self._subscription.dropped if self._subscription is not None else 0

    async def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def start(self) -> None:
        """Open the file (a ``MediaError`` if it cannot be written) and start recording."""
        if self._writer is not None or self._stop_task is not None:
            raise RuntimeError(f"recording to {self.path}: start() after start() or stop()")
        self._writer = await self._call(Mp4Writer, self.path, self.session.width, self.session.height)
        self._subscription = self.session.subscribe()
        self._task = asyncio.create_task(self._record(), name=f"mp4-{self.session.id}")

    async def _record(self) -> None:
        assert self._subscription is not None and self._writer is not None
        try:
            async for frame in self._subscription:
                await self._call(self._write, frame)
            await self._call(self._writer.close)  # the session ended: finish the file now
        except Exception:
            log.exception("recording to %s failed", self.path)

    def _write(self, frame: OutputFrame) -> None:
        # Counted on the writer thread: a stop() that cancels the await while the write runs
        # must not leave a frame in the file that the count misses.
        assert self._writer is not None
        self._writer.write(frame.rgb, frame.audio)
        self.frames_written += 1

    async def stop(self) -> None:
        """Finish the file; safe to call twice."""
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._stop(), name=f"mp4-{self.session.id}-stop")
        await asyncio.shield(self._stop_task)

    async def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._subscription is not None:
            self.session.unsubscribe(self._subscription)
        try:
            if self._writer is not None:
                await self._call(self._writer.close)
        finally:
            self._executor.shutdown(wait=False)
        log.info("recorded %d frames to %s (%d dropped)", self.frames_written, self.path, self.frames_dropped)
