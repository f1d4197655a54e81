"""``scale``: how many sessions one server holds at real time, and what each extra viewer costs.

1. Sessions: N = 1, 2, 4, ... concurrent sessions on one bench server, one viewer each, all
   speaking at real time for ``duration`` s. A step holds when every session shows >= 24.5 fresh
   fps at its viewer, <= 1% of its frames late (repeated by the server) or dropped, and a
   glass-to-glass p95 under the target. The ramp stops at the first step that does not hold.
2. Viewers: one session with M = 1, 2, 4, ... viewers; the server process's CPU time (``os.times``
   in the server, read through its probe) per second of stream at each M, and the slope: the CPU
   cost of one more viewer. (The shared encoder runs once per session; a viewer costs
   packetising, encryption and its share of the event loop.)

The client runs in this process on the same cores, so its decoding competes with the server; the
result records the load average beside every step.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import aiohttp
import numpy as np
from tqdm import tqdm

from benchmarks.harness import BenchOptions, Failures, LoadSampler, speech, young_gc_only
from benchmarks.live import BenchServer, LiveSession
from benchmarks.report import base_result, evaluate_goals, pct
from benchmarks.suites.e2e import SessionData, _fresh

MIN_FPS = 24.5
MAX_BAD_RATIO = 0.01


def _ramp(limit: int) -> list[int]:
    out, n = [], 1
    while n <= limit:
        out.append(n)
        n *= 2
    if out[-1] != limit:
        out.append(limit)
    return out


def run(options: BenchOptions) -> dict[str, Any]:
    options.duration = options.duration or (1.5 if options.smoke else 20.0)
    o = options.extra
    o["max_sessions"] = options.get("max_sessions", 1 if options.smoke else 8)
    o["max_viewers"] = options.get("max_viewers", 2 if options.smoke else 8)
    o["target_p95_ms"] = float(options.get("target_p95_ms", 800.0))
    failures = Failures()
    with LoadSampler() as load, young_gc_only():
        raw = asyncio.run(_drive(options, failures))
    return _result(options, failures, load.report(), raw)


async def _drive(options: BenchOptions, failures: Failures) -> dict[str, Any]:
    o = options.extra
    server = BenchServer.for_bench(options, max_sessions=o["max_sessions"])
    raw: dict[str, Any] = {"sessions": [], "viewers": []}
    steps = _ramp(o["max_sessions"])
    viewer_steps = _ramp(o["max_viewers"])
    total = len(steps) + len(viewer_steps)
    async with server, aiohttp.ClientSession() as http:
        raw["server"] = server.info
        with tqdm(total=total, desc="scale", unit="step", disable=not options.progress) as bar:
            if not options.smoke:
                warm = LiveSession(http, server.base)  # the first session pays for warm-up: not measured
                with failures.guard("warm-up session"):
                    await warm.open()
                await warm.close()
            for n in steps:
                step: dict[str, Any] = {"sessions": n, "error": None}
                try:
                    step.update(await _sessions_step(http, server, n, options))
                except Exception as exc:  # noqa: BLE001 - a step that fails does not hold
                    failures.add(f"{n} sessions", exc)
                    step["error"] = f"{type(exc).__name__}: {exc}"
                step["load_average"] = os.getloadavg()[0]
                raw["sessions"].append(step)
                bar.update(1)
                if step["error"] or not _held(step, options, failures):
                    break
            with failures.guard("viewers ramp"):
                raw["viewers"] = await _viewers_ramp(http, server, viewer_steps, options, bar)
    return raw


async def _speak_all(sessions: list[LiveSession], seconds: float) -> None:
    audio = speech(seconds)
    await asyncio.gather(*(s.speak(audio) for s in sessions))
    await asyncio.gather(*(s.end_of_speech(timeout_s=10.0) for s in sessions))


async def _sessions_step(
    http: aiohttp.ClientSession, server: BenchServer, n: int, options: BenchOptions
) -> dict[str, Any]:
    sessions = [LiveSession(http, server.base) for _ in range(n)]
    try:
        for session in sessions:
            await session.open()
            await session.connect_audio()
        await asyncio.sleep(0.5 if options.smoke else 1.0)
        cpu0, t0 = (await server.probe(http, "-"))["cpu"], time.monotonic()
        await _speak_all(sessions, options.duration)
        cpu1, t1 = (await server.probe(http, "-"))["cpu"], time.monotonic()
        traces = (await server.probe(http))["sessions"]
    finally:
        for session in sessions:
            await session.close()
    return {
        "raw": [(s, traces.get(s.id)) for s in sessions],
        "cpu_s_per_s": _cpu(cpu0, cpu1, t0, t1),
        "delivery_cpu_s_per_s": _delivery_cpu(cpu0, cpu1, t0, t1),
    }


def _cpu(a: dict[str, float], b: dict[str, float], t0: float, t1: float) -> float:
    return ((b["user"] + b["system"]) - (a["user"] + a["system"])) / (t1 - t0)


def _delivery_cpu(a: dict[str, float], b: dict[str, float], t0: float, t1: float) -> float | None:
    """Process CPU less the scheduler workers' (model compute): what delivery costs."""
    if "scheduler_workers" not in a or "scheduler_workers" not in b:
        return None
    return _cpu(a, b, t0, t1) - (b["scheduler_workers"] - a["scheduler_workers"]) / (t1 - t0)


