"""The chunked streaming scheduler: audio in, in-order frames with their audio out.

Two halves meet here under one lock: ``work()`` (called by a worker thread, never an event
loop) generates the next window once its audio is in or its deadline has passed, and
``release()`` hands out frames: offline as soon as they exist, live when the session clock
reaches them. Audio is the master clock (see ``engine.timeline``).

Live timing. Frame ``f`` is presented at ``T0 + f/25`` with ``T0 = start + playout_delay``.
Audio pushed at time ``t`` is placed at timeline position ``(t - start) * 16000`` (or after audio
already queued), so it plays ``playout_delay`` after it arrived; that delay must cover a window
of audio, the look-ahead and the compute budget. A window whose audio has not arrived
``compute_budget`` before its first frame is due gets silence instead, and the avatar idles.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from engine.clock import Clock
from engine.config import (
    FPS,
    FRAMES_PER_LATENT,
    MODEL_SAMPLE_RATE,
    OUTPUT_SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    SAMPLES_PER_LATENT,
    ModelConfig,
)
from engine.generator import Conditioning, GeneratorState, WindowGenerator, WindowOutput
from engine.models.camera import CameraMove
from engine.runtime.base import Backend
from engine.timeline import RATIO, Timeline

log = logging.getLogger(__name__)

OUTPUT_SAMPLES_PER_FRAME = OUTPUT_SAMPLE_RATE // FPS  # 1920
PACKET_SAMPLES = MODEL_SAMPLE_RATE // 50  # 20 ms: interrupt mutes from the next packet


@dataclass(frozen=True)
class OutputFrame:
    index: int  # video frame index; pts = index / 25 s
    rgb: np.ndarray  # (H, W, 3) uint8
    audio: np.ndarray  # (1920,) float32 at 48 kHz: the audio that drove this frame
    segment_id: int | None  # the speech segment that drove it; None while idle
    repeated: bool = False  # the frame was not ready in time and the previous one was shown

    @property
    def pts(self) -> float:
        return self.index / FPS


@dataclass(frozen=True)
class PlaybackEvent:
    kind: Literal["playback_started", "playback_finished"]
    segment_id: int
    playback_position: float = 0.0  # seconds of the segment's audio that were played
    interrupted: bool = False


@dataclass(frozen=True)
class WindowRecord:
    start: int
    steps: int
    frames: int
    timings_ms: dict[str, float]
    began: float  # clock time
    ended: float


@dataclass
class _Segment:
    """One utterance's stretches of the timeline (more than one if its stream stalled)."""

    spans: list[list[int]]  # [start, end) in model samples, in order
    started: bool = False
    finished: bool = False

    @property
    def end(self) -> int:
        return self.spans[-1][1]

    def extend(self, start: int, end: int) -> None:
        if self.spans[-1][1] == start:
            self.spans[-1][1] = end
        else:
            self.spans.append([start, end])

    def seconds_before(self, position: int) -> float:
        """Seconds of this segment's own audio before a timeline position (gaps excluded)."""
        played = sum(max(min(b, position) - a, 0) for a, b in self.spans)
        return played / MODEL_SAMPLE_RATE

    @property
    def duration(self) -> float:
        return self.seconds_before(self.end)


@dataclass
class SchedulerStats:
    windows: int = 0
    frames_released: int = 0
    repeated: int = 0  # frames shown twice because the next was late
    dropped: int = 0  # generated too late to show
    silence_inserted_s: float = 0.0
    steps_used: dict[int, int] = field(default_factory=dict)


