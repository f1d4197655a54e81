"""Results: the common frame of every suite's JSON, goals, files on disk, Markdown, compare.

A run writes ``{suite}-{preset}-{machine}-{UTC date}.json`` with a ``.png`` and ``.md`` of the same
name into the output folder (``benchmarks/results`` by default) and appends one line of headline
figures to ``index.jsonl`` there, so results accumulate by machine and date and a regression shows
as a line that differs from the ones before it.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import environment, percentiles
from benchmarks.schema import SCHEMA_VERSION

# (summary key, op, target, what DESIGN/the issue asks): a goal is met when `measured op target`.
GOALS: dict[str, list[tuple[str, str, float, str]]] = {
    "engine": [
        ("rtf", "<", 1.0, "model compute faster than real time"),
        ("first_frame_latency_ms", "<=", 1000.0, "first frame under 1 s"),
    ],
    "e2e": [
        ("glass_to_glass_p50_ms", "<=", 600.0, "glass-to-glass p50 <= 600 ms"),
        ("glass_to_glass_p95_ms", "<=", 800.0, "glass-to-glass p95 <= 800 ms"),
        ("ttff_max_ms", "<=", 1000.0, "time to first frame <= 1 s (every session)"),
        ("av_offset_abs_max_ms", "<=", 40.0, "A/V offset within 40 ms (every marker)"),
        ("interrupt_to_silence_max_ms", "<=", 200.0, "interrupt to silence within 200 ms (every trial)"),
        ("frames_dropped", "==", 0.0, "zero dropped frames"),
        ("stream_seconds", ">=", 300.0, "... over 5 minutes of stream"),
    ],
    "scale": [
        ("max_sessions_held", ">=", 1.0, "at least one session held at 25 fps under the p95 target"),
    ],
    "backends": [],
    "duration": [
        ("memory_growth_frac", "<=", 0.05, "memory flat within 5% after warm-up (last third vs first)"),
        ("state_ratio_max", "<=", 1.5, "every live structure bounded (second half / first half)"),
        ("drift_slope_abs", "<", 0.1, "|identity drift slope| < 0.1 dE00 per minute"),
        ("drift_final", "<", 3.0, "identity distance at the end < 3 dE00"),
    ],
}

_OPS = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    "==": lambda a, b: a == b,
    ">=": lambda a, b: a >= b,
}

# Summary keys where a larger number is better (compare marks the direction of change).
HIGHER_IS_BETTER = {"sustained_fps", "max_sessions_held", "stream_seconds", "speedup_vs_torch"}


def pct(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """``{p50, p95, p99, mean, n}`` of the values that are there; figures are null when n is 0."""
    clean = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not clean:
        return {"p50": None, "p95": None, "p99": None, "mean": None, "n": 0}
    return percentiles(clean)


def latency_budget(config: Any) -> dict[str, float]:
    """DESIGN.md's budget (``benchmarks.render.latency_budget_ms``) and its floor: the least playout
    delay the config allows, audio wait + compute budget; a frame cannot leave earlier than this
    after its audio arrived."""
    from benchmarks.render import latency_budget_ms

    budget = {k: float(v) for k, v in latency_budget_ms(config).items()}
    budget["floor_ms"] = budget["first_frame_audio_wait_ms"] + budget["compute_budget_ms"]
    return budget


def machine_slug(env: dict[str, Any]) -> str:
    name = re.sub(r"[^A-Za-z0-9]+", "-", str(env.get("machine") or "unknown")).strip("-") or "unknown"
    return f"{name}-{env.get('cpu_count')}c"


def base_result(
    suite: str,
    options: Any,
    backend: dict[str, Any],
    config: Any,
    load: dict[str, Any],
    failures: Any,
) -> dict[str, Any]:
    """The fields every result starts with."""
    env = environment()
    env["load_average_1min_at_start"] = os.getloadavg()[0]
    return {
        "suite": suite,
        "schema_version": SCHEMA_VERSION,
        "environment": env,
        "load_average": load,
        "options": options.to_dict(),
        "backend": backend,
        "preset": config.name,
        "config": config.to_dict(),
        "latency_budget": latency_budget(config),
        "failures": failures.items,
    }


def evaluate_goals(suite: str, summary: dict[str, Any]) -> list[dict[str, Any]]:
    goals = []
    for metric, op, target, what in GOALS.get(suite, []):
        measured = summary.get(metric)
        met = None if measured is None else bool(_OPS[op](measured, target))
        goals.append(
            {"metric": metric, "op": op, "target": target, "measured": measured, "met": met, "goal": what}
        )
    return goals


def save(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write the JSON, the plot and the summary; append the headline line to ``index.jsonl``."""
    from benchmarks.plots import plot

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = result["environment"]
    date = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    stem = f"{result['suite']}-{result['preset']}-{machine_slug(env)}-{date}"
    paths = {"json": out / f"{stem}.json", "png": out / f"{stem}.png", "md": out / f"{stem}.md"}
    result.setdefault("files", {k: p.name for k, p in paths.items()})
    paths["json"].write_text(dumps(result))
    try:
        plot(result, paths["png"])
    except Exception as exc:  # noqa: BLE001 - a plot failure must not lose the measurement
        result["failures"].append({"where": "plot", "error": f"{type(exc).__name__}: {exc}"})
        paths["json"].write_text(dumps(result))
        paths.pop("png")
    paths["md"].write_text(markdown(result))
    line = {
        "file": paths["json"].name,
        "suite": result["suite"],
        "preset": result["preset"],
        "machine": env.get("machine"),
        "cpu": env.get("cpu"),
        "date": env.get("date"),
        "git_commit": env.get("git_commit"),
        "load_median": result["load_average"]["median"],
        "summary": result["summary"],
    }
    with (out / "index.jsonl").open("a") as index:
        index.write(json.dumps(line, default=_json_default) + "\n")
    return paths