def _session_figures(
    session: LiveSession, trace: dict[str, Any], failures: Failures, where: str
) -> dict[str, Any]:
    """Per session: fresh fps at the viewer over the speech, late/dropped ratios, glass to glass."""
    data = SessionData(session, trace, failures, where)
    records = data.records("realtime")
    if not records:
        return {"fps": None, "g2g_p95_ms": None, "repeated_ratio": None, "dropped": data.counts["dropped"]}
    first, last = records[0]["frame"], records[-1]["frame"]
    span = [r for r in records if first <= r["frame"] <= last]
    fresh = sum(1 for r in span if not r["repeated"])
    wall = span[-1]["received_at"] - span[0]["received_at"]
    expected = (last - first) / 25.0
    return {
        "frames": len(span),
        "fps": fresh / (len(span) / 25.0) if span else None,  # fresh pictures per second of stream
        "delivery_fps": (len(span) - 1) / wall if wall > 0 else None,  # stamps decoded per wall second
        "stream_vs_wall": expected / wall if wall > 0 else None,
        "g2g_p95_ms": pct(_fresh(records, "glass_to_glass_ms"))["p95"],
        "g2g_ms": pct(_fresh(records, "glass_to_glass_ms")),
        "repeated_ratio": 1.0 - fresh / len(span) if span else None,
        "dropped": data.counts["dropped"],
        "late_frames": sum(1 for r in span if r["repeated"]),
    }


def _held(step: dict[str, Any], options: BenchOptions, failures: Failures) -> bool:
    figures = [
        _session_figures(
            s,
            trace or {"frames": [], "pushes": [], "windows": [], "stats": None},
            failures,
            f"{step['sessions']} sessions",
        )
        for s, trace in step.pop("raw")
    ]
    step["per_session"] = figures
    fps = [f["fps"] for f in figures if f["fps"] is not None]
    p95 = [f["g2g_p95_ms"] for f in figures if f["g2g_p95_ms"] is not None]
    bad = [f["repeated_ratio"] for f in figures if f["repeated_ratio"] is not None]
    frames = sum(f.get("frames", 0) for f in figures)
    step["fps_min"] = min(fps) if len(fps) == len(figures) else None
    step["glass_to_glass_p95_ms"] = max(p95) if len(p95) == len(figures) else None
    step["repeated_ratio"] = max(bad) if bad else None
    step["dropped"] = sum(f["dropped"] for f in figures)
    step["held"] = bool(
        step["fps_min"] is not None
        and step["fps_min"] >= MIN_FPS
        and step["glass_to_glass_p95_ms"] is not None
        and step["glass_to_glass_p95_ms"] <= options.extra["target_p95_ms"]
        and (step["repeated_ratio"] or 0.0) <= MAX_BAD_RATIO
        and step["dropped"] <= MAX_BAD_RATIO * max(frames, 1)
    )
    return step["held"]


