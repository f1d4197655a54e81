"""Offline render: portrait + audio -> frames or an mp4, through the same scheduler the live path uses.

``render_frames`` is the array-level core (portrait and samples in, frames and report out) that
evaluation drives directly; ``render`` wraps it with file decoding and an mp4 writer. Both run one
loop, so an evaluated model is scored on exactly the frames a user's render would contain.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from engine.config import FPS, MODEL_SAMPLE_RATE, ModelConfig
from engine.generator import Conditioning
from engine.media import Mp4Writer, read_audio, read_image, read_video
from engine.metrics import SeamMeter
from engine.models.camera import CameraMove, check_camera
from engine.prompt import check_prompt
from engine.redub import MAX_SECONDS, check_source_length, check_video
from engine.runtime.base import Backend
from engine.scheduler import OutputFrame, Scheduler

log = logging.getLogger(__name__)

PUSH_CHUNK_S = 1.0  # offline pushes in big chunks: the output does not depend on chunking

FrameSink = Callable[[OutputFrame], None]
Progress = Callable[[int, int], None]  # (frames done, frames expected)


def with_overrides(config: ModelConfig, **scheduler: Any) -> ModelConfig:
    """The config with scheduler options from the command line applied (None leaves the config's
    value) and validated, so a bad combination is one ConfigError line before any work starts."""
    changes = {key: value for key, value in scheduler.items() if value is not None}
    return dataclasses.replace(config, scheduler=dataclasses.replace(config.scheduler, **changes)).validate()


def render(
    backend: Backend,
    image: str | Path,
    audio: str | Path,
    out: str | Path,
    *,
    config: ModelConfig | None = None,
    seed: int = 0,
    prompt: str = "",
    camera: CameraMove | None = None,
    video: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Render ``audio`` spoken by ``image`` to ``out`` (H.264 + AAC); returns the report. With
    ``video``, that video is re-dubbed instead (looped as long as the audio lasts; ``image`` unused)."""
    config = config or backend.config
    decoded = read_audio(audio)
    if video is not None:
        check_video(config)
        source = read_video(video, config.height, config.width, max_seconds=MAX_SECONDS)
        check_source_length(len(source))  # before the output file is opened
        portrait = source[0]
    else:
        source = None
        portrait = read_image(image, config.height, config.width)
    total = round(decoded.duration_s * FPS)
    with (
        Mp4Writer(out, config.width, config.height) as writer,
        tqdm(total=total, unit="frame", desc="render", disable=not progress, leave=False) as bar,
    ):
        return render_each(
            backend,
            portrait,
            decoded.mono(),
            decoded.sample_rate,
            config,
            seed=seed,
            prompt=prompt,
            camera=camera,
            video=source,
            sink=lambda frame: writer.write(frame.rgb, frame.audio),
            progress=lambda done, _total: bar.update(done - bar.n),
        )


def render_frames(
    backend: Backend,
    portrait: np.ndarray,
    audio: np.ndarray,
    config: ModelConfig | None = None,
    *,
    sample_rate: int = MODEL_SAMPLE_RATE,
    seed: int = 0,
    prompt: str = "",
    camera: CameraMove | None = None,
    video: np.ndarray | None = None,
    progress: Progress | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """``audio`` (mono float32) spoken by ``portrait`` ((H, W, 3) uint8 at the config's size), or
    re-dubbed onto ``video`` ((F, H, W, 3) uint8 at 25 fps, looped; ``portrait`` is then its frame 0).

    Returns ``(frames, report)``: frames (round(seconds * 25), H, W, 3) uint8 as ``render`` would
    encode them, and the same report.
    """
    config = config or backend.config
    expected = (config.height, config.width, 3)
    if portrait.shape != expected or portrait.dtype != np.uint8:
        raise ValueError(f"portrait must be uint8 {expected}, got {portrait.dtype} {portrait.shape}")
    frames: list[np.ndarray] = []
    report = render_each(
        backend,
        portrait,
        np.asarray(audio, np.float32),
        sample_rate,
        config,
        seed=seed,
        prompt=prompt,
        camera=camera,
        video=video,
        sink=lambda frame: frames.append(frame.rgb),
        progress=progress,
    )
    stacked = np.stack(frames) if frames else np.zeros((0, *expected), np.uint8)
    return stacked, report


def render_each(
    backend: Backend,
    portrait: np.ndarray,
    samples: np.ndarray,
    sample_rate: int,
    config: ModelConfig,
    *,
    sink: FrameSink,
    seed: int = 0,
    prompt: str = "",
    camera: CameraMove | None = None,
    video: np.ndarray | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Push all audio, then generate and hand every released frame to ``sink`` in order; returns
    the report. For runs too long to hold in memory (``render_frames`` keeps every frame)."""
    duration_s = len(samples) / sample_rate
    wall_start = time.perf_counter()
    check_camera(config, camera)
    check_prompt(config, prompt)
    if video is None:
        conditioning = Conditioning.from_portrait(backend, portrait, prompt)
    else:
        check_video(config)
        conditioning = Conditioning.from_video(backend, video, prompt)
    scheduler = Scheduler(backend, conditioning, config, seed=seed, portrait=portrait)
    if camera is not None:
        scheduler.set_camera(camera)
    chunk = max(int(PUSH_CHUNK_S * sample_rate), 1)
    push_start = time.perf_counter()
    for offset in range(0, len(samples), chunk):
        scheduler.push_audio(samples[offset : offset + chunk], sample_rate)
    scheduler.end_input()

    meter = SeamMeter(config.scheduler.stride)
    total = round(duration_s * FPS)
    first_frame_at: float | None = None
    frames = 0
    while not scheduler.done:
        worked = scheduler.work()
        meter.window_starts.update(4 * r.start for r in scheduler.records if r.steps and r.start > 0)
        released = scheduler.release()
        for frame in released:
            sink(frame)
            meter.update(frame.rgb)
        if released and first_frame_at is None:
            first_frame_at = time.perf_counter()
        frames += len(released)
        if released and progress is not None:
            progress(frames, total)
        if not worked and not released:
            raise RuntimeError("scheduler stalled: no window is ready after end of input")
    wall_s = time.perf_counter() - wall_start
    return _report(scheduler, meter, duration_s, frames, wall_s, first_frame_at, push_start, config)


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
