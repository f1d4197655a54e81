"""One PNG per result (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _rows(table: dict[str, Any], *columns: str) -> list[list[Any]]:
    index = [table["columns"].index(c) for c in columns]
    return [[row[i] for i in index] for row in table["rows"]]


def plot(result: dict[str, Any], path: str | Path) -> None:
    fig = _PLOTS[result["suite"]](result)
    env = result["environment"]
    fig.suptitle(
        f"livehuman bench {result['suite']} - {result['preset']} on {env['machine']} ({env['cpu']}, "
        f"{env['cpu_count']} cores) - {env['date']} - {env['git_commit']}",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _engine(r: dict[str, Any]) -> plt.Figure:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    windows = r["records"]["windows"]
    stages = [s for s in ("audio", "dit", "blend", "decode", "color") if s in windows["columns"]]
    rows = _rows(windows, "start", *stages)
    bottom = [0.0] * len(rows)
    for k, stage in enumerate(stages):
        values = [row[k + 1] or 0.0 for row in rows]
        axes[0].bar(range(len(rows)), values, bottom=bottom, label=stage, width=1.0)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    axes[0].axhline(r["window_media_ms"], color="k", ls="--", lw=1, label="media per window")
    axes[0].set(xlabel="window", ylabel="ms", title="compute per window, by stage")
    axes[0].legend(fontsize=7)
    totals = [b for b in bottom if b > 0]
    axes[1].hist(totals, bins=30)
    axes[1].axvline(r["window_media_ms"], color="k", ls="--", lw=1)
    axes[1].set(xlabel="window compute ms", ylabel="windows", title=f"rtf {r['rtf']:.3f}")
    for p in r["sweep"]:
        x, y = p["latency_floor_ms"], p["seam_ratio"]
        if x is None or y is None:
            continue
        axes[2].scatter(x, y, s=20 + 8 * p["steps"])
        axes[2].annotate(f"W{p['window']}O{p['overlap']} s{p['steps']}", (x, y), fontsize=7)
    axes[2].set(xlabel="latency floor ms (audio wait + compute p95)", ylabel="seam ratio", title="sweep")
    return fig


def _e2e(r: dict[str, Any]) -> plt.Figure:
    fig, axes = plt.subplots(2, 2, figsize=(13, 8))
    g2g = r["records"]["glass_to_glass"]
    rows = _rows(g2g, "utterance", "received_at", "glass_to_glass_ms", "ahead_ms")
    for kind, color in (("realtime", "C0"), ("calibration", "C2"), ("burst", "C3")):
        pts = [(row[1], row[2]) for row in rows if row[0] == kind]
        if pts:
            axes[0, 0].scatter(*zip(*pts, strict=True), s=3, c=color, label=kind)
    for y, label in ((600, "goal p50"), (800, "goal p95")):
        axes[0, 0].axhline(y, color="k", ls=":", lw=1)
        axes[0, 0].text(0.01, y, label, fontsize=7, va="bottom", transform=axes[0, 0].get_yaxis_transform())
    axes[0, 0].axhline(
        r["latency_budget"]["playout_delay_ms"], color="C1", ls="--", lw=1, label="playout delay"
    )
    axes[0, 0].set(xlabel="decoded at (s)", ylabel="glass-to-glass ms", title="per frame")
    axes[0, 0].legend(fontsize=7)
    realtime = [row[2] for row in rows if row[0] == "realtime"]
    if realtime:
        axes[0, 1].hist(realtime, bins=40)
    axes[0, 1].set(xlabel="glass-to-glass ms (real-time speech)", ylabel="frames", title="distribution")
    frames = r["records"]["frames"]
    pairs = _rows(frames, "stamp", "received_at")
    jit = []
    previous = None
    for stamp, t in pairs:
        if stamp is None:
            continue
        if previous is not None and stamp > previous[0]:
            jit.append(((t - previous[1]) - (stamp - previous[0]) / 25) * 1000.0)
        previous = (stamp, t)
    if jit:
        axes[1, 0].hist(jit, bins=60)
    axes[1, 0].set(xlabel="inter-arrival deviation ms", ylabel="frames", title="jitter")
    markers = r["records"]["av_markers"]
    av = _rows(markers, "frame", "media_offset_ms", "arrival_offset_ms")
    if av:
        axes[1, 1].plot([a[0] for a in av], [a[1] for a in av], "o", ms=3, label="media time")
        axes[1, 1].plot(
            [a[0] for a in av if a[2] is not None],
            [a[2] for a in av if a[2] is not None],
            "x",
            ms=3,
            label="arrival",
        )
    axes[1, 1].axhspan(-40, 40, color="g", alpha=0.1)
    axes[1, 1].set(xlabel="frame", ylabel="audio - video ms", title="A/V offset per marker")
    axes[1, 1].legend(fontsize=7)
    return fig


def _scale(r: dict[str, Any]) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    n = [s["sessions"] for s in r["sessions"]]
    axes[0].plot(n, [s["fps_min"] or 0 for s in r["sessions"]], "o-", label="min fps")
    ax2 = axes[0].twinx()
    ax2.plot(n, [s["glass_to_glass_p95_ms"] or 0 for s in r["sessions"]], "s--", c="C1", label="g2g p95")
    ax2.axhline(r["target_p95_ms"], color="C1", ls=":", lw=1)
    axes[0].axhline(25, color="k", ls=":", lw=1)
    axes[0].set(xlabel="concurrent sessions", ylabel="fps (worst session)", title="sessions")
    ax2.set_ylabel("glass-to-glass p95 ms (worst session)")
    axes[0].legend(loc="lower left", fontsize=7)
    ax2.legend(loc="lower right", fontsize=7)
    m = [v["viewers"] for v in r["viewers"]]
    axes[1].plot(m, [v["cpu_s_per_s"] or 0 for v in r["viewers"]], "o-")
    axes[1].set(xlabel="viewers of one session", ylabel="server CPU s per s", title="CPU per viewer")
    return fig


def _backends(r: dict[str, Any]) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(9, 4.5))
    names, values = [], []
    for name, res in r["results"].items():
        if isinstance(res, dict) and res.get("window_ms", {}).get("p50") is not None:
            names.append(name)
            values.append(res["window_ms"]["p50"])
    ax.barh(names, values)
    ax.set(xlabel="window compute p50 ms", title="backends")
    return fig


def _duration(r: dict[str, Any]) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    samples = _rows(r["records"]["samples"], "stream_s", "rss_mb")
    axes[0].plot([s[0] / 60.0 for s in samples], [s[1] for s in samples], "-")
    axes[0].axvline(r["warmup_s"] / 60.0, color="k", ls=":", lw=1)
    after = [s[1] for s in samples if s[0] > r["warmup_s"]]
    if len(after) >= 3:  # the criterion: the last third against the first third's largest RSS
        axes[0].axhline(
            1.05 * max(after[: len(after) // 3]), color="C3", ls="--", lw=1, label="+5% of first third"
        )
        axes[0].legend(fontsize=7)
    axes[0].set(xlabel="stream minutes", ylabel="RSS MiB", title="memory")
    distance = _rows(r["records"]["distance_per_second"], "second", "identity_distance")
    axes[1].plot([d[0] / 60.0 for d in distance], [d[1] for d in distance], "-", lw=0.8)
    axes[1].axhline(3.0, color="C3", ls="--", lw=1, label="3 dE00")
    axes[1].set(xlabel="stream minutes", ylabel="dE00 to the portrait", title="identity drift")
    axes[1].legend(fontsize=7)
    return fig


_PLOTS = {"engine": _engine, "e2e": _e2e, "scale": _scale, "backends": _backends, "duration": _duration}
