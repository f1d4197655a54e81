"""A live session fans the same paced frames out to every subscriber and closes cleanly; one made
from a video re-dubs it."""

from __future__ import annotations

import asyncio
import dataclasses
import threading

import numpy as np
import pytest

from engine.config import Capabilities, ConfigError
from engine.media import read_video
from engine.redub import MAX_SECONDS, mirror_loop
from stream.session import LateFrameWatch, Session, SessionOptions
from tests.fakes import SIZE, FakeBackend, fake_config
from tests.test_cli import write_video
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


def test_a_session_redubs_a_video_in_step_with_its_loop(tmp_path) -> None:  # noqa: ANN001
    """Silence on the fake backend generates exactly the source's VAE round trip, so what a
    re-dubbing session shows is the source video itself, frame i of the stream on loop frame i."""
    config = dataclasses.replace(
        fake_config(playout_delay_ms=520, compute_budget_ms=100), capabilities=Capabilities(video=True)
    )
    video = read_video(write_video(tmp_path / "host.mp4", frames=31), SIZE, SIZE, MAX_SECONDS)

    async def main() -> tuple[Session, list]:
        session = await Session.create("v1", FakeBackend(config), config, None, video=video)
        subscription = session.subscribe()
        session.push_audio(np.zeros(8000, np.float32), 16000)
        session.end_segment()
        frames = await _collect(subscription, 12)
        await session.close()
        return session, frames

    session, frames = asyncio.run(main())
    assert session.source == "video" and np.array_equal(session.portrait, video[0])
    loop = mirror_loop(video)
    for frame in frames:
        assert np.array_equal(frame.rgb, loop[frame.index % len(loop)]), frame.index


def test_a_session_takes_one_source_and_refuses_a_video_the_model_cannot_redub() -> None:
    config = fake_config()
    portrait, video = np.zeros((SIZE, SIZE, 3), np.uint8), np.zeros((30, SIZE, SIZE, 3), np.uint8)

    async def create(**sources: np.ndarray | None) -> None:
        await Session.create("x", FakeBackend(config), config, sources.pop("portrait", None), **sources)

    with pytest.raises(ValueError, match="exactly one"):
        asyncio.run(create(portrait=portrait, video=video))
    with pytest.raises(ValueError, match="exactly one"):
        asyncio.run(create())
    with pytest.raises(ConfigError, match=r"^video: model .* cannot re-dub a video"):
        asyncio.run(create(video=video))


def test_late_pictures_past_one_percent_of_a_span_are_one_warning_naming_the_session(caplog) -> None:  # noqa: ANN001
    watch = LateFrameWatch("s9", span_frames=250, max_late_ratio=0.01)
    # Span 1: 2 of 250 late (0.8%), tolerated. Span 2: 3 of 250 (1.2%), one warning at its end.
    # Span 3: none late, no warning: the count starts again each span.
    late_at = {10, 20, 250 + 5, 250 + 6, 250 + 7}
    with caplog.at_level("WARNING", logger="stream.session"):
        warned = [i for i in range(750) if watch.observe(i in late_at)]
    assert warned == [499]
    assert len(caplog.records) == 1
    assert caplog.records[0].getMessage().startswith("session s9: 3 of the last 250 frames repeated")

