"""A local microphone as a session's audio source (``livehuman live --mic``), via sounddevice.

The audio callback runs on PortAudio's thread and must never block: it only copies the block
and hands it to the event loop, which pushes it into the session.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from stream.session import Session

log = logging.getLogger(__name__)

BLOCK_S = 0.02  # 20 ms blocks, like every other source


class MicrophoneUnavailable(RuntimeError):
    """sounddevice or its PortAudio library is missing, or no input device opens; one line."""


class InputStream(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...


StreamFactory = Callable[..., InputStream]


def _sounddevice_stream(**kwargs: Any) -> InputStream:
    try:
        import sounddevice
    except (ImportError, OSError) as exc:  # OSError: the PortAudio library itself is missing
        raise MicrophoneUnavailable(
            "the microphone needs sounddevice and PortAudio: pip install 'livehuman[mic]' and "
            "apt-get install libportaudio2"
        ) from exc
    try:
        return sounddevice.InputStream(**kwargs)
    except sounddevice.PortAudioError as exc:
        raise MicrophoneUnavailable(f"cannot open the microphone: {exc}") from exc


class MicrophoneSource:
    """Feeds ``session`` from an input device until ``stop()`` (idempotent)."""

    def __init__(
        self,
        session: Session,
        device: int | str | None = None,
        sample_rate: int = 16_000,
        stream_factory: StreamFactory = _sounddevice_stream,
    ) -> None:
        self.session = session
        self.sample_rate = sample_rate
        self.blocks = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stream = stream_factory(
            device=device,
            samplerate=sample_rate,
            channels=1,
            dtype="float32",
            blocksize=int(sample_rate * BLOCK_S),
            callback=self._callback,
        )

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stream.start()

    def _callback(self, block: np.ndarray, frames: int, time: object, status: object) -> None:
        if status:
            log.warning("microphone: %s", status)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._push, block[:, 0].copy())

    def _push(self, samples: np.ndarray) -> None:
        self.blocks += 1
        self.session.push_audio(samples, self.sample_rate)

    def stop(self) -> None:
        if self._loop is None:
            return
        self._loop = None
        self._stream.stop()
        self._stream.close()
