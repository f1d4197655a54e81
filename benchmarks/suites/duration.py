"""``duration``: hours of live streaming, compressed: memory, bounded state and identity drift.

A live-commerce stream runs for hours, so what matters is what grows. The live scheduler runs on
a virtual clock that moves 20 ms per tick, with real speech pushed in 20 ms packets as a session
receives it: the shipped sample, then a pause with nothing pushed (the avatar idles), over and
over. Compute runs as fast as the machine allows and the clock moves only once the scheduler has
caught up, so every window is on time and 30 minutes of stream cost 30 minutes x rtf of compute;
every live code path (deadlines, timeline trimming, snapshots, bounded records, segments) runs
as in a session, minus the wall-clock waits. Latency is the e2e suite's job.

Recorded every ``SAMPLE_S`` of stream: the process RSS and ``Scheduler.state_sizes()``; per
frame: the identity distance (CIEDE2000 over block means) to the portrait, whose least-squares
slope per minute and final mean are the drift. Memory is flat when the largest RSS in the last
third after warm-up is within 5% of the largest in the first third (``memory_growth``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks.harness import ASSETS, RATE, BenchOptions, Failures, LoadSampler, load_backend, speech, table
from benchmarks.report import base_result, evaluate_goals

TICK_S = 0.02  # one 20 ms packet per tick, as a session receives speech
PAUSE_S = 3.0  # nothing pushed after each pass of the speech sample: the avatar idles
SAMPLE_S = 5.0  # RSS and state sizes every this much stream
DRIFT_BLOCK = 250  # frames scored together (10 s)


def rss_mb() -> float:
    """The resident set now (not the peak), in MiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    import resource

    return pages * resource.getpagesize() / 2**20


def warmup_seconds(seconds: float) -> float:
    """A minute, or a sixth of a short run: caches, allocator pools and the first windows settle."""
    return min(60.0, seconds / 6.0)


def memory_growth(samples: list[tuple[float, float]], warmup_s: float) -> float | None:
    """Largest RSS in the last third of the run after warm-up over the largest in its first third,
    less 1 (0.03: 3% more). The allocator swings RSS by a few percent around a level as windows
    come and go; those swings land in both thirds, a leak only raises the last. None without
    enough samples."""
    after = [mb for t, mb in samples if t > warmup_s]
    third = len(after) // 3
    if third < 1:
        return None
    return max(after[-third:]) / max(after[:third]) - 1.0


def state_ratio(samples: list[list[Any]], column: int, warmup_s: float) -> float | None:
    """Largest size in the second half of the run after warm-up over the largest in the first half.

    A leak grows with the stream, so its second half holds more (a ratio towards 2 when it grows
    linearly); bounded state comes back to the same sizes (about 1). The window records are a
    fixed-size ring (``Scheduler.records.maxlen``) that a short run may not fill: left out."""
    rows = [r for r in samples if r[0] > warmup_s]
    half = len(rows) // 2
    if half < 1:
        return None
    first = max(r[column] for r in rows[:half])
    second = max(r[column] for r in rows[half:])
    return second / first if first else (1.0 if second == 0 else float("inf"))


