"""The microphone source hands PortAudio's blocks to the session without blocking the callback."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from stream.microphone import MicrophoneSource, MicrophoneUnavailable, _sounddevice_stream
from stream.session import Session
from tests.fakes import SIZE, FakeBackend, fake_config


class FakeInputStream:
    """Calls back from its own thread, as PortAudio does, with 20 ms blocks of a tone."""

    def __init__(self, samplerate: int, blocksize: int, callback, **_: object) -> None:  # noqa: ANN001
        self.rate, self.blocksize, self.callback = samplerate, blocksize, callback
        self.running = threading.Event()
        self.closed = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while self.running.is_set() and n < 25:
            t = (np.arange(self.blocksize) + n * self.blocksize) / self.rate
            self.callback(
                (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)[:, None], self.blocksize, None, None
            )
            n += 1

    def start(self) -> None:
        self.running.set()
        self.thread.start()

    def stop(self) -> None:
        self.running.clear()
        self.thread.join()

    def close(self) -> None:
        self.closed = True


def test_blocks_from_the_audio_thread_reach_the_session_as_one_segment() -> None:
    config = fake_config(playout_delay_ms=520, compute_budget_ms=100)

    async def main() -> tuple[MicrophoneSource, int, set[int | None]]:
        portrait = np.zeros((SIZE, SIZE, 3), np.uint8)
        session = await Session.create("mic", FakeBackend(config), config, portrait)
        source = MicrophoneSource(session, stream_factory=FakeInputStream)
        source.start()
        while source.blocks < 25:
            await asyncio.sleep(0.01)
        timeline = session.scheduler.timeline
        speech = timeline.speech_end
        segments = {timeline.segment_at(p) for p in range(speech - 25 * 320 + 1, speech, 320)}
        source.stop()
        source.stop()  # idempotent
        await session.close()
        return source, speech, segments

    source, speech_end, segments = asyncio.run(main())
    assert source.blocks == 25
    assert speech_end >= 25 * 320  # half a second of speech is on the timeline
    assert segments == {1}, "one utterance, no gaps"
    assert source._stream.closed


def test_a_missing_sounddevice_is_a_one_line_error(monkeypatch) -> None:  # noqa: ANN001
    import builtins

    real_import = builtins.__import__

    def no_sounddevice(name, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sounddevice)
    with pytest.raises(MicrophoneUnavailable, match="libportaudio2"):
        _sounddevice_stream(samplerate=16000)