class Scheduler:
    """One session's scheduler. Offline when ``clock`` is None (waits for audio, never degrades)."""

    def __init__(
        self,
        backend: Backend,
        conditioning: Conditioning,
        config: ModelConfig,
        *,
        seed: int = 0,
        clock: Clock | None = None,
        portrait: np.ndarray | None = None,
        max_buffered_frames: int = 64,
    ) -> None:
        self.config = config
        self.sched = config.scheduler
        self.clock = clock
        self.live = clock is not None
        self.generator = WindowGenerator(backend, conditioning, config, seed)
        self.timeline = Timeline()
        self.stats = SchedulerStats()
        # Live sessions run for hours: keep the recent windows only (metrics read them).
        self.records: deque[WindowRecord] = deque(maxlen=None if clock is None else 1000)
        self.events: deque[PlaybackEvent] = deque()
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._state = self.generator.initial_state()
        self._snapshots: dict[int, GeneratorState] = {}
        self._pending: deque[tuple[int, np.ndarray]] = deque()  # generated, not yet released
        self._next_release = 0
        self._last_rgb = (
            portrait if portrait is not None else np.zeros((config.height, config.width, 3), np.uint8)
        )
        self._max_buffered = max_buffered_frames
        self._ended = False
        self._total_frames: int | None = None
        self._generated_all = False
        self._segments: dict[int, _Segment] = {}
        self._open_segment: int | None = None
        self._next_segment_id = 1
        self._released_segment: int | None = None
        self._step_ms: dict[int, float] = {}  # measured window compute per step count
        self._pending_cut: int | None = None
        self._start = clock.now() if clock is not None else 0.0
        self._t0 = self._start + self.sched.playout_delay_ms / 1000.0

    # --- producer side (any thread) --------------------------------------------------------------
    def push_audio(self, samples: np.ndarray, sample_rate: int) -> int:
        """Queue speech (mono float32 at its own rate); returns the segment id it belongs to."""
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError("push_audio takes mono samples (1-D)")
        with self._lock:
            if self._ended:
                raise RuntimeError("push_audio after end_input")
            if self._open_segment is None:
                self._open_segment = self._next_segment_id
                self._next_segment_id += 1
                if self.live:
                    self._place_new_speech()
                self._segments[self._open_segment] = _Segment([[self.timeline.end, self.timeline.end]])
            elif self.live and self.timeline.ends_in_silence:
                # The stream stalled past a deadline: resume where audio arriving now belongs,
                # after the inserted silence, with the full jitter margin again.
                self._place_new_speech()
            segment = self._open_segment
            start = self.timeline.end
            self.timeline.push(samples, sample_rate, segment)
            self._segments[segment].extend(start, self.timeline.end)
            self._wake.notify_all()
            return segment

    def set_camera(self, move: CameraMove) -> None:
        """Change the camera from the next window on: the first latent not generated yet eases from
        the pose already on screen to ``move``, so there is no jump (``CameraPath``)."""
        with self._lock:
            first_new = max(self._state.start + self.sched.overlap, 0)
            self.generator.camera.change(move, FRAMES_PER_LATENT * first_new)

    def set_prompt(self, text: torch.Tensor) -> None:
        """Change the prompt's text context (1, L, Dt) from the next window on, easing from the one
        on screen (``PromptPath``)."""
        with self._lock:
            self.generator.prompt.change(text, max(self._state.start + self.sched.overlap, 0))

    def end_segment(self) -> None:
        """End of an utterance: the next push starts a new segment (placed anew when live).
        Its ``playback_finished`` fires once its last frame has been released."""
        with self._lock:
            segment, self._open_segment = self._open_segment, None
            seg = self._segments.get(segment) if segment is not None else None
            played = seg is not None and self._next_release * SAMPLES_PER_FRAME >= seg.end
            if played and seg.started and not seg.finished:
                self._finish_played(segment)

    def end_input(self) -> None:
        """Offline: no more audio. The output is trimmed to round(seconds * 25) frames."""
        with self._lock:
            self.timeline.sync()
            self._ended = True
            self._total_frames = round(self.timeline.input_seconds * FPS)
            self._wake.notify_all()

    def interrupt(self) -> None:
        """Stop speaking now: mute audio from the next 20 ms packet, cut video at the first latent
        boundary after the play head, drop all queued speech and idle from there."""
        with self._lock:
            play = self._play_position()
            released = self._next_release * SAMPLES_PER_FRAME
            mute_from = max(math.ceil(play / PACKET_SAMPLES) * PACKET_SAMPLES, released)
            cut = max(play // SAMPLES_PER_LATENT + 1, math.ceil(self._next_release / FRAMES_PER_LATENT))
            segment = self.timeline.segment_at(min(mute_from, self.timeline.end - 1))
            if segment is None:
                segment = self._open_segment
            if segment is not None and not self._segments[segment].finished:
                position = self._segments[segment].seconds_before(mute_from)
                self._finish_segment(segment, position, interrupted=True)
            self.timeline.mute(mute_from, cut * SAMPLES_PER_LATENT)
            self.timeline.truncate(cut * SAMPLES_PER_LATENT)
            # A window may be computing right now over the dropped audio: the cut is applied
            # again once its output is in (see _accept).
            self._pending_cut = cut
            self._apply_cut()
            self._open_segment = None
            self._wake.notify_all()

    # --- worker side (a worker thread) ----------------------------------------------------------
    def work(self) -> bool:
        """Generate the next window if it is due; False when there is nothing to do yet."""
        with self._lock:
            job = self._next_job()
            if job is None:
                return False
            state, audio, steps = job
        began = self._now()
        out = self.generator.run(state, audio, steps)
        with self._lock:
            if self._state is not state:  # rolled back while computing: this window is void
                return True
            self._accept(out, began)
            if self._ended and self._state.start + self.sched.overlap >= self._latents_needed():
                self._accept(self.generator.flush(self._state), self._now())
                self._generated_all = True
            self._wake.notify_all()
        return True

    def next_deadline(self) -> float | None:
        """Clock time at which ``work()`` will have something to do even without new audio."""
        with self._lock:
            if not self.live or self._generated_all:
                return None
            return self._deadline(self._state.start)

    def next_release_time(self) -> float:
        """Live: clock time at which the next frame is due."""
        with self._lock:
            return self._present(self._next_release)

    def notify(self) -> None:
        """Wake a worker blocked in ``wait_for_work`` (e.g. to stop it)."""
        with self._wake:
            self._wake.notify_all()

    def wait_for_work(self, timeout: float) -> None:
        """Block the worker until audio, an interrupt or a release arrives, or ``timeout`` s."""
        with self._wake:
            self._wake.wait(timeout)

    # --- consumer side ----------------------------------------------------------------------------
    def release(self) -> list[OutputFrame]:
        """Frames that are ready (offline) or due on the session clock (live), in order."""
        with self._lock:
            out = self._release_live() if self.live else self._release_offline()
            if out:
                self._wake.notify_all()
                self._forget_played()
            return out

    @property
    def done(self) -> bool:
        """Offline: every frame has been released."""
        with self._lock:
            return self._generated_all and self._next_release >= (self._total_frames or 0)

    def drain_events(self) -> list[PlaybackEvent]:
        with self._lock:
            events = list(self.events)
            self.events.clear()
            return events

    # --- internals ---------------------------------------------------------------------------------
    def _now(self) -> float:
        return self.clock.now() if self.clock is not None else time.perf_counter()

    def _present(self, frame: int) -> float:
        return self._t0 + frame / FPS

    def _play_position(self) -> int:
        """Model-audio position being presented now (offline: what has been released)."""
        if not self.live:
            return self._next_release * SAMPLES_PER_FRAME
        return max(int((self._now() - self._t0) * MODEL_SAMPLE_RATE), 0)

    def _deadline(self, start: int) -> float:
        """Latest clock time to start the window at ``start`` and still show its first frame."""
        budget = self.sched.compute_budget_ms / 1000.0
        emits_nothing = start + self.sched.stride <= 0  # the first window may only prime
        return self._present(FRAMES_PER_LATENT * max(start, 0)) - budget * (2 if emits_nothing else 1)

    def _latents_needed(self) -> int:
        return math.ceil((self._total_frames or 0) / FRAMES_PER_LATENT)

    def _next_job(self) -> tuple[GeneratorState, np.ndarray, int] | None:
        if self._generated_all:
            return None
        if self.live:
            self._skip_if_late()
        state = self._state
        need = self.generator.required_audio_end(state.start)
        if self.live:
            first_due = self._present(FRAMES_PER_LATENT * max(state.start, 0))
            window_s = self.sched.window * FRAMES_PER_LATENT / FPS
            if first_due - self._now() > self.sched.playout_delay_ms / 1000.0 + window_s:
                return None  # a burst of audio must not run generation far ahead of playout
            if self.timeline.end < need:
                if self._now() < self._deadline(state.start):
                    return None  # a momentarily empty queue is not silence: wait for the deadline
                self.stats.silence_inserted_s += (need - self.timeline.end) / MODEL_SAMPLE_RATE
                self.timeline.pad_silence(need)
        else:
            if len(self._pending) >= self._max_buffered:
                return None
            if self.timeline.end < need:
                if not self._ended:
                    return None
                self.timeline.pad_silence(need)
        first_frame, count = self.generator.audio_span(state.start)
        start = first_frame * SAMPLES_PER_FRAME
        n = count * SAMPLES_PER_FRAME + self.config.audio.n_fft - self.config.audio.hop_length
        return state, self.timeline.model.read(start, start + n), self._choose_steps(state.start)

    def _choose_steps(self, start: int) -> int:
        """Offline never degrades; live sheds steps when the window would otherwise be late."""
        steps = self.sched.steps
        if not self.live or not self.sched.fallback_steps:
            return steps
        time_left_ms = (self._present(FRAMES_PER_LATENT * max(start, 0)) - self._now()) * 1000.0
        for candidate in sorted({steps, *self.sched.fallback_steps}, reverse=True):
            if candidate <= steps and self._step_ms.get(candidate, 0.0) <= time_left_ms:
                return candidate
        return min(self.sched.fallback_steps)

    def _skip_if_late(self) -> None:
        """If the next window's first frame is already due, jump to where generation can be on
        time again: the viewer sees repeated frames meanwhile, and lag never builds up."""
        state = self._state
        if state.start < 0 or self._present(FRAMES_PER_LATENT * state.start) >= self._now():
            return
        budget = self.sched.compute_budget_ms / 1000.0
        target = math.ceil((self._now() + budget - self._t0) * FPS / FRAMES_PER_LATENT)
        log.warning("generation behind the play head: skipping %d latents", target - state.start)
        self._state = dataclasses.replace(state, start=target)

    def _accept(self, out: WindowOutput, began: float) -> None:
        for i, rgb in enumerate(out.frames):
            self._pending.append((out.first_frame + i, rgb))
        for boundary in out.boundaries:
            self._snapshots[boundary.start] = boundary
        if out.boundaries:
            self._state = out.boundaries[-1]
            self._apply_cut()
        if out.steps:
            self.stats.windows += 1
            self.stats.steps_used[out.steps] = self.stats.steps_used.get(out.steps, 0) + 1
            compute = sum(out.timings_ms.values())
            previous = self._step_ms.get(out.steps)
            self._step_ms[out.steps] = compute if previous is None else 0.8 * previous + 0.2 * compute
        self.records.append(
            WindowRecord(out.start, out.steps, len(out.frames), out.timings_ms, began, self._now())
        )

    def _apply_cut(self) -> None:
        """Once generation has reached a pending interrupt cut, resume from the cut with the
        state the viewer watched (see GeneratorState.resumed)."""
        cut = self._pending_cut
        if cut is None or cut > self._state.start:
            return
        self._pending_cut = None
        if cut < self._state.start:
            self._rollback(cut)
        else:
            self._state = self._state.resumed()

    def _rollback(self, boundary: int) -> None:
        """Restore the snapshot at a latent boundary and forget every frame generated after it."""
        snapshot = self._snapshots.get(boundary)
        if snapshot is None:
            log.warning("no snapshot at latent %d; continuing from latent %d", boundary, self._state.start)
            return
        self._state = snapshot.resumed()
        first_dropped = boundary * FRAMES_PER_LATENT
        while self._pending and self._pending[-1][0] >= first_dropped:
            self._pending.pop()
        self._snapshots = {b: s for b, s in self._snapshots.items() if b <= boundary}

    def _place_new_speech(self) -> None:
        """Live: a new utterance starts where audio arriving now plays ``playout_delay`` later,
        or after speech still queued. Silence inserted beyond that point is revoked.

        Idle windows are generated at their deadlines, so with a valid config (playout delay >=
        audio wait + compute budget) no idle frame exists past the arrival point and speech never
        waits behind a silence buffer; should generation be ahead anyway, speech follows it.
        """
        arrival = max(int((self._now() - self._start) * MODEL_SAMPLE_RATE), 0)
        generated = max(self._state.start, 0) * SAMPLES_PER_LATENT
        place = max(arrival, self.timeline.speech_end, generated)
        if self.timeline.end > place:
            self.timeline.truncate(place)
        else:
            self.timeline.pad_silence(place)

    def _release_offline(self) -> list[OutputFrame]:
        out = []
        total = self._total_frames
        while self._pending and (total is None or self._next_release < total):
            index, rgb = self._pending.popleft()
            out.append(self._frame(index, rgb, repeated=False))
        if self._generated_all and total is not None and self._next_release >= total:
            self._pending.clear()
            self._close_segments()
        return out

    def _release_live(self) -> list[OutputFrame]:
        out = []
        now = self._now()
        while self._present(self._next_release) <= now:
            index = self._next_release
            while self._pending and self._pending[0][0] < index:
                self._pending.popleft()
                self.stats.dropped += 1
            if self._pending and self._pending[0][0] == index:
                out.append(self._frame(index, self._pending.popleft()[1], repeated=False))
            else:
                self.stats.repeated += 1
                out.append(self._frame(index, self._last_rgb, repeated=True))
        return out

    def _frame(self, index: int, rgb: np.ndarray, repeated: bool) -> OutputFrame:
        start = index * SAMPLES_PER_FRAME
        segment = self.timeline.segment_at(start)
        if segment is None:
            segment = self.timeline.segment_at(start + SAMPLES_PER_FRAME - 1)
        self._track_playback(segment)
        self._last_rgb = rgb
        self._next_release = index + 1
        self.stats.frames_released += 1
        audio = self.timeline.output.read(RATIO * start, RATIO * start + OUTPUT_SAMPLES_PER_FRAME)
        return OutputFrame(index, rgb, audio, segment, repeated)

    def _track_playback(self, segment: int | None) -> None:
        previous = self._released_segment
        # A segment still open may only be pausing (audio stalled): it finishes once closed.
        if previous is not None and previous != segment and previous != self._open_segment:
            seg = self._segments.get(previous)
            if seg is not None and not seg.finished:
                self._finish_played(previous)
        if segment is not None:
            seg = self._segments.get(segment)
            if seg is not None and not seg.started:
                seg.started = True
                self.events.append(PlaybackEvent("playback_started", segment))
        self._released_segment = segment

    def _finish_segment(self, segment: int, position: float, interrupted: bool) -> None:
        self._segments[segment].finished = True
        self.events.append(PlaybackEvent("playback_finished", segment, position, interrupted))

    def _finish_played(self, segment: int) -> None:
        """The segment played to its end: its position is its whole duration."""
        seg = self._segments[segment]
        self._finish_segment(segment, seg.duration, interrupted=False)

    def _close_segments(self) -> None:
        for segment_id, seg in self._segments.items():
            if seg.started and not seg.finished:
                self._finish_played(segment_id)

    def state_sizes(self) -> dict[str, int]:
        """The size of everything a live session keeps. Hours of streaming must leave each one
        bounded; the duration benchmark and its test read them instead of guessing from RSS alone."""
        with self._lock:
            return {
                "records": len(self.records),
                "events": len(self.events),
                "snapshots": len(self._snapshots),
                "pending_frames": len(self._pending),
                "segments": len(self._segments),
                **self.timeline.sizes(),
            }

    def _forget_played(self) -> None:
        """Bounded state: drop snapshots, segments and audio that can no longer be needed."""
        played_latents = self._next_release // FRAMES_PER_LATENT
        self._snapshots = {b: s for b, s in self._snapshots.items() if b >= played_latents}
        first_frame, _ = self.generator.audio_span(self._state.start)
        # A rollback restarts at most one latent before the play head's next boundary, and its
        # window reads audio history before that: keep a second of margin.
        keep_from = (min(self._next_release, first_frame) - FPS) * SAMPLES_PER_FRAME
        self.timeline.trim(keep_from)
        for segment_id in [k for k, s in self._segments.items() if s.finished and s.end < keep_from]:
            del self._segments[segment_id]
