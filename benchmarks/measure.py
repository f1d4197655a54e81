"""What the live benchmarks compute from what a client received and what the server recorded.

Pure functions over plain lists, so each is unit-tested on made-up streams (a frame dropped on
purpose, a repeat, a late arrival) before it is trusted with a real one.

Conventions: times are seconds on the system-wide monotonic clock (client and server processes
share it); frame ``f`` is the one whose bench stamp reads ``f``; its audio starts at timeline
sample ``f * 640`` (16 kHz) and at ``f * 1920`` on the viewer's 48 kHz audio timeline.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stream.stamps import MARKER_PERIOD_FRAMES, Marker, detect_markers

FPS = 25
SAMPLES_PER_FRAME = 640  # 16 kHz model audio
AUDIO_RATE = 48_000
AUDIO_PER_FRAME = 1920
RATE = 16_000


# --- frames -----------------------------------------------------------------------------------------
def count_frames(indices: Sequence[int | None]) -> dict[str, Any]:
    """Counts over the stamps of decoded frames, in arrival order (None: no readable stamp).

    ``dropped`` is every index missing between the first and the last one received (a sequence
    gap); ``repeated`` counts extra copies of an index already received.
    """
    valid = [i for i in indices if i is not None]
    unique = sorted(set(valid))
    gaps = []
    for a, b in zip(unique, unique[1:], strict=False):
        if b - a > 1:
            gaps.append([a + 1, b - a - 1])
    return {
        "received": len(indices),
        "unreadable": len(indices) - len(valid),
        "repeated": len(valid) - len(unique),
        "dropped": sum(count for _, count in gaps),
        "out_of_order": sum(1 for a, b in zip(valid, valid[1:], strict=False) if b < a),
        "first": unique[0] if unique else None,
        "last": unique[-1] if unique else None,
        "gaps": gaps[:100],
    }


def first_arrivals(indices: Sequence[int | None], received_at: Sequence[float]) -> dict[int, float]:
    """When each frame index was first decoded."""
    first: dict[int, float] = {}
    for index, t in zip(indices, received_at, strict=True):
        if index is not None and index not in first:
            first[index] = t
    return first


def arrival_offsets(first: dict[int, float]) -> dict[int, float]:
    """Each frame's decode time less its place on a 25 fps clock: constant for a perfect stream."""
    return {f: t - f / FPS for f, t in first.items()}


def late_frames(first: dict[int, float], threshold_ms: float) -> list[int]:
    """Frames decoded more than ``threshold_ms`` after their slot on the stream's own 25 fps clock,
    anchored at the median arrival offset (what a player with that much jitter buffer would miss)."""
    if not first:
        return []
    offsets = arrival_offsets(first)
    base = float(np.median(list(offsets.values())))
    return sorted(f for f, o in offsets.items() if (o - base) * 1000.0 > threshold_ms)


def jitter_ms(indices: Sequence[int | None], received_at: Sequence[float]) -> list[float]:
    """|inter-arrival time - frame spacing| per consecutive pair of new frames, in arrival order."""
    out = []
    previous: tuple[int, float] | None = None
    seen: set[int] = set()
    for index, t in zip(indices, received_at, strict=True):
        if index is None or index in seen:
            continue
        seen.add(index)
        if previous is not None and index > previous[0]:
            expected = (index - previous[0]) / FPS
            out.append(abs((t - previous[1]) - expected) * 1000.0)
        previous = (index, t)
    return out


# --- glass to glass -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Placement:
    """One pushed packet: when the client sent it, when the server got it, where it was placed."""

    pushed_at: float
    arrived_at: float
    start: int  # timeline position (16 kHz samples)
    samples: int


def match_utterances(
    client: Sequence[Sequence[float]], server_pushes: Iterable[Sequence[Any]]
) -> list[list[Placement]]:
    """Tie the client's packets (push times, per utterance, in order) to the server's placements
    ``(arrived_at, start, samples, segment_id)``. WebSocket order is kept, and each utterance is one
    segment, so the j-th segment the server saw is the client's j-th utterance."""
    by_segment: dict[int, list[Sequence[Any]]] = {}
    for push in server_pushes:
        by_segment.setdefault(int(push[3]), []).append(push)
    segments = list(by_segment.values())
    if len(segments) != len(client):
        raise ValueError(f"client sent {len(client)} utterances, the server saw {len(segments)} segments")
    out = []
    for j, (times, pushes) in enumerate(zip(client, segments, strict=True)):
        if len(times) != len(pushes):
            raise ValueError(f"utterance {j}: {len(times)} packets sent, {len(pushes)} placed")
        out.append(
            [Placement(t, float(p[0]), int(p[1]), int(p[2])) for t, p in zip(times, pushes, strict=True)]
        )
    return out


