"""Streaming equals offline on the real tiny model: chunking and live pacing never change a bit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.clock import VirtualClock
from engine.config import FPS, get_preset
from engine.models.livehuman import LiveHumanModel
from engine.runtime.torch_backend import TorchBackend
from tests.test_scheduler import make_scheduler, render_offline, run_live

RATE = 22050  # not the model rate, so the stateful resamplers are part of what is checked


@pytest.fixture(scope="module")
def backend() -> TorchBackend:
    torch.set_num_threads(1)  # bit-exactness must not depend on thread scheduling
    return TorchBackend(LiveHumanModel.random(get_preset("tiny")))


def speech_like(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(3)
    t = np.arange(int(seconds * RATE)) / RATE
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 2.5 * t)
    return (0.3 * envelope * (np.sin(2 * np.pi * 180 * t) + 0.3 * rng.standard_normal(t.size))).astype(
        np.float32
    )


def test_offline_output_does_not_depend_on_chunking(backend: TorchBackend) -> None:
    audio = speech_like(1.2)
    runs = []
    for chunk_s in (0.02, 0.137, None):
        chunk = int(chunk_s * RATE) if chunk_s else None
        sched = make_scheduler(backend, backend.config, seed=5)
        runs.append(render_offline(sched, audio, RATE, chunk))
    assert len(runs[0]) == round(1.2 * FPS)
    for other in runs[1:]:
        assert len(other) == len(runs[0])
        for a, b in zip(runs[0], other, strict=True):
            assert np.array_equal(a.rgb, b.rgb), f"frame {a.index} differs"
            assert np.array_equal(a.audio, b.audio), f"audio of frame {a.index} differs"
    assert len({a.rgb.tobytes() for a in runs[0]}) > 1, "a still video would prove nothing"


def test_live_under_virtual_clock_equals_offline_when_audio_is_on_time(backend: TorchBackend) -> None:
    seconds = 1.2
    audio = speech_like(seconds)
    offline = render_offline(make_scheduler(backend, backend.config, seed=5), audio, RATE, int(0.02 * RATE))

    clock = VirtualClock()
    sched = make_scheduler(backend, backend.config, clock=clock, seed=5)
    n = int(0.02 * RATE)
    pushes = [(i / RATE, audio[i : i + n]) for i in range(0, len(audio), n)]
    delay = backend.config.scheduler.playout_delay_ms / 1000
    live = run_live(sched, clock, until=delay + seconds + 0.5, pushes=pushes, rate=RATE)
    # Offline decodes the last held-back latent as it stands; live blends it with the next window.
    comparable = 4 * (math.ceil(len(offline) / 4) - backend.config.scheduler.overlap)
    assert comparable >= 24
    for a, b in zip(live[:comparable], offline[:comparable], strict=True):
        assert a.index == b.index and not a.repeated
        assert np.array_equal(a.rgb, b.rgb), f"frame {a.index} differs"
