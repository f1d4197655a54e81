"""One live avatar session: a scheduler on its own worker, one media clock, fan-out to outputs.

Every output (the shared WebRTC encoder, an RTMP push, a stats probe) subscribes and gets the
same frames, already paced by the session clock, through its own bounded queue: a slow output
loses its oldest frames (counted) and never holds back the others or the scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np

from engine.clock import Clock, MonotonicClock
from engine.config import FPS, ModelConfig
from engine.generator import Conditioning
from engine.models.camera import CameraMove
from engine.redub import SourceVideo, check_video
from engine.runtime.base import Backend
from engine.scheduler import OutputFrame, PlaybackEvent, Scheduler
from engine.worker import SchedulerWorker

log = logging.getLogger(__name__)

FrameHook = Callable[[OutputFrame], OutputFrame]
EventListener = Callable[[PlaybackEvent], None]


class EndOfStream:
    """Typed end-of-stream marker put on a subscription when its session closes."""


END_OF_STREAM: Final = EndOfStream()


@dataclass(frozen=True)
class SessionOptions:
    prompt: str = ""
    seed: int = 0
    camera: CameraMove = field(default_factory=CameraMove)


class Subscription:
    """An output's view of the session: ``async for frame in subscription``."""

    def __init__(self, maxsize: int) -> None:
        self._queue: asyncio.Queue[OutputFrame | EndOfStream] = asyncio.Queue(maxsize)
        self.dropped = 0
        self.closed = False

    def put(self, item: OutputFrame | EndOfStream) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(item)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> OutputFrame:
        if self.closed:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, EndOfStream):
            self.closed = True
            raise StopAsyncIteration
        return item

    @property
    def depth(self) -> int:
        return self._queue.qsize()


class LateFrameWatch:
    """Warns in the log, at most once per span of stream, when a session shows more late pictures
    than a viewer tolerates. /metrics counts them too, but an operator whose machine runs short of
    compute (one session too many, a busy core) reads the server's log first; without this line it
    says nothing while viewers watch pictures repeat."""

    def __init__(self, session_id: str, span_frames: int = 10 * FPS, max_late_ratio: float = 0.01) -> None:
        self.session_id = session_id
        self.span_frames = span_frames
        self.max_late = int(max_late_ratio * span_frames)
        self._frames = 0
        self._late = 0

    def observe(self, repeated: bool) -> bool:
        """Count one frame; at the end of each span, warn if too many were late. True: it warned."""
        self._frames += 1
        self._late += repeated
        if self._frames < self.span_frames:
            return False
        late, self._frames, self._late = self._late, 0, 0
        if late <= self.max_late:
            return False
        log.warning(
            "session %s: %d of the last %d frames repeated a late picture; this machine is short of "
            "compute for its sessions: serve fewer, or give each window more time with "
            "--compute-budget-ms and --playout-delay-ms",
            self.session_id,
            late,
            self.span_frames,
        )
        return True