def dumps(result: dict[str, Any]) -> str:
    """Indented JSON with every list of plain values on one line, so a record row stays one line."""
    flat: list[str] = []

    def fold(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: fold(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            if value and not any(isinstance(v, dict | list | tuple) for v in value):
                flat.append(json.dumps(list(value), default=_json_default))
                return f"\x00{len(flat) - 1}\x00"
            return [fold(v) for v in value]
        return value

    text = json.dumps(fold(result), indent=1, default=_json_default)
    return re.sub(r'"\\u0000(\d+)\\u0000"', lambda m: flat[int(m.group(1))], text) + "\n"


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --- Markdown ---------------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e5 else f"{value:.3g}"
    return str(value)


def _significant(value: Any) -> str:
    """Four significant figures: goals compare fractions (0.0007) and milliseconds (591.8) alike."""
    return f"{value:.4g}" if isinstance(value, float) else _fmt(value)


def _pct_row(name: str, p: dict[str, Any] | None) -> str:
    p = p or {}
    return f"| {name} | " + " | ".join(_fmt(p.get(k)) for k in ("p50", "p95", "p99", "mean", "n")) + " |"


PCT_HEADER = "| measured (ms) | p50 | p95 | p99 | mean | n |\n|---|---|---|---|---|---|"


def markdown(result: dict[str, Any]) -> str:
    env, load, budget = result["environment"], result["load_average"], result["latency_budget"]
    backend = result["backend"]
    lines = [
        f"# livehuman bench {result['suite']}: {result['preset']} on {env['machine']}",
        "",
        f"- machine: {env['machine']}, {env['cpu']}, {env['cpu_count']} cores, GPU: {env['gpu'] or 'none'}",
        f"- date {env['date']}, git {env['git_commit']}, python {env['python']}, torch {env['torch']}, "
        f"numpy {env['numpy']}, av {env['av']}",
        f"- backend: {backend['loaded']} (asked for {backend['requested']})"
        + (f"; {backend['note']}" if backend.get("note") else ""),
        f"- load average during the run (other jobs share the machine): median {load['median']:.2f}, "
        f"max {load['max']:.2f} on {load['cores']} cores",
        f"- failures: {len(result['failures'])}"
        + "".join(f"\n  - {f['where']}: {f['error']}" for f in result["failures"][:10]),
        "",
        "## Latency budget (DESIGN.md)",
        "",
        "| audio wait, first frame | audio wait, last frame | compute budget | floor (wait + budget) "
        "| playout delay |",
        "|---|---|---|---|---|",
        f"| {_fmt(budget['first_frame_audio_wait_ms'], 0)} ms "
        f"| {_fmt(budget['last_frame_audio_wait_ms'], 0)} ms "
        f"| {_fmt(budget['compute_budget_ms'], 0)} ms | {_fmt(budget['floor_ms'], 0)} ms "
        f"| {_fmt(budget['playout_delay_ms'], 0)} ms |",
        "",
        "Live, a frame is shown `playout delay` after its audio arrived (the delay must cover the floor); "
        "glass-to-glass adds encode, network and decode on top.",
        "",
        "## Measured",
        "",
        *_MEASURED[result["suite"]](result),
        "",
    ]
    if result.get("goals"):
        lines += ["## Goals", "", "| goal | target | measured | met |", "|---|---|---|---|"]
        for g in result["goals"]:
            met = "n/a" if g["met"] is None else ("met" if g["met"] else "MISSED")
            lines.append(
                f"| {g['goal']} | {g['metric']} {g['op']} {g['target']:g} "
                f"| {_significant(g['measured'])} | {met} |"
            )
        lines.append("")
    return "\n".join(lines)


def _engine_md(r: dict[str, Any]) -> list[str]:
    lines = [
        f"{r['seconds']:.0f} s of speech, offline through the scheduler: {r['frames']} frames, "
        f"rtf {_fmt(r['rtf'], 3)} (model compute / media), wall rtf {_fmt(r['wall_rtf'], 3)}, "
        f"sustained {_fmt(r['sustained_fps'])} fps, first frame {_fmt(r['first_frame_latency_ms'], 0)} ms, "
        f"peak RSS {_fmt(r['peak_rss_mb'], 0)} MiB, seam ratio {_fmt(r['seam_ratio'], 3)} "
        f"(motion {_fmt(r['motion'], 2)}).",
        "",
        PCT_HEADER,
        _pct_row(
            f"window compute ({_fmt(r['window_media_ms'], 0)} ms of media each)", r["window_compute_ms"]
        ),
        *(_pct_row(f"stage {k}", v) for k, v in r["stage_ms"].items()),
        "",
        "Sweep (latency floor = audio wait + window compute p95; seam ratio ~1 means no visible seam):",
        "",
        "| W | O | steps | media/window ms | compute p50 | compute p95 | rtf | audio wait | latency floor "
        "| seam ratio | motion |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in r["sweep"]:
        c = p["window_compute_ms"]
        lines.append(
            f"| {p['window']} | {p['overlap']} | {p['steps']} | {_fmt(p['window_media_ms'], 0)} "
            f"| {_fmt(c['p50'])} "
            f"| {_fmt(c['p95'])} | {_fmt(p['rtf'], 3)} | {_fmt(p['audio_wait_ms'], 0)} "
            f"| {_fmt(p['latency_floor_ms'], 0)} "
            f"| {_fmt(p['seam_ratio'], 3)} | {_fmt(p['motion'], 2)} |"
        )
    return lines


def _e2e_md(r: dict[str, Any]) -> list[str]:
    f = r["frames"]
    split = r["glass_to_glass_split"]
    lines = [
        f"Real-time speech pushed over the WebSocket in 20 ms packets for {r['options'].get('duration')} s, "
        f"video decoded from WHEP on 127.0.0.1; glass-to-glass = decode of a frame less the push of "
        f"the packet carrying its first audio sample.",
        "",
        PCT_HEADER,
        _pct_row("glass-to-glass", r["glass_to_glass_ms"]),
        _pct_row("  push -> leaves scheduler (playout wait)", split["server_ms"]),
        _pct_row("  leaves scheduler -> decoded (transport)", split["transport_ms"]),
        _pct_row("A/V offset (markers vs stamps, media time)", r["av_offset_ms"]),
        _pct_row("A/V offset on arrival (audio - video decode)", r["av_arrival_offset_ms"]),
        _pct_row("jitter (inter-arrival deviation)", r["jitter_ms"]),
        _pct_row("time to first frame", r["ttff_ms"]),
        _pct_row("interrupt to silence", r["interrupt_to_silence_ms"]),
        _pct_row("server window compute", r["server"]["window_compute_ms"]),
        _pct_row("server frame ready before due", r["server"]["ready_margin_ms"]),
    ]
    inp = r.get("input")
    if inp:
        lines += [
            _pct_row("input: packet push lateness vs real time", inp["push_lateness_ms"]),
            _pct_row("input: WebSocket transit", inp["ws_transit_ms"]),
        ]
    burst = r.get("burst")
    if burst:
        lines += [
            _pct_row(f"burst {burst['speed']:g}x: push -> decoded", burst["glass_to_glass_ms"]),
            _pct_row("burst: queueing (pushed ahead of real time)", burst["queue_ms"]),
            _pct_row("burst: service (the rest)", burst["service_ms"]),
        ]
    lines += [
        "",
        f"Frames: {f['received']} decoded over {_fmt(f['stream_seconds'])} s of stream; dropped (stamp gaps) "
        f"{f['dropped']}, repeated stamps {f['repeated']}, "
        f"late (> {r['options'].get('late_ms', 40)} ms after "
        f"their slot) {f['late']}, unreadable stamps {f['unreadable']}, stamp != pts {f['stamp_mismatch']}; "
        f"server: {json.dumps(f.get('server', {}))}.",
    ]
    every = r.get("glass_to_glass_all_frames_ms") or {}
    late_pictures = (f.get("server") or {}).get("repeated_during_speech")
    if every.get("n") and late_pictures is not None:
        lines += [
            "",
            f"Real time: {late_pictures} of {every['n']} speech frames "
            f"({100.0 * late_pictures / every['n']:.1f}%) "
            "showed the previous picture because their window was not ready in time (the server repeats it, "
            "audio stays on time); glass-to-glass above counts the fresh frames, over every frame it is "
            f"p50 {_fmt(every.get('p50'))} / p95 {_fmt(every.get('p95'))} ms.",
        ]
    if inp and inp["speech_shifts"]:
        lines += [
            "",
            f"Speech re-placed later {len(inp['speech_shifts'])} time(s), "
            f"{_fmt(inp['speech_shift_total_ms'])} ms in all: audio missed a window deadline, silence "
            "was inserted and the rest of the utterance plays that much later: "
            + ", ".join(
                f"+{_fmt(x['shift_ms'])} ms at {_fmt(x['pushed_at'])} s" for x in inp["speech_shifts"][:10]
            ),
        ]
    cal = r.get("calibration")
    if cal:
        lines += [
            "",
            f"Calibration: playout delay raised by {_fmt(cal['added_playout_ms'], 0)} ms moved "
            f"the glass-to-glass "
            f"p50 from {_fmt(cal['base_p50_ms'])} to {_fmt(cal['shifted_p50_ms'])} ms: a shift of "
            f"{_fmt(cal['measured_shift_ms'])} ms ({_fmt(cal.get('measured_shift_net_ms'))} ms net of speech "
            "re-placed later by the server).",
        ]
    return lines


def _scale_md(r: dict[str, Any]) -> list[str]:
    lines = [
        f"Sessions at real time, one viewer each; held = every session >= 24.5 fps fresh at the client, "
        f"<= 1% frames late or dropped, glass-to-glass p95 <= {_fmt(r['target_p95_ms'], 0)} ms.",
        "",
        "| sessions | held | min fps | g2g p95 (worst) ms | late ratio | dropped | server CPU s/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in r["sessions"]:
        lines.append(
            f"| {s['sessions']} | {_fmt(s['held'])} | {_fmt(s['fps_min'])} "
            f"| {_fmt(s['glass_to_glass_p95_ms'])} "
            f"| {_fmt(s['repeated_ratio'], 3)} | {s['dropped']} | {_fmt(s['cpu_s_per_s'], 2)} |"
        )
    lines += [
        "",
        f"Largest N held: {r['max_sessions_held']}.",
        "",
        "| viewers of one session | server CPU s/s | of which delivery (not model compute) | min fps |",
        "|---|---|---|---|",
    ]
    for v in r["viewers"]:
        lines.append(
            f"| {v['viewers']} | {_fmt(v['cpu_s_per_s'], 3)} | {_fmt(v.get('delivery_cpu_s_per_s'), 3)} "
            f"| {_fmt(v['fps_min'])} |"
        )
    lines += [
        "",
        f"CPU per extra viewer: {_fmt(r['cpu_ms_per_viewer_per_s'])} ms of CPU per second of stream "
        f"(slope of delivery CPU; slope of total CPU {_fmt(r.get('cpu_ms_per_viewer_per_s_total'))}).",
    ]
    return lines


def _backends_md(r: dict[str, Any]) -> list[str]:
    if not r["available"]:
        return [f"benchmarks/backends.py not available: {r['results'].get('reason')}"]
    lines = [f"Mode: {r['mode']}.", "", PCT_HEADER]
    for name, res in r["results"].items():
        if isinstance(res, dict) and "window_ms" in res:
            lines.append(_pct_row(f"{name}: window", res["window_ms"]))
            for component, p in res.get("components_ms", {}).items():
                lines.append(_pct_row(f"{name}: {component}", p))
    return lines


def _duration_md(r: dict[str, Any]) -> list[str]:
    growth_pct = 100.0 * (r["memory_growth_frac"] or 0.0)
    lines = [
        f"{_fmt(r['seconds'] / 60.0)} minutes of live stream on a virtual clock (speech, then "
        f"pauses), {r['frames']} frames in {_fmt(r['wall_s'])} s of compute "
        f"(wall rtf {_fmt(r['wall_rtf'], 2)}).",
        "",
        f"Memory: {_fmt(r['rss_warm_mb'])} MiB RSS after {_fmt(r['warmup_s'], 0)} s of warm-up, at most "
        f"{_fmt(r['rss_max_after_warmup_mb'])} MiB after it; largest RSS in the last third over the "
        f"first third after warm-up: {_fmt(growth_pct, 2)}%.",
        "",
        "| live structure | largest (second half) / largest (first half) |",
        "|---|---|",
    ]
    lines += [f"| {key} | {_fmt(value, 3)} |" for key, value in r["state_ratio"].items()]
    lines += [
        "",
        f"Identity distance to the portrait (CIEDE2000 over block means): first minute "
        f"{_fmt(r['identity_distance_first_minute'], 2)}, final {_fmt(r['drift_final'], 2)}, slope "
        f"{_fmt(r['drift_slope'], 3)} dE00 per minute.",
    ]
    return lines


_MEASURED = {
    "engine": _engine_md,
    "e2e": _e2e_md,
    "scale": _scale_md,
    "backends": _backends_md,
    "duration": _duration_md,
}


# --- compare -----------------------------------------------------------------------------------------
def compare(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Two results side by side: every headline figure both have, with B/A."""
    lines = [
        f"# compare {a.get('suite')}: A = {a['environment']['machine']} {a['environment']['date']} "
        f"({a['environment']['git_commit']}), B = {b['environment']['machine']} {b['environment']['date']} "
        f"({b['environment']['git_commit']})",
        "",
        f"load median: A {a['load_average']['median']:.2f}, B {b['load_average']['median']:.2f}",
        "",
        "| metric | A | B | B/A | |",
        "|---|---|---|---|---|",
    ]
    if a.get("suite") != b.get("suite"):
        lines.insert(1, f"\nwarning: different suites ({a.get('suite')} vs {b.get('suite')})\n")
    sa, sb = a.get("summary", {}), b.get("summary", {})
    for key in [k for k in sa if k in sb]:
        va, vb = sa[key], sb[key]
        if not isinstance(va, int | float) or not isinstance(vb, int | float) or isinstance(va, bool):
            continue
        ratio = vb / va if va else None
        verdict = ""
        if ratio is not None and abs(ratio - 1.0) > 0.05:
            better = (ratio > 1) == (key in HIGHER_IS_BETTER)
            verdict = "better" if better else "worse"
        lines.append(
            f"| {key} | {_fmt(float(va), 2)} | {_fmt(float(vb), 2)} | {_fmt(ratio, 3)} | {verdict} |"
        )
    return "\n".join(lines) + "\n"