def push_lateness_ms(placements: Sequence[Placement], speed: float = 1.0) -> list[float]:
    """How late each packet left the client against a real-time schedule (``speed`` x 20 ms per
    packet) anchored at its earliest consistent start, so no packet counts as early: the jitter the
    server's input saw, before any network."""
    if not placements:
        return []
    offsets = np.cumsum([0] + [p.samples for p in placements[:-1]]) / RATE / speed
    ideal = np.array([p.pushed_at for p in placements]) - offsets
    return list((ideal - ideal.min()) * 1000.0)


def placement_shifts(placements: Sequence[Placement]) -> list[tuple[int, int]]:
    """``(packet, samples)`` wherever an utterance's placement on the timeline moved later than its
    audio alone would put it: the server inserted silence because audio was late for a deadline,
    and everything after plays that much later."""
    out = []
    expected = placements[0].start if placements else 0
    for k, p in enumerate(placements):
        if p.start != expected:
            out.append((k, p.start - expected))
        expected = p.start + p.samples
    return out


G2G_COLUMNS = (
    "frame",
    "pushed_at",
    "presented_at",
    "received_at",
    "glass_to_glass_ms",
    "server_ms",
    "transport_ms",
    "ahead_ms",
    "service_ms",
    "shift_ms",
    "repeated",
)


def glass_to_glass(
    placements: Sequence[Placement],
    first: dict[int, float],
    presented: dict[int, tuple[float, bool]],
) -> list[dict[str, Any]]:
    """One record per decoded frame driven by this utterance.

    - ``glass_to_glass_ms``: decode at the client less the push of the packet that carried the
      frame's first audio sample (the conservative end of the frame's 40 ms of audio);
    - split at the server's presentation: ``server_ms`` (push -> the frame leaves the scheduler:
      the playout wait, with generation inside it) and ``transport_ms`` (encode, RTP, network,
      jitter buffer, decode);
    - split against real time: ``ahead_ms`` is how far ahead of real-time pacing the packet was
      pushed (the time it queued because it came early: ~0 when streamed, large in a burst) and
      ``service_ms`` what is left (``glass_to_glass_ms - ahead_ms``). The utterance's first packet
      anchors real time, as it anchors the utterance on the server's timeline;
    - ``shift_ms``: how far the server had moved the utterance later by then (inserted silence);
      ``glass_to_glass_ms - shift_ms`` is the pipeline's own latency.
    """
    if not placements:
        return []
    starts = [p.start for p in placements]
    lo, hi = starts[0], placements[-1].start + placements[-1].samples
    anchor = placements[0]
    pushed_before = np.cumsum([0] + [p.samples for p in placements])  # samples before packet k
    records = []
    for frame in sorted(first):
        position = frame * SAMPLES_PER_FRAME
        if not lo <= position < hi:
            continue
        k = bisect.bisect_right(starts, position) - 1
        packet = placements[k]
        if position >= packet.start + packet.samples:
            continue  # inserted silence between two stretches of the utterance
        received = first[frame]
        pushed = packet.pushed_at
        # Where real-time pacing would have sent this packet (packets, not samples: a packet's
        # samples all arrive together, so 20 ms packetisation is not counted as queueing).
        scheduled = anchor.pushed_at + (packet.start - anchor.start) / RATE
        shown = presented.get(frame)
        records.append(
            {
                "frame": frame,
                "pushed_at": pushed,
                "presented_at": shown[0] if shown else None,
                "received_at": received,
                "glass_to_glass_ms": (received - pushed) * 1000.0,
                "server_ms": (shown[0] - pushed) * 1000.0 if shown else None,
                "transport_ms": (received - shown[0]) * 1000.0 if shown else None,
                "ahead_ms": max(scheduled - pushed, 0.0) * 1000.0,
                "service_ms": (received - max(scheduled, pushed)) * 1000.0,
                # How much later than its own audio put it the server placed this packet, because
                # earlier audio missed a deadline and silence went in before it.
                "shift_ms": (packet.start - anchor.start - int(pushed_before[k])) / RATE * 1000.0,
                "repeated": bool(shown[1]) if shown else None,
            }
        )
    return records


