"""A live change made mid-stream, seen at the DiT's input and in the frames: shared by the camera
and prompt tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from engine.config import ModelConfig, get_preset
from engine.generator import Conditioning
from engine.models.livehuman import LiveHumanModel
from engine.runtime.torch_backend import TorchBackend
from engine.scheduler import Scheduler
from tests.test_scheduler import tone


class LiveChange(NamedTuple):
    inputs: list[torch.Tensor]  # the recorded DiT input of every call
    before: int  # calls made before the change
    config: ModelConfig
    frames: np.ndarray  # (F, H, W, 3) every frame released
    scheduler: Scheduler


def around_a_change(
    argument: int,
    change: Callable[[Scheduler, TorchBackend], None] | None,
    seconds: float = 3.0,
    config: ModelConfig | None = None,
) -> LiveChange:
    """The random tiny model (or ``config``'s) through the offline scheduler, recording DiT input
    ``argument`` of every call, with ``change(scheduler, backend)`` made after three windows (none
    when ``change`` is None: the same run unchanged, to compare with)."""
    config = config or get_preset("tiny")
    backend = TorchBackend(LiveHumanModel.random(config))
    recorded: list[torch.Tensor] = []
    dit_step = backend.dit_step

    def recording(*args: torch.Tensor) -> torch.Tensor:
        recorded.append(args[argument].clone())
        return dit_step(*args)

    backend.dit_step = recording  # type: ignore[method-assign]
    portrait = np.random.default_rng(0).integers(0, 255, (config.height, config.width, 3), dtype=np.uint8)
    scheduler = Scheduler(backend, Conditioning.from_portrait(backend, portrait), config)
    scheduler.push_audio(tone(seconds), 16000)
    scheduler.end_input()
    frames = []
    for _ in range(3):
        scheduler.work()
    before = len(recorded)
    if change is not None:
        change(scheduler, backend)
    while not scheduler.done:
        scheduler.work()
        frames += [f.rgb for f in scheduler.release()]
    return LiveChange(recorded, before, config, np.stack(frames), scheduler)