def _stream(
    backend: Any, config: Any, seconds: float, progress: bool, video: str | None = None
) -> dict[str, Any]:
    """Run the live scheduler for ``seconds`` of stream; per-sample RSS/state and per-frame distance.
    With ``video``, a re-dub session: the source loops under the speech, and the distance is to
    its first frame."""
    from engine.clock import VirtualClock
    from engine.generator import Conditioning
    from engine.media import read_image, read_video
    from engine.redub import MAX_SECONDS
    from engine.scheduler import Scheduler
    from engine.training.estimators import identity_distance

    if video is None:
        portrait = read_image(ASSETS / "portrait.png", config.height, config.width)
        conditioning = Conditioning.from_portrait(backend, portrait, "")
    else:
        frames = read_video(video, config.height, config.width, MAX_SECONDS)
        conditioning = Conditioning.from_video(backend, frames, "")
        portrait = frames[0]
    voice = speech()
    cycle = len(voice) + int(PAUSE_S * RATE)
    packet = int(TICK_S * RATE)
    clock = VirtualClock()
    scheduler = Scheduler(backend, conditioning, config, clock=clock, portrait=portrait)
    ticks = int(round(seconds / TICK_S))
    per_sample = max(int(round(SAMPLE_S / TICK_S)), 1)
    samples: list[list[Any]] = []
    distance: list[np.ndarray] = []
    block: list[np.ndarray] = []
    frames = 0
    wall = time.perf_counter()
    with tqdm(total=ticks, unit="tick", desc="duration", disable=not progress, mininterval=2.0) as bar:
        for tick in range(ticks):
            offset = (tick * packet) % cycle
            if offset < len(voice):
                scheduler.push_audio(voice[offset : offset + packet], RATE)
            while scheduler.work():
                pass
            for frame in scheduler.release():
                block.append(frame.rgb)
                frames += 1
            scheduler.drain_events()  # a session hands these to its listeners
            if len(block) >= DRIFT_BLOCK:
                distance.append(identity_distance(np.stack(block), portrait))
                block.clear()
            clock.advance(TICK_S)
            if (tick + 1) % per_sample == 0:
                samples.append([round(clock.now(), 3), rss_mb(), *scheduler.state_sizes().values()])
            bar.update(1)
    if block:
        distance.append(identity_distance(np.stack(block), portrait))
    return {
        "frames": frames,
        "wall_s": time.perf_counter() - wall,
        "samples": samples,
        "state_keys": list(scheduler.state_sizes()),
        "distance": np.concatenate(distance) if distance else np.zeros(0),
        "stats": scheduler.stats,
    }


def run(options: BenchOptions) -> dict[str, Any]:
    from engine.training.evaluate import drift

    failures = Failures()
    seconds = options.duration or (20.0 if options.smoke else 1800.0)
    options.duration = seconds
    warmup_s = warmup_seconds(seconds)
    with LoadSampler() as load:
        backend, backend_info = load_backend(options.backend, options.preset, options.threads)
        config = backend.config
        out = _stream(backend, config, seconds, options.progress, options.extra.get("video"))
    columns = ["stream_s", "rss_mb", *out["state_keys"]]
    rss = [(row[0], row[1]) for row in out["samples"]]
    after = [row for row in out["samples"] if row[0] > warmup_s]
    at_warmup = [row for row in out["samples"] if row[0] <= warmup_s]
    ratios = {
        key: state_ratio(out["samples"], i, warmup_s)
        for i, key in enumerate(columns)
        if i >= 2 and key != "records"
    }
    figures = drift(out["distance"])
    growth = memory_growth(rss, warmup_s)
    media_s = out["frames"] / 25.0
    result = base_result("duration", options, backend_info, config, load.report(), failures)
    result.update(
        {
            "seconds": seconds,
            "frames": out["frames"],
            "wall_s": out["wall_s"],
            "wall_rtf": out["wall_s"] / media_s if media_s else None,
            "warmup_s": warmup_s,
            "rss_warm_mb": at_warmup[-1][1] if at_warmup else None,
            "rss_max_after_warmup_mb": max((r[1] for r in after), default=None),
            "memory_growth_frac": growth,
            "state_ratio": ratios,
            "drift_slope": figures["drift_slope"],
            "drift_final": figures["drift_final"],
            "identity_distance_first_minute": float(out["distance"][: 60 * 25].mean())
            if len(out["distance"])
            else None,
            "scheduler_stats": {
                "repeated": out["stats"].repeated,
                "dropped": out["stats"].dropped,
            },
            "records": {
                "samples": table(columns, out["samples"]),
                "distance_per_second": table(
                    ("second", "identity_distance"),
                    [[i, float(v)] for i, v in enumerate(_per_second(out["distance"]))],
                ),
            },
        }
    )
    result["summary"] = {
        "memory_growth_frac": growth,
        "rss_warm_mb": result["rss_warm_mb"],
        "drift_slope_abs": None if figures["drift_slope"] is None else abs(figures["drift_slope"]),
        "drift_final": figures["drift_final"],
        "stream_seconds": media_s,
        "wall_rtf": result["wall_rtf"],
        "state_ratio_max": max((v for v in ratios.values() if v is not None), default=None),
    }
    result["goals"] = evaluate_goals("duration", result["summary"])
    return result


def _per_second(distance: np.ndarray) -> np.ndarray:
    n = len(distance) // 25
    return distance[: n * 25].reshape(n, 25).mean(axis=1) if n else np.zeros(0)