def ready_margins_ms(
    windows: Sequence[Sequence[Any]], presented: dict[int, tuple[float, bool]]
) -> list[float]:
    """Per presented frame: its presentation less the end of the window that produced it (how much
    compute headroom it had; negative if it was finished late). ``windows`` are the scheduler's
    records ``(start, steps, frames, timings, began, ended)``; the newest that ended before the
    frame was shown wins (rollbacks regenerate frames)."""
    ready: dict[int, list[float]] = {}
    for start, _steps, frames, _timings, _began, ended in windows:
        first = 4 * max(int(start), 0)
        for f in range(first, first + int(frames)):
            ready.setdefault(f, []).append(float(ended))
    out = []
    for frame, (shown, repeated) in presented.items():
        if repeated or frame not in ready:
            continue
        before = [t for t in ready[frame] if t <= shown]
        out.append((shown - (max(before) if before else min(ready[frame]))) * 1000.0)
    return out


# --- audio ----------------------------------------------------------------------------------------
def audio_timeline(chunks: Sequence[Any]) -> tuple[np.ndarray, int]:
    """The received 48 kHz audio laid out by pts (gaps are zeros), and the pts of its first sample."""
    if not chunks:
        return np.zeros(0, np.float32), 0
    first = min(c.pts for c in chunks)
    last = max(c.pts + len(c.samples) for c in chunks)
    timeline = np.zeros(last - first, np.float32)
    for c in chunks:
        timeline[c.pts - first : c.pts - first + len(c.samples)] = c.samples
    return timeline, first


def av_offsets(
    first: dict[int, float], chunks: Sequence[Any]
) -> tuple[list[float], list[float], list[Marker]]:
    """A/V offset per audio marker whose frame was received, as tests/test_e2e.py measures it:
    on the media timeline (marker onset on the audio pts clock less the frame's pts), and on
    arrival (decode of the audio packet holding the onset less decode of the frame)."""
    timeline, start = audio_timeline(chunks)
    markers = detect_markers(timeline, start) if len(timeline) else []
    by_pts = sorted(chunks, key=lambda c: c.pts)
    pts = [c.pts for c in by_pts]
    media, arrival = [], []
    for marker in markers:
        if marker.frame not in first:
            continue
        media.append((marker.sample / AUDIO_RATE - marker.frame / FPS) * 1000.0)
        k = bisect.bisect_right(pts, marker.sample) - 1
        if k >= 0 and marker.sample < by_pts[k].pts + len(by_pts[k].samples):
            arrival.append((by_pts[k].received_at - first[marker.frame]) * 1000.0)
    return media, arrival, markers


def _marker_mask(pts: int, n: int, markers: Sequence[Marker], margin: int = 480) -> np.ndarray:
    """Samples of a chunk that may hold a bench marker burst (scheduled or detected), plus a margin
    for the codec's smear."""
    keep = np.ones(n, bool)
    first_frame = (pts - margin) // AUDIO_PER_FRAME
    last_frame = (pts + n + margin) // AUDIO_PER_FRAME
    spans = [
        f * AUDIO_PER_FRAME for f in range(first_frame, last_frame + 1) if f % MARKER_PERIOD_FRAMES == 0
    ] + [m.sample for m in markers]
    for onset in spans:
        a, b = onset - margin - pts, onset + AUDIO_PER_FRAME + margin - pts
        if b > 0 and a < n:
            keep[max(a, 0) : min(b, n)] = False
    return keep


def chunk_levels(chunks: Sequence[Any], markers: Sequence[Marker] = ()) -> list[float]:
    """Peak |sample| of each chunk with the marker bursts left out."""
    levels = []
    for c in chunks:
        keep = _marker_mask(c.pts, len(c.samples), markers)
        levels.append(float(np.abs(c.samples[keep]).max()) if keep.any() else 0.0)
    return levels


def interrupt_to_silence_ms(
    chunks: Sequence[Any],
    interrupted_at: float,
    *,
    window_s: float = 1.5,
    silence: float = 0.02,
    loud: float = 0.05,
    markers: Sequence[Marker] = (),
) -> tuple[float | None, bool]:
    """Time from sending the interrupt to the received audio going silent for good (every chunk
    decoded after that, up to ``window_s``, peaks under ``silence``; marker bursts excluded).

    Returns ``(ms or None if it never went silent, whether speech was audible just before)``.
    """
    ordered = sorted(chunks, key=lambda c: c.received_at)
    before = [c for c in ordered if interrupted_at - 0.3 <= c.received_at < interrupted_at]
    after = [c for c in ordered if interrupted_at <= c.received_at < interrupted_at + window_s]
    speaking = bool(before) and max(chunk_levels(before, markers)) > loud
    if not after:
        return None, speaking
    levels = chunk_levels(after, markers)
    loud_ones = [k for k, level in enumerate(levels) if level >= silence]
    if not loud_ones:
        return (after[0].received_at - interrupted_at) * 1000.0, speaking
    last = loud_ones[-1]
    if last + 1 >= len(after):
        return None, speaking
    return (after[last + 1].received_at - interrupted_at) * 1000.0, speaking
