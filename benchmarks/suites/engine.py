"""``engine``: offline scheduler throughput and latency, per window and per stage, and a sweep of the
window geometry and step count that shows the latency-quality trade-off.

The main run pushes ``duration`` seconds of speech and drives the real scheduler offline (no
file I/O, no encoding), recording every window: its stages (audio, dit, blend, decode, color from
``WindowRecord.timings_ms``), its service time and the idle gap before it. A one-second render
warms caches first and is discarded. The sweep renders the same speech for each (W, O) x steps
point with seam ratio and motion beside its latency floor (audio wait + window compute p95).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

from tqdm import tqdm

from benchmarks.harness import (
    ASSETS,
    RATE,
    BenchOptions,
    Failures,
    LoadSampler,
    current_peak_mb,
    load_backend,
    peak_rss_mb,
    reset_peak_rss,
    speech,
    table,
)
from benchmarks.report import base_result, evaluate_goals, pct

STAGES = ("audio", "dit", "blend", "decode", "color")
GEOMETRIES = ((2, 1), (3, 1), (4, 2))
STEPS = (1, 2, 4)
SUMMARY_KEYS = (
    "rtf",
    "wall_rtf",
    "sustained_fps",
    "first_frame_latency_ms",
    "window_compute_p50_ms",
    "window_compute_p95_ms",
    "peak_rss_mb",
    "seam_ratio",
)


def sweep_config(config: Any, window: int, overlap: int, steps: int) -> Any:
    """The config at another geometry; the playout delay grows to cover the larger audio wait."""
    scheduler = dataclasses.replace(config.scheduler, window=window, overlap=overlap, steps=steps)
    config = dataclasses.replace(config, scheduler=scheduler)
    delay = max(scheduler.playout_delay_ms, math.ceil(config.audio_wait_ms) + scheduler.compute_budget_ms)
    return dataclasses.replace(
        config, scheduler=dataclasses.replace(scheduler, playout_delay_ms=delay)
    ).validate()


def render_once(
    backend: Any, conditioning: Any, portrait: Any, config: Any, samples: Any, seed: int = 0
) -> dict:
    """One offline pass through the scheduler, as ``engine.render`` does it minus the mp4."""
    from engine.metrics import SeamMeter
    from engine.scheduler import Scheduler

    scheduler = Scheduler(backend, conditioning, config, seed=seed, portrait=portrait)
    meter = SeamMeter(config.scheduler.stride)
    pushed = time.perf_counter()
    scheduler.push_audio(samples, RATE)
    scheduler.end_input()
    first_frame_at = None
    frames = 0
    while not scheduler.done:
        worked = scheduler.work()
        meter.window_starts.update(4 * r.start for r in scheduler.records if r.steps and r.start > 0)
        released = scheduler.release()
        for out in released:
            meter.update(out.rgb)
        if released and first_frame_at is None:
            first_frame_at = time.perf_counter()
        frames += len(released)
        if not worked and not released:
            raise RuntimeError("scheduler stalled after end of input")
    wall = time.perf_counter() - pushed
    records = list(scheduler.records)
    compute_s = sum(sum(r.timings_ms.values()) for r in records) / 1000.0
    media_s = frames / 25.0
    return {
        "records": records,
        "pushed": pushed,
        "frames": frames,
        "wall_s": wall,
        "rtf": compute_s / media_s if media_s else None,
        "wall_rtf": wall / media_s if media_s else None,
        "first_frame_latency_ms": None if first_frame_at is None else (first_frame_at - pushed) * 1000.0,
        **meter.report(),
    }


def run(options: BenchOptions) -> dict[str, Any]:
    from engine.generator import Conditioning
    from engine.media import read_image

    failures = Failures()
    seconds = options.duration or (1.0 if options.smoke else 20.0)
    options.duration = seconds
    sweep_seconds = float(options.get("sweep_seconds", 0.64 if options.smoke else 8.0))
    geometries = GEOMETRIES[:2] if options.smoke else GEOMETRIES
    steps_list = (1,) if options.smoke else STEPS
    with LoadSampler() as load:
        backend, backend_info = load_backend(options.backend, options.preset, options.threads)
        config = backend.config
        portrait = read_image(ASSETS / "portrait.png", config.height, config.width)
        t = time.perf_counter()
        conditioning = Conditioning.from_portrait(backend, portrait, "")
        conditioning_ms = (time.perf_counter() - t) * 1000.0
        render_once(backend, conditioning, portrait, config, speech(0.4 if options.smoke else 1.0))  # warm-up
        reset = reset_peak_rss()
        main = render_once(backend, conditioning, portrait, config, speech(seconds))
        peak = (current_peak_mb() if reset else None) or peak_rss_mb()

        sweep = []
        points = [(w, o, s) for w, o in geometries for s in steps_list]
        with tqdm(total=len(points), desc="engine sweep", unit="point", disable=not options.progress) as bar:
            for window, overlap in geometries:
                geometry_backend = None
                with failures.guard(f"sweep W={window} O={overlap}: backend"):
                    geometry_backend = _geometry_backend(
                        backend, backend_info, options, config, window, overlap
                    )
                if geometry_backend is None:
                    bar.update(len(steps_list))
                    continue
                for steps in steps_list:
                    with failures.guard(f"sweep W={window} O={overlap} steps={steps}"):
                        sweep.append(
                            _point(
                                geometry_backend,
                                conditioning,
                                portrait,
                                config,
                                window,
                                overlap,
                                steps,
                                sweep_seconds,
                            )
                        )
                    bar.update(1)

    windows = [r for r in main["records"] if r.steps]
    window_ms = [sum(r.timings_ms.values()) for r in windows]
    stride = config.scheduler.stride
    rows = []
    previous_end = main["pushed"]
    for r in main["records"]:
        rows.append(
            [
                r.start,
                r.steps,
                r.frames,
                *(r.timings_ms.get(s) for s in STAGES),
                sum(r.timings_ms.values()),
                (r.ended - r.began) * 1000.0,
                (r.began - previous_end) * 1000.0,
                (r.began - main["pushed"]) * 1000.0,
            ]
        )
        previous_end = r.ended
    result = base_result("engine", options, backend_info, config, load.report(), failures)
    result.update(
        {
            "seconds": seconds,
            "frames": main["frames"],
            "conditioning_ms": conditioning_ms,
            "rtf": main["rtf"],
            "wall_rtf": main["wall_rtf"],
            "sustained_fps": main["frames"] / main["wall_s"],
            "first_frame_latency_ms": main["first_frame_latency_ms"],
            "window_compute_ms": pct(window_ms),
            "window_media_ms": stride * 4 * 40.0,
            "frame_compute_ms": pct(
                [ms / max(r.frames, 1) for ms, r in zip(window_ms, windows, strict=True)]
            ),
            "stage_ms": {s: pct([r.timings_ms.get(s) for r in windows]) for s in STAGES},
            "peak_rss_mb": peak,
            "peak_rss_scope": "this render (VmHWM reset before it)" if reset else "whole process (ru_maxrss)",
            "seam_ratio": main["seam_ratio"],
            "motion": main["motion"],
            "sweep": sweep,
            "records": {
                "windows": table(
                    (
                        "start",
                        "steps",
                        "frames",
                        *STAGES,
                        "compute_ms",
                        "service_ms",
                        "gap_ms",
                        "began_ms",
                    ),  # fmt: skip
                    rows,
                )
            },
        }
    )
    result["summary"] = {
        "rtf": result["rtf"],
        "wall_rtf": result["wall_rtf"],
        "sustained_fps": result["sustained_fps"],
        "first_frame_latency_ms": result["first_frame_latency_ms"],
        "window_compute_p50_ms": result["window_compute_ms"]["p50"],
        "window_compute_p95_ms": result["window_compute_ms"]["p95"],
        "peak_rss_mb": peak,
        "seam_ratio": result["seam_ratio"],
        **{f"stage_{s}_p50_ms": result["stage_ms"][s]["p50"] for s in STAGES},
        **{
            f"sweep_W{p['window']}O{p['overlap']}s{p['steps']}_compute_p50_ms": p["window_compute_ms"]["p50"]
            for p in sweep
        },
    }
    result["goals"] = evaluate_goals("engine", result["summary"])
    return result


def _geometry_backend(
    backend: Any, backend_info: dict[str, Any], options: BenchOptions, config: Any, window: int, overlap: int
) -> Any:
    """The backend for one sweep geometry: torch takes any shape, an export only its own."""
    if backend_info["loaded"] == "torch" or (window, overlap) == (
        config.scheduler.window,
        config.scheduler.overlap,
    ):
        return backend
    scheduler = sweep_config(config, window, overlap, config.scheduler.steps).scheduler
    return load_backend(options.backend, options.preset, options.threads, scheduler=scheduler)[0]


def _point(
    backend: Any,
    conditioning: Any,
    portrait: Any,
    config: Any,
    window: int,
    overlap: int,
    steps: int,
    seconds: float,
) -> dict[str, Any]:
    cfg = sweep_config(config, window, overlap, steps)
    # Warmed like the main run: a compiled backend recompiles for a new window shape (13 s for
    # the first W=3 window on an H100), which would otherwise be timed as that point's p95.
    render_once(backend, conditioning, portrait, cfg, speech(min(seconds, 1.0)))
    out = render_once(backend, conditioning, portrait, cfg, speech(seconds))
    compute = pct([sum(r.timings_ms.values()) for r in out["records"] if r.steps])
    return {
        "window": window,
        "overlap": overlap,
        "steps": steps,
        "seconds": seconds,
        "window_media_ms": cfg.scheduler.stride * 4 * 40.0,
        "window_compute_ms": compute,
        "rtf": out["rtf"],
        "first_frame_latency_ms": out["first_frame_latency_ms"],
        "audio_wait_ms": cfg.audio_wait_ms,
        "min_playout_delay_ms": cfg.audio_wait_ms + cfg.scheduler.compute_budget_ms,
        "latency_floor_ms": cfg.audio_wait_ms + (compute["p95"] or 0.0),
        "seam_ratio": out["seam_ratio"],
        "motion": out["motion"],
    }
