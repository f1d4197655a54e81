"""A live session fans the same paced frames out to every subscriber and closes cleanly."""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from stream.session import Session, SessionOptions
from tests.fakes import SIZE, FakeBackend, fake_config
from tests.test_scheduler import tone


async def _collect(subscription, n: int) -> list:  # noqa: ANN001
    frames = []
    async for frame in subscription:
        frames.append(frame)
        if len(frames) == n:
            break
    return frames


def test_subscribers_get_the_same_frames_and_events_arrive() -> None:
    config = fake_config(playout_delay_ms=520, compute_budget_ms=100)

    async def main() -> tuple[list, list, list, int]:
        portrait = np.zeros((SIZE, SIZE, 3), np.uint8)
        session = await Session.create("s1", FakeBackend(config), config, portrait, SessionOptions(seed=1))
        events = []
        session.add_listener(events.append)
        a, b = session.subscribe(), session.subscribe()
        session.push_audio(tone(0.3, 0.5), 16000)
        session.end_segment()
        frames_a, frames_b = await asyncio.gather(_collect(a, 30), _collect(b, 30))
        threads_before = threading.active_count()
        await session.close()
        await session.close()
        rest = [frame async for frame in a]  # ends: the session closed
        return frames_a, frames_b, events, threads_before - threading.active_count() + len(rest)

    frames_a, frames_b, events, stopped = asyncio.run(main())
    assert [f.index for f in frames_a] == [f.index for f in frames_b]
    assert frames_a[0].index <= 1 and frames_a[-1].index - frames_a[0].index == 29
    assert [e.kind for e in events] == ["playback_started", "playback_finished"]
    assert stopped >= 1, "the worker thread stopped"