class Session:
    """Create with ``await Session.create(...)``: encoding the portrait (or the video being
    re-dubbed) is a model call, and no model call runs on the event loop."""

    def __init__(
        self,
        session_id: str,
        backend: Backend,
        config: ModelConfig,
        portrait: np.ndarray,
        conditioning: Conditioning,
        options: SessionOptions,
        clock: Clock,
    ) -> None:
        self.id = session_id
        self.config = config
        self.options = options
        self.portrait = portrait
        # What the client gave: a still to animate, or a video to re-dub (looped, its frame 0 the portrait).
        self.source: Literal["portrait", "video"] = "portrait" if conditioning.source is None else "video"
        self.clock = clock
        self.scheduler = Scheduler(
            backend, conditioning, config, seed=options.seed, clock=clock, portrait=portrait
        )
        if not options.camera.is_static:
            self.scheduler.set_camera(options.camera)
        self.worker = SchedulerWorker(self.scheduler, name=f"session-{session_id}")
        self.frame_hooks: list[FrameHook] = []
        self._subscriptions: set[Subscription] = set()
        self._listeners: list[EventListener] = []
        self._pump: asyncio.Task[None] | None = None
        self._closed = False
        self.last_frame: OutputFrame | None = None
        self._late_watch = LateFrameWatch(session_id)

    @classmethod
    async def create(
        cls,
        session_id: str,
        backend: Backend,
        config: ModelConfig,
        portrait: np.ndarray | None,
        options: SessionOptions | None = None,
        clock: Clock | None = None,
        *,
        video: np.ndarray | SourceVideo | None = None,
    ) -> Session:
        """A running session animating ``portrait`` ((H, W, 3) uint8), or re-dubbing ``video``
        ((F, H, W, 3) uint8 at 25 fps, 1-30 s, or prepared) in its place: exactly one of the two. Encoding a
        video takes seconds, so both encodings run on a worker thread."""
        if (portrait is None) == (video is None):
            raise ValueError("a session needs a portrait or a video to re-dub, exactly one of them")
        options = options or SessionOptions()
        if video is None:
            conditioning = await asyncio.to_thread(
                Conditioning.from_portrait, backend, portrait, options.prompt
            )
        else:
            check_video(config)
            conditioning = await asyncio.to_thread(Conditioning.from_video, backend, video, options.prompt)
            portrait = conditioning.source.frames[0]
        session = cls(session_id, backend, config, portrait, conditioning, options, clock or MonotonicClock())
        session.worker.start()
        session._pump = asyncio.create_task(session._run(), name=f"session-{session_id}-pump")
        return session

    @property
    def width(self) -> int:
        return self.config.width

    @property
    def height(self) -> int:
        return self.config.height

    # --- audio in, control -----------------------------------------------------------------------
    def set_camera(self, move: CameraMove) -> None:
        """A live camera change: it applies from the next window, easing from the pose on screen."""
        self.scheduler.set_camera(move)
        self.options = dataclasses.replace(self.options, camera=move)

    async def set_prompt(self, prompt: str) -> None:
        """A live prompt change: encoded off the event loop, it applies from the next window and
        eases in over about a second (``engine.prompt.PromptPath``), so there is no jump."""
        text = await asyncio.to_thread(self.scheduler.generator.backend.encode_text, prompt)
        self.scheduler.set_prompt(text)
        self.options = dataclasses.replace(self.options, prompt=prompt)

    def push_audio(self, samples: np.ndarray, sample_rate: int) -> int:
        """Queue mono float32 speech at its own rate; returns its segment id."""
        return self.scheduler.push_audio(samples, sample_rate)

    def end_segment(self) -> None:
        self.scheduler.end_segment()

    def interrupt(self) -> None:
        self.scheduler.interrupt()

    # --- outputs ---------------------------------------------------------------------------------
    def subscribe(self, maxsize: int = 50) -> Subscription:
        """Frames from now on; ``maxsize`` frames (2 s) of slack before the oldest are dropped."""
        subscription = Subscription(maxsize)
        if self._closed:
            subscription.put(END_OF_STREAM)
        else:
            self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    def add_listener(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: EventListener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    @property
    def subscribers(self) -> int:
        return len(self._subscriptions)

    async def _run(self) -> None:
        try:
            async for frame in self.worker.frames():
                for hook in self.frame_hooks:
                    frame = hook(frame)
                self.last_frame = frame
                self._late_watch.observe(frame.repeated)
                for subscription in list(self._subscriptions):
                    subscription.put(frame)
                for event in self.scheduler.drain_events():
                    self._dispatch(event)
        except Exception:
            log.exception("session %s: frame pump failed", self.id)
        finally:
            for subscription in self._subscriptions:
                subscription.put(END_OF_STREAM)
            self._subscriptions.clear()

    def _dispatch(self, event: PlaybackEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("session %s: event listener failed", self.id)

    async def close(self) -> None:
        """Stop generating and end every subscription; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        await self.worker.stop()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        for subscription in self._subscriptions:
            subscription.put(END_OF_STREAM)
        self._subscriptions.clear()
        self._listeners.clear()

    def stats(self) -> dict[str, float | int]:
        s = self.scheduler.stats
        return {
            "frames": s.frames_released,
            "windows": s.windows,
            "repeated": s.repeated,
            "dropped": s.dropped,
            "silence_inserted_s": round(s.silence_inserted_s, 3),
            "subscribers": self.subscribers,
            "queue_depth": max((sub.depth for sub in self._subscriptions), default=0),
        }
