"""The async facade: compute stays off the event loop, frames come out in order."""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from engine.clock import MonotonicClock
from engine.worker import SchedulerWorker
from tests.fakes import FakeBackend, fake_config
from tests.test_scheduler import make_scheduler, render_offline, tone


def test_offline_worker_matches_the_synchronous_render() -> None:
    config = fake_config()
    audio = tone(1.3, 0.3)
    expected = render_offline(make_scheduler(FakeBackend(config), config), audio)

    async def main() -> tuple[list, set[str], str]:
        backend = FakeBackend(config)
        sched = make_scheduler(backend, config)
        worker = SchedulerWorker(sched)
        worker.start()
        sched.push_audio(audio, 16000)
        sched.end_input()
        frames = [frame async for frame in worker.frames()]
        await worker.stop()
        await worker.stop()  # idempotent
        return frames, backend.threads, threading.current_thread().name

    frames, threads, loop_thread = asyncio.run(main())
    assert [f.index for f in frames] == [f.index for f in expected]
    assert all(np.array_equal(a.rgb, b.rgb) for a, b in zip(frames, expected, strict=True))
    assert threads and loop_thread not in threads, "a model call ran on the event loop thread"


def test_live_worker_streams_idle_frames_in_order() -> None:
    config = fake_config(playout_delay_ms=520, compute_budget_ms=100)

    async def main() -> list:
        sched = make_scheduler(FakeBackend(config), config, clock=MonotonicClock())
        worker = SchedulerWorker(sched)
        worker.start()
        frames = []
        async for frame in worker.frames():
            frames.append(frame)
            if len(frames) == 12:
                break
        await worker.stop()
        return frames

    frames = asyncio.run(main())
    assert [f.index for f in frames] == list(range(12))
