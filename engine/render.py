"""Offline render: portrait + audio file -> mp4, through the same scheduler the live path uses."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from engine.config import FPS, BlendMode, ModelConfig
from engine.generator import Conditioning
from engine.media import Mp4Writer, read_audio, read_image
from engine.metrics import SeamMeter
from engine.runtime.base import Backend
from engine.scheduler import Scheduler

log = logging.getLogger(__name__)

PUSH_CHUNK_S = 1.0  # offline pushes in big chunks: the output does not depend on chunking


def with_overrides(
    config: ModelConfig, steps: int | None = None, blend: BlendMode | None = None
) -> ModelConfig:
    """The config with scheduler options from the command line applied (and validated)."""
    scheduler = config.scheduler
    if steps is not None:
        scheduler = dataclasses.replace(scheduler, steps=steps)
    if blend is not None:
        scheduler = dataclasses.replace(scheduler, blend=blend)
    return dataclasses.replace(config, scheduler=scheduler).validate()


def render(
    backend: Backend,
    image: str | Path,
    audio: str | Path,
    out: str | Path,
    *,
    config: ModelConfig | None = None,
    seed: int = 0,
    prompt: str = "",
    progress: bool = True,
) -> dict[str, Any]:
    """Render ``audio`` spoken by ``image`` to ``out`` (H.264 + AAC); returns the report."""
    config = config or backend.config
    decoded = read_audio(audio)
    portrait = read_image(image, config.height, config.width)
    wall_start = time.perf_counter()
    conditioning = Conditioning.from_portrait(backend, portrait, prompt)
    scheduler = Scheduler(backend, conditioning, config, seed=seed, portrait=portrait)
    samples = decoded.mono()
    chunk = max(int(PUSH_CHUNK_S * decoded.sample_rate), 1)
    push_start = time.perf_counter()
    for offset in range(0, len(samples), chunk):
        scheduler.push_audio(samples[offset : offset + chunk], decoded.sample_rate)
    scheduler.end_input()

    meter = SeamMeter(config.scheduler.stride)
    total = round(decoded.duration_s * FPS)
    first_frame_at: float | None = None
    frames = 0
    with (
        Mp4Writer(out, config.width, config.height) as writer,
        tqdm(total=total, unit="frame", desc="render", disable=not progress, leave=False) as bar,
    ):
        while not scheduler.done:
            worked = scheduler.work()
            meter.window_starts.update(4 * r.start for r in scheduler.records if r.steps and r.start > 0)
            released = scheduler.release()
            for frame in released:
                writer.write(frame.rgb, frame.audio)
                meter.update(frame.rgb)
            if released and first_frame_at is None:
                first_frame_at = time.perf_counter()
            frames += len(released)
            bar.update(len(released))
            if not worked and not released:
                raise RuntimeError("scheduler stalled: no window is ready after end of input")
    wall_s = time.perf_counter() - wall_start
    return _report(scheduler, meter, decoded.duration_s, frames, wall_s, first_frame_at, push_start, config)


def _report(
    scheduler: Scheduler,
    meter: SeamMeter,
    audio_s: float,
    frames: int,
    wall_s: float,
    first_frame_at: float | None,
    push_start: float,
    config: ModelConfig,
) -> dict[str, Any]:
    """The figures users compare runs by. ``rtf`` counts model compute only; ``wall_rtf`` adds
    everything (file decode, conditioning, encoding)."""
    records = [r for r in scheduler.records if r.steps]
    stages: dict[str, list[float]] = {}
    for record in scheduler.records:
        for stage, ms in record.timings_ms.items():
            stages.setdefault(stage, []).append(ms)
    compute_s = sum(sum(r.timings_ms.values()) for r in scheduler.records) / 1000.0
    video_s = frames / FPS
    return {
        "preset": config.name,
        "frames": frames,
        "fps": FPS,
        "audio_duration_s": round(audio_s, 4),
        "video_duration_s": video_s,
        "windows": len(records),
        "steps": config.scheduler.steps,
        "steps_per_window": scheduler.stats.steps_used,
        "window": config.scheduler.window,
        "overlap": config.scheduler.overlap,
        "blend": config.scheduler.blend,
        **meter.report(),
        "rtf": compute_s / video_s if video_s else None,
        "wall_rtf": wall_s / video_s if video_s else None,
        "first_frame_latency_ms": None if first_frame_at is None else (first_frame_at - push_start) * 1000.0,
        "stage_ms": {stage: float(np.mean(values)) for stage, values in stages.items()},
        "window_ms": [sum(r.timings_ms.values()) for r in records],
    }
