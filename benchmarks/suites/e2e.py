"""``e2e``: glass to glass over loopback WebRTC, as a viewer sees it.

A bench server (``benchmarks.server``: the real app with ``bench_stamp=True`` and the real model
preset, in its own process on 127.0.0.1) and a client in this process that pushes speech over the
session's WebSocket at real time in 20 ms packets and receives video and audio through WHEP.

Scenarios, in order, on one server:
1. time to first frame: sessions opened and closed (``ttff_trials``; the first is cold);
2. the main session: a warm-up second of idle, then ``duration`` s of real-time speech;
3. interrupts on the same session: sustained speech, ``interrupt`` once it is audible, and the
   time until the received audio is silent;
4. a TTS-like burst on the same session (``burst_speed`` x real time), reported as queueing;
5. calibration: a new session with the playout delay raised by ``calibrate_ms``; the measured
   glass-to-glass p50 must move by that much, or the measurement is not measuring.

How a frame is tied to the audio that drove it: the frame's bench stamp gives its index ``f``; its
audio starts at timeline sample ``f * 640``; the server's probe recorded where each pushed packet
was placed on that timeline (the first packet of an utterance anchors it at its arrival), and the
client recorded when it sent each packet. See ``benchmarks.measure``.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import time
from typing import Any

import aiohttp
from tqdm import tqdm

from benchmarks.harness import BenchOptions, Failures, LoadSampler, speech, table, vowel, young_gc_only
from benchmarks.live import BenchServer, LiveSession
from benchmarks.measure import (
    G2G_COLUMNS,
    av_offsets,
    count_frames,
    first_arrivals,
    glass_to_glass,
    interrupt_to_silence_ms,
    jitter_ms,
    late_frames,
    match_utterances,
    placement_shifts,
    push_lateness_ms,
    ready_margins_ms,
)
from benchmarks.report import base_result, evaluate_goals, pct

STAGES = ("audio", "dit", "blend", "decode", "color")
DEFAULTS = {  # name: (full, smoke)
    "ttff_trials": (3, 0),  # extra sessions opened for time to first frame (the others count too)
    "interrupts": (5, 1),
    "interrupt_watch_s": (1.5, 1.0),  # how long the audio is watched after an interrupt
    "interrupt_lead_s": (0.8, 0.5),  # speech audible this long before the interrupt
    "burst_seconds": (10.0, 1.0),
    "burst_speed": (10.0, 10.0),
    "calibrate_ms": (300, 300),
    "calibrate_seconds": (20.0, 2.5),
    "late_ms": (40.0, 40.0),
    "warmup_s": (1.0, 0.3),
    "settle_s": (0.5, 0.2),  # after an utterance has played, before the next scenario
}


def setting(options: BenchOptions, name: str) -> Any:
    full, smoke = DEFAULTS[name]
    return options.get(name, smoke if options.smoke else full)


def run(options: BenchOptions) -> dict[str, Any]:
    options.duration = options.duration or (2.5 if options.smoke else 60.0)
    for name in DEFAULTS:
        options.extra[name] = setting(options, name)
    failures = Failures()
    with LoadSampler() as load, young_gc_only():
        raw = asyncio.run(_drive(options, failures))
    return _analyse(options, failures, load.report(), raw)


# --- driving ---------------------------------------------------------------------------------------
async def _drive(options: BenchOptions, failures: Failures) -> dict[str, Any]:
    """Run every scenario; returns what was recorded (analysis comes after the server stopped)."""
    o = options.extra
    server = BenchServer.for_bench(options, max_sessions=4)
    raw: dict[str, Any] = {"t_ref": time.monotonic(), "ttff": [], "main": None, "calibration": None}
    total = options.duration + (o["calibrate_seconds"] if o["calibrate_ms"] else 0.0)
    async with server, aiohttp.ClientSession() as http:
        raw["server"] = server.info
        delay_s = server.info["config"]["scheduler"]["playout_delay_ms"] / 1000.0
        with tqdm(total=total, desc="e2e speech", unit="s", disable=not options.progress) as bar:
            for trial in range(int(o["ttff_trials"])):
                with failures.guard(f"ttff trial {trial}"):
                    session = LiveSession(http, server.base)
                    try:
                        opened = await session.open()
                        raw["ttff"].append({"trial": trial, "session": "ttff", **opened.record()})
                    finally:
                        await session.close()
            with failures.guard("main session"):
                raw["main"] = await _main_session(http, server, options, failures, delay_s, bar, raw)
            if o["calibrate_ms"]:
                with failures.guard("calibration session"):
                    raw["calibration"] = await _calibration(http, server, options, delay_s, bar, raw)
    return raw


async def _main_session(
    http: aiohttp.ClientSession,
    server: BenchServer,
    options: BenchOptions,
    failures: Failures,
    delay_s: float,
    bar: Any,
    raw: dict[str, Any],
) -> dict[str, Any]:
    o = options.extra
    session = LiveSession(http, server.base)
    try:
        opened = await session.open()
        raw["ttff"].append({"trial": len(raw["ttff"]), "session": "main", **opened.record()})
        await session.connect_audio()
        await asyncio.sleep(o["warmup_s"])
        cpu_before = (await server.probe(http, session.id))["cpu"]
        client_before, t_before = os.times(), time.monotonic()
        await session.speak(speech(options.duration), progress=bar)
        cpu_after = (await server.probe(http, session.id))["cpu"]
        client_after, t_after = os.times(), time.monotonic()
        if not await session.end_of_speech(timeout_s=delay_s + 10.0):
            failures.add("main utterance", "no playback_finished within the playout delay + 10 s")
        await asyncio.sleep(o["settle_s"])

        lead = delay_s + o["interrupt_lead_s"]  # speech pushed this long ago is being heard now
        for trial in range(int(o["interrupts"])):
            with failures.guard(f"interrupt trial {trial}"):
                stop = asyncio.Event()
                pusher = asyncio.create_task(
                    session.speak(vowel(lead + 2.0), kind="interrupt", stop=stop),
                    name="bench-interrupt-speech",
                )
                await asyncio.sleep(lead)
                stop.set()  # before the interrupt: no packet may follow it and start a new utterance
                await pusher
                await session.interrupt()
                await asyncio.sleep(o["interrupt_watch_s"])

        if o["burst_seconds"] > 0:
            with failures.guard("burst"):
                await session.speak(speech(o["burst_seconds"]), speed=o["burst_speed"], kind="burst")
                if not await session.end_of_speech(timeout_s=o["burst_seconds"] + delay_s + 10.0):
                    failures.add("burst", "no playback_finished")
                await asyncio.sleep(o["settle_s"])
        trace = (await server.probe(http, session.id))["sessions"][session.id]
    finally:
        await session.close()
    cpu = (cpu_after["user"] + cpu_after["system"]) - (cpu_before["user"] + cpu_before["system"])
    client = (client_after.user + client_after.system) - (client_before.user + client_before.system)
    wall = t_after - t_before
    return {
        "session": session,
        "trace": trace,
        "cpu_s_per_s": cpu / wall,
        "client_cpu_s_per_s": client / wall,
    }


async def _calibration(
    http: aiohttp.ClientSession,
    server: BenchServer,
    options: BenchOptions,
    delay_s: float,
    bar: Any,
    raw: dict[str, Any],
) -> dict[str, Any]:
    """The same real-time speech on a fresh session whose playout delay is ``calibrate_ms`` longer,
    the only session on the server (the main one is closed), degradation off as everywhere."""
    o = options.extra
    base_ms = round(delay_s * 1000)
    await server.set_scheduler(http, playout_delay_ms=base_ms + int(o["calibrate_ms"]))
    session = LiveSession(http, server.base)
    try:
        opened = await session.open()
        raw["ttff"].append({"trial": len(raw["ttff"]), "session": "calibration", **opened.record()})
        await session.connect_audio()
        await asyncio.sleep(o["warmup_s"])
        await session.speak(speech(o["calibrate_seconds"]), progress=bar)
        await session.end_of_speech(timeout_s=delay_s + o["calibrate_ms"] / 1000.0 + 10.0)
        await asyncio.sleep(o["settle_s"])
        trace = (await server.probe(http, session.id))["sessions"][session.id]
    finally:
        await session.close()
        await server.set_scheduler(http, playout_delay_ms=base_ms)
    return {"session": session, "trace": trace}


# --- analysis ----------------------------------------------------------------------------------------
class SessionData:
    """Everything derived from one session's recording and the server's trace of it."""

    def __init__(self, session: LiveSession, trace: dict[str, Any], failures: Failures, where: str) -> None:
        from stream.stamps import read_stamp

        video = session.viewer.video
        self.session = session
        self.trace = trace
        self.indices = [read_stamp(v.image) if v.image is not None else None for v in video]
        for v in video:
            v.image = None  # the stamp is read: free the pixels
        self.pts_index = [v.pts // 3600 for v in video]
        self.received_at = [v.received_at for v in video]
        self.stamp_mismatch = sum(
            1 for i, p in zip(self.indices, self.pts_index, strict=True) if i is not None and i != p
        )
        self.counts = count_frames(self.indices)
        self.first = first_arrivals(self.indices, self.received_at)
        self.presented = {int(f[0]): (float(f[1]), bool(f[2])) for f in trace["frames"]}
        try:
            self.placements = match_utterances([u.pushed_at for u in session.utterances], trace["pushes"])
        except ValueError as exc:
            failures.add(f"{where}: matching packets to placements", exc)
            self.placements = [[] for _ in session.utterances]
        self.g2g = [glass_to_glass(p, self.first, self.presented) for p in self.placements]

    def records(self, kind: str) -> list[dict[str, Any]]:
        out = []
        for utterance, records in zip(self.session.utterances, self.g2g, strict=True):
            if utterance.kind == kind:
                out += records
        return out


def _fresh(records: list[dict[str, Any]], key: str) -> list[float]:
    """A figure over the frames whose picture was new (a repeat shows an older frame's picture)."""
    return [r[key] for r in records if not r["repeated"] and r[key] is not None]


def _every(records: list[dict[str, Any]], key: str) -> list[float]:
    """A figure over every stamped frame, repeats included: each is shown at its own slot, so this
    is the pipeline's timing even when compute fell behind and the picture is an older one."""
    return [r[key] for r in records if r[key] is not None]


def _analyse(
    options: BenchOptions, failures: Failures, load: dict[str, Any], raw: dict[str, Any]
) -> dict[str, Any]:
    from engine.config import ModelConfig

    o = options.extra
    t_ref = raw["t_ref"]
    info = raw.get("server") or {}
    config = ModelConfig.from_dict(info["config"]) if info else None
    if config is None:
        raise RuntimeError(f"the bench server never started: {failures.items}")
    result = base_result("e2e", options, info["backend"], config, load, failures)
    result["server_torch_threads"] = info.get("torch_threads")

    main = (
        SessionData(raw["main"]["session"], raw["main"]["trace"], failures, "main") if raw["main"] else None
    )
    cal = None
    if raw["calibration"]:
        cal = SessionData(raw["calibration"]["session"], raw["calibration"]["trace"], failures, "calibration")

    realtime = main.records("realtime") if main else []
    burst_records = main.records("burst") if main else []
    g2g = _fresh(realtime, "glass_to_glass_ms")

    # Frames, jitter, lateness: the main session's whole stream after the warm-up.
    speech_start = realtime[0]["pushed_at"] if realtime else None
    if main is not None:
        after = [k for k, t in enumerate(main.received_at) if speech_start is None or t >= speech_start]
        indices = [main.indices[k] for k in after]
        received = [main.received_at[k] for k in after]
        counts = count_frames(main.indices)
        late = late_frames(first_arrivals(indices, received), o["late_ms"])
        jitter = jitter_ms(indices, received)
        media, arrival_rows, markers = [], [], []
        with failures.guard("A/V markers"):
            media_ms, arrival_ms, markers = av_offsets(main.first, main.session.viewer.audio)
            media = media_ms
            arrival_rows = arrival_ms
        interrupts = []
        for trial, utterance in enumerate(u for u in main.session.utterances if u.kind == "interrupt"):
            if utterance.interrupted_at is None:
                continue
            watch = o["interrupt_watch_s"]
            ms, speaking = interrupt_to_silence_ms(
                main.session.viewer.audio, utterance.interrupted_at, window_s=watch, markers=markers
            )
            if ms is None:
                failures.add(
                    f"interrupt trial {trial}", f"the received audio never went silent within {watch} s"
                )
            if not speaking:
                failures.add(f"interrupt trial {trial}", "speech was not audible just before the interrupt")
            interrupts.append(
                {
                    "trial": trial,
                    "interrupted_at": utterance.interrupted_at - t_ref,
                    "ms": ms,
                    "speaking": speaking,
                }
            )
        windows = main.trace["windows"]
        stats = main.trace["stats"] or {}
        server_repeated_speech = sum(1 for r in realtime if r["repeated"])
    else:
        counts = count_frames([])
        late, jitter, media, arrival_rows, markers, interrupts, windows, stats = (
            [],
            [],
            [],
            [],
            [],
            [],
            [],
            {},
        )
        server_repeated_speech = 0

    compute = [sum(w[3].values()) for w in windows if w[1]]
    lateness, transit, shifts = [], [], []
    if main is not None:
        for utterance, placements in zip(main.session.utterances, main.placements, strict=True):
            if utterance.kind != "realtime" or not placements:
                continue
            lateness += push_lateness_ms(placements)
            transit += [(p.arrived_at - p.pushed_at) * 1000.0 for p in placements]
            shifts += [
                {"packet": k, "pushed_at": placements[k].pushed_at - t_ref, "shift_ms": n / 16.0}
                for k, n in placement_shifts(placements)
            ]
    stream_seconds = (counts["last"] - counts["first"] + 1) / 25.0 if counts["first"] is not None else 0.0
    result.update(
        {
            "glass_to_glass_ms": pct(g2g),
            "glass_to_glass_all_frames_ms": pct(_every(realtime, "glass_to_glass_ms")),
            "glass_to_glass_split": {
                "server_ms": pct(_fresh(realtime, "server_ms")),
                "transport_ms": pct(_fresh(realtime, "transport_ms")),
            },
            "av_offset_ms": pct(media),
            "av_arrival_offset_ms": pct(arrival_rows),
            "jitter_ms": pct(jitter),
            # At the configured playout delay: the calibration session's is raised on purpose.
            "ttff_ms": pct([t["ttff_ms"] for t in raw["ttff"] if t["session"] != "calibration"]),
            "ttff_cold_ms": raw["ttff"][0]["ttff_ms"] if raw["ttff"] else None,
            "interrupt_to_silence_ms": pct([i["ms"] for i in interrupts]),
            "frames": {
                "received": counts["received"],
                "late": len(late),
                "repeated": counts["repeated"],
                "dropped": counts["dropped"],
                "unreadable": counts["unreadable"],
                "out_of_order": counts["out_of_order"],
                "stamp_mismatch": main.stamp_mismatch if main else 0,
                "stream_seconds": stream_seconds,
                "gaps": counts["gaps"],
                "server": {
                    "repeated": stats.get("repeated"),
                    "dropped": stats.get("dropped"),
                    "silence_inserted_s": stats.get("silence_inserted_s"),
                    "repeated_during_speech": server_repeated_speech,
                },
            },
            # The input side: how late the client's packets left against real time, their
            # WebSocket transit, and where the server re-placed the speech later because audio
            # missed a deadline (everything after such a shift plays that much later).
            "input": {
                "push_lateness_ms": pct(lateness),
                "ws_transit_ms": pct(transit),
                "speech_shifts": shifts,
                "speech_shift_total_ms": sum(x["shift_ms"] for x in shifts),
            },
            "burst": _burst(burst_records, main, o) if burst_records else None,
            "calibration": _calibration_result(
                _every(realtime, "glass_to_glass_ms"),
                [r["glass_to_glass_ms"] - r["shift_ms"] for r in realtime],
                cal,
                o,
            ),
            "server": {
                "window_compute_ms": pct(compute),
                "steps_used": {
                    str(k): sum(1 for w in windows if w[1] == k)
                    for k in sorted({w[1] for w in windows if w[1]})
                },
                "stage_ms": {s: pct([w[3].get(s) for w in windows if w[1]]) for s in STAGES},
                "ready_margin_ms": pct(ready_margins_ms(windows, main.presented) if main else []),
                "cpu_s_per_s": raw["main"]["cpu_s_per_s"] if raw["main"] else None,
                # The client (this process: RTP, decoding, stamps) runs on the same cores.
                "client_cpu_s_per_s": raw["main"]["client_cpu_s_per_s"] if raw["main"] else None,
                "stats": stats,
                "torch_threads": info.get("torch_threads"),
            },
        }
    )
    result["records"] = _records(main, cal, raw, interrupts, markers, t_ref)
    result["summary"] = _summary(result)
    result["goals"] = evaluate_goals("e2e", result["summary"])
    return result


def _burst(records: list[dict[str, Any]], main: SessionData, o: dict[str, Any]) -> dict[str, Any]:
    first = min(records, key=lambda r: r["frame"])
    utterance = next(u for u in main.session.utterances if u.kind == "burst")
    return {
        "speed": o["burst_speed"],
        "seconds": o["burst_seconds"],
        "glass_to_glass_ms": pct(_fresh(records, "glass_to_glass_ms")),
        # How early the audio was pushed does not depend on whether its picture came in time.
        "queue_ms": pct(_every(records, "ahead_ms")),
        "service_ms": pct(_fresh(records, "service_ms")),
        "first_frame_ms": (first["received_at"] - utterance.pushed_at[0]) * 1000.0,
        "push_duration_ms": (utterance.pushed_at[-1] - utterance.pushed_at[0]) * 1000.0,
    }


def _calibration_result(
    base: list[float], base_net: list[float], cal: SessionData | None, o: dict[str, Any]
) -> dict[str, Any] | None:
    if not o["calibrate_ms"]:
        return None
    records = cal.records("realtime") if cal else []
    shifted = _every(records, "glass_to_glass_ms")
    base_p50 = pct(base)["p50"]
    shifted_p50 = pct(shifted)["p50"]
    shift = None if base_p50 is None or shifted_p50 is None else shifted_p50 - base_p50
    net_base_p50 = pct(base_net)["p50"]
    net_shifted_p50 = pct([r["glass_to_glass_ms"] - r["shift_ms"] for r in records])["p50"]
    net = None if net_base_p50 is None or net_shifted_p50 is None else net_shifted_p50 - net_base_p50
    return {
        "frames": "every stamped speech frame, repeats included (the shift is the pipeline's timing)",
        "added_playout_ms": float(o["calibrate_ms"]),
        "seconds": o["calibrate_seconds"],
        "base_p50_ms": base_p50,
        "shifted_p50_ms": shifted_p50,
        "shifted_ms": pct(shifted),
        "measured_shift_ms": shift,
        "error_ratio": None if shift is None else shift / o["calibrate_ms"] - 1.0,
        # Net of the server re-placing speech later mid-utterance (a separate, separately measured
        # effect, see "input"): what the stamps measure of the pipeline's own delay.
        "net_base_p50_ms": net_base_p50,
        "net_shifted_p50_ms": net_shifted_p50,
        "measured_shift_net_ms": net,
    }


def _records(
    main: SessionData | None,
    cal: SessionData | None,
    raw: dict[str, Any],
    interrupts: list[dict[str, Any]],
    markers: list[Any],
    t_ref: float,
) -> dict[str, Any]:
    rel = lambda t: None if t is None else t - t_ref  # noqa: E731
    g2g_rows, placement_rows = [], []
    for label, data in (("main", main), ("calibration", cal)):
        if data is None:
            continue
        for j, (utterance, records) in enumerate(zip(data.session.utterances, data.g2g, strict=True)):
            kind = "calibration" if label == "calibration" else utterance.kind
            for r in records:
                g2g_rows.append([kind, *(rel(r[c]) if c.endswith("_at") else r[c] for c in G2G_COLUMNS)])
            for k, p in enumerate(data.placements[j]):
                placement_rows.append(
                    [label, j, kind, k, rel(p.pushed_at), rel(p.arrived_at), p.start, p.samples]
                )
    frames_rows, av_rows, window_rows = [], [], []
    if main is not None:
        frames_rows = [
            [s, p, rel(t)] for s, p, t in zip(main.indices, main.pts_index, main.received_at, strict=True)
        ]
        first = main.first
        audio = sorted(main.session.viewer.audio, key=lambda c: c.pts)
        pts = [c.pts for c in audio]
        for m in markers:
            if m.frame not in first:
                continue
            k = bisect.bisect_right(pts, m.sample) - 1
            arrival = None
            if k >= 0 and m.sample < audio[k].pts + len(audio[k].samples):
                arrival = (audio[k].received_at - first[m.frame]) * 1000.0
            av_rows.append([m.frame, m.sample, (m.sample / 48_000 - m.frame / 25) * 1000.0, arrival])
        for start, steps, frames, timings, began, ended in main.trace["windows"]:
            window_rows.append(
                [
                    start,
                    steps,
                    frames,
                    *(timings.get(s) for s in STAGES),
                    sum(timings.values()),
                    rel(began),
                    rel(ended),
                ]
            )
    return {
        "time_origin": "seconds since the run began (monotonic clock)",
        "glass_to_glass": table(("utterance", *G2G_COLUMNS), g2g_rows),
        "placements": table(
            ("session", "utterance", "kind", "packet", "pushed_at", "arrived_at", "start", "samples"),
            placement_rows,
        ),
        "frames": table(("stamp", "pts_index", "received_at"), frames_rows),
        "av_markers": table(("frame", "sample", "media_offset_ms", "arrival_offset_ms"), av_rows),
        "windows": table(("start", "steps", "frames", *STAGES, "compute_ms", "began", "ended"), window_rows),
        "ttff": raw["ttff"],
        "interrupts": interrupts,
    }


def _summary(r: dict[str, Any]) -> dict[str, Any]:
    def get(p: dict[str, Any], key: str) -> Any:
        return p.get(key) if p else None

    av = r["records"]["av_markers"]
    media = [row[2] for row in av["rows"]]
    ttff = [
        t["ttff_ms"]
        for t in r["records"]["ttff"]
        if t["ttff_ms"] is not None and t["session"] != "calibration"
    ]
    interrupts = [i["ms"] for i in r["records"]["interrupts"]]
    burst = r.get("burst") or {}
    cal = r.get("calibration") or {}
    return {
        "glass_to_glass_p50_ms": r["glass_to_glass_ms"]["p50"],
        "glass_to_glass_p95_ms": r["glass_to_glass_ms"]["p95"],
        "glass_to_glass_p99_ms": r["glass_to_glass_ms"]["p99"],
        "transport_p50_ms": r["glass_to_glass_split"]["transport_ms"]["p50"],
        "ttff_p50_ms": r["ttff_ms"]["p50"],
        "ttff_max_ms": max(ttff) if ttff else None,
        "av_offset_p50_ms": r["av_offset_ms"]["p50"],
        "av_offset_abs_max_ms": max((abs(m) for m in media), default=None),
        "av_arrival_offset_p50_ms": r["av_arrival_offset_ms"]["p50"],
        "jitter_p50_ms": r["jitter_ms"]["p50"],
        "jitter_p95_ms": r["jitter_ms"]["p95"],
        "interrupt_to_silence_p50_ms": r["interrupt_to_silence_ms"]["p50"],
        # A trial that never went silent counts as its whole observation window (a lower bound).
        "interrupt_to_silence_max_ms": max(
            (r["options"]["interrupt_watch_s"] * 1000.0 if i is None else i for i in interrupts), default=None
        ),
        "frames_dropped": r["frames"]["dropped"],
        "frames_late": r["frames"]["late"],
        "frames_repeated": r["frames"]["repeated"],
        "server_repeated": r["frames"]["server"]["repeated"],
        "stream_seconds": r["frames"]["stream_seconds"],
        "burst_queue_p95_ms": get(burst.get("queue_ms"), "p95"),
        "burst_service_p50_ms": get(burst.get("service_ms"), "p50"),
        "burst_first_frame_ms": burst.get("first_frame_ms"),
        "calibration_shift_ms": cal.get("measured_shift_ms"),
        "server_window_compute_p95_ms": r["server"]["window_compute_ms"]["p95"],
        "server_cpu_s_per_s": r["server"]["cpu_s_per_s"],
        "client_cpu_s_per_s": r["server"]["client_cpu_s_per_s"],
        "speech_frames_repeated_ratio": (
            r["frames"]["server"]["repeated_during_speech"] / r["glass_to_glass_all_frames_ms"]["n"]
            if r["glass_to_glass_all_frames_ms"]["n"]
            else None
        ),
        "silence_inserted_s": r["frames"]["server"]["silence_inserted_s"],
        "push_lateness_p99_ms": r["input"]["push_lateness_ms"]["p99"],
        "speech_shift_total_ms": r["input"]["speech_shift_total_ms"],
    }