async def _viewers_ramp(
    http: aiohttp.ClientSession, server: BenchServer, steps: list[int], options: BenchOptions, bar: Any
) -> list[dict[str, Any]]:
    out = []
    session = LiveSession(http, server.base)
    try:
        await session.open()
        await session.connect_audio()
        for m in steps:
            while len(session.viewers) < m:
                await session.add_viewer()
            await asyncio.sleep(0.5 if options.smoke else 1.0)
            counts = [len(v.video) for v in session.viewers]
            cpu0, t0 = (await server.probe(http, "-"))["cpu"], time.monotonic()
            await session.speak(speech(options.duration))
            cpu1, t1 = (await server.probe(http, "-"))["cpu"], time.monotonic()
            fps = [(len(v.video) - c) / (t1 - t0) for v, c in zip(session.viewers, counts, strict=True)]
            out.append(
                {
                    "viewers": m,
                    "cpu_s_per_s": _cpu(cpu0, cpu1, t0, t1),
                    "delivery_cpu_s_per_s": _delivery_cpu(cpu0, cpu1, t0, t1),
                    "fps_min": min(fps),
                    "fps": fps,
                    "load_average": os.getloadavg()[0],
                }
            )
            await session.end_utterance()  # the next step's speech queues behind it: no gap
            bar.update(1)
    finally:
        await session.close()
    return out


def _result(
    options: BenchOptions, failures: Failures, load: dict[str, Any], raw: dict[str, Any]
) -> dict[str, Any]:
    from engine.config import ModelConfig

    info = raw.get("server")
    if not info:
        raise RuntimeError(f"the bench server never started: {failures.items}")
    config = ModelConfig.from_dict(info["config"])
    result = base_result("scale", options, info["backend"], config, load, failures)
    steps = []
    for step in raw["sessions"]:
        if "raw" in step:  # the last step of a ramp that stopped early is evaluated here
            _held(step, options, failures)
        step.setdefault("held", False)
        for key in ("fps_min", "glass_to_glass_p95_ms", "repeated_ratio", "cpu_s_per_s"):
            step.setdefault(key, None)
        step.setdefault("dropped", 0)
        steps.append(step)
    held = [s["sessions"] for s in steps if s["held"]]
    viewers = raw["viewers"]
    slope = slope_total = None
    if len(viewers) >= 2:
        m = np.array([v["viewers"] for v in viewers], float)
        slope_total = float(np.polyfit(m, [v["cpu_s_per_s"] for v in viewers], 1)[0]) * 1000.0
        delivery = [v.get("delivery_cpu_s_per_s") for v in viewers]
        # Model compute swings with load (a late window is skipped), and it does not depend on the
        # number of viewers: the slope is taken over delivery CPU where the probe could split it.
        if all(d is not None for d in delivery):
            slope = float(np.polyfit(m, delivery, 1)[0]) * 1000.0
        else:
            slope = slope_total
    result.update(
        {
            "target_p95_ms": options.extra["target_p95_ms"],
            "sessions": steps,
            "max_sessions_held": max(held) if held else 0,
            "viewers": viewers,
            "cpu_ms_per_viewer_per_s": slope,
            "cpu_ms_per_viewer_per_s_total": slope_total,
            "records": {
                "sessions": [
                    {"sessions": s["sessions"], "per_session": s.get("per_session", [])} for s in steps
                ],
                "viewers": viewers,
            },
        }
    )
    result["summary"] = {
        "max_sessions_held": result["max_sessions_held"],
        "cpu_ms_per_viewer_per_s": slope,
        **{f"sessions{s['sessions']}_fps_min": s["fps_min"] for s in steps},
        **{f"sessions{s['sessions']}_g2g_p95_ms": s["glass_to_glass_p95_ms"] for s in steps},
        **{f"viewers{v['viewers']}_cpu_s_per_s": v["cpu_s_per_s"] for v in viewers},
    }
    result["goals"] = evaluate_goals("scale", result["summary"])
    return result
