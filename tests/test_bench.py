"""The benchmark suite: its counting and mapping functions on made-up streams, each suite in smoke
mode against its schema, and the live measurement checked against a known change.

The networked tests start the bench server on 127.0.0.1 (``make test`` runs them in a loopback-only
network namespace). Each smoke run pushes a few seconds of audio through the tiny preset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from benchmarks.cli import options_from
from benchmarks.harness import BenchOptions
from benchmarks.measure import (
    Placement,
    count_frames,
    first_arrivals,
    glass_to_glass,
    interrupt_to_silence_ms,
    jitter_ms,
    late_frames,
    match_utterances,
    placement_shifts,
    push_lateness_ms,
)
from benchmarks.report import compare, dumps, save
from benchmarks.schema import SCHEMAS, _check, validate


# --- counting and mapping, on streams made up to the frame --------------------------------------------
def test_a_frame_dropped_on_purpose_counts_as_one_drop_and_a_repeat_as_one_repeat() -> None:
    stream = list(range(100, 120))
    del stream[7]  # frame 107 never arrives
    stream.insert(12, stream[11])  # one frame arrives twice
    stream.insert(3, None)  # one stamp unreadable
    counts = count_frames(stream)
    assert counts["received"] == 21
    assert counts["dropped"] == 1 and counts["gaps"] == [[107, 1]]
    assert counts["repeated"] == 1
    assert counts["unreadable"] == 1
    assert counts["out_of_order"] == 0
    assert count_frames(list(range(50)))["dropped"] == 0


def test_late_frames_and_jitter_are_measured_against_the_25_fps_clock() -> None:
    frames = list(range(50))
    received = [10.0 + f / 25 for f in frames]
    received[20] += 0.1  # decoded 100 ms after its slot
    first = first_arrivals(frames, received)
    assert late_frames(first, threshold_ms=40.0) == [20]
    jitter = jitter_ms(frames, received)
    assert len(jitter) == 49
    assert sorted(jitter)[-2:] == pytest.approx([100.0, 100.0])  # into frame 20 and out of it
    assert np.median(jitter) == pytest.approx(0.0, abs=1e-6)


def test_glass_to_glass_ties_each_frame_to_the_packet_that_carried_its_first_sample() -> None:
    # An utterance placed at timeline sample 16_160 (just past frame 25), 20 ms packets pushed every
    # 20 ms from t = 100 s; the server shows frame f at 100 + 0.6 + (f*640 - 16_160)/16_000 s and
    # the client decodes it 50 ms later.
    place, pushed0, delay = 16_160, 100.0, 0.6
    placements = [
        Placement(pushed0 + 0.02 * k, pushed0 + 0.02 * k + 0.001, place + 320 * k, 320) for k in range(100)
    ]
    presented = {f: (pushed0 + delay + (f * 640 - place) / 16_000, False) for f in range(20, 120)}
    first = {f: t + 0.05 for f, (t, _) in presented.items()}
    records = glass_to_glass(placements, first, presented)
    frames = [r["frame"] for r in records]
    assert frames == list(range(26, 76)), "frames whose first sample lies inside the utterance"
    assert all(r["shift_ms"] == 0.0 for r in records)
    for r in records:
        offset = (r["frame"] * 640 - place) % 320  # samples into its packet
        assert r["glass_to_glass_ms"] == pytest.approx(delay * 1000 + 50 + offset / 16, abs=1e-6)
        assert r["transport_ms"] == pytest.approx(50.0)
        assert r["ahead_ms"] == pytest.approx(0.0, abs=1e-6)
    # The same audio pushed 10x faster: it queues, and the queueing is split off.
    burst = [Placement(pushed0 + 0.002 * k, 0.0, place + 320 * k, 320) for k in range(100)]
    records = glass_to_glass(burst, first, presented)
    last = records[-1]
    packet = (last["frame"] * 640 - place) // 320
    assert last["ahead_ms"] == pytest.approx(packet * 18.0, abs=1e-6)
    assert last["service_ms"] == pytest.approx(last["glass_to_glass_ms"] - last["ahead_ms"], abs=1e-6)


def test_a_late_packet_and_the_silence_it_caused_are_reported_on_the_input_side() -> None:
    # Packet 50 leaves 185 ms late; the server inserted 2960 samples of silence before it.
    placements = []
    start = 1000
    for k in range(100):
        catching_up = max(0.185 - 0.02 * (k - 50), 0.0) if k >= 50 else 0.0  # then sent back to back
        if k == 50:
            start += 2960
        placements.append(Placement(10.0 + 0.02 * k + catching_up, 0.0, start, 320))
        start += 320
    assert placement_shifts(placements) == [(50, 2960)]
    lateness = push_lateness_ms(placements)
    assert lateness[49] == pytest.approx(0.0, abs=1e-9) and lateness[50] == pytest.approx(185.0)
    records = glass_to_glass(placements, {f: 20.0 for f in range(120)}, {})
    shifts = {r["frame"]: r["shift_ms"] for r in records}
    assert shifts[2] == 0.0 and shifts[40] == pytest.approx(185.0), "everything after plays 185 ms later"


def test_packets_are_matched_to_placements_utterance_by_utterance() -> None:
    client = [[1.0, 1.02], [5.0]]
    server = [(1.001, 100, 320, 1), (1.021, 420, 320, 1), (5.001, 9000, 320, 2)]
    matched = match_utterances(client, server)
    assert [len(m) for m in matched] == [2, 1]
    assert matched[1][0] == Placement(5.0, 5.001, 9000, 320)
    with pytest.raises(ValueError, match="utterance 0"):
        match_utterances([[1.0], [5.0]], server)


@dataclass
class Chunk:
    pts: int
    samples: np.ndarray
    received_at: float


def test_interrupt_to_silence_ignores_the_bench_markers() -> None:
    chunks = []
    for k in range(150):  # 3 s of 20 ms chunks; loud until 1.2 s, then silent
        loud = k < 60
        samples = np.full(960, 0.3 if loud else 0.0, np.float32)
        chunks.append(Chunk(48_000 + 960 * k, samples, 10.0 + 0.02 * k))
    # A marker burst (frame 75: 48 kHz sample 144_000) lands in the silence; it is not speech.
    marker_chunk = (144_000 - 48_000) // 960
    chunks[marker_chunk].samples[:] = 0.4
    ms, speaking = interrupt_to_silence_ms(chunks, interrupted_at=10.0 + 0.02 * 55, window_s=1.5)
    assert speaking
    assert ms == pytest.approx(100.0, abs=1e-6)  # chunk 60 is the first silent one


# --- results -------------------------------------------------------------------------------------------
def test_the_fallback_checker_catches_what_the_schema_forbids() -> None:
    assert (
        _check(
            {"p50": 1.0, "p95": 2.0, "p99": 3.0, "mean": 1.5, "n": 3},
            SCHEMAS["e2e"]["properties"]["jitter_ms"],
            "$",
        )
        == []
    )
    errors = _check({"p50": "fast", "n": -1}, SCHEMAS["e2e"]["properties"]["jitter_ms"], "$")
    assert any("'p95' is a required property" in e for e in errors)
    assert any("$/p50" in e for e in errors) and any("minimum" in e for e in errors)
    assert validate({"suite": "nope"}) == ["unknown suite 'nope'"]


def test_records_stay_one_line_per_row_and_compare_gives_ratios(tmp_path) -> None:  # noqa: ANN001
    a = {
        "suite": "e2e",
        "environment": {"machine": "m", "date": "d1", "git_commit": "c1"},
        "load_average": {"median": 0.5},
        "summary": {"glass_to_glass_p50_ms": 600.0, "stream_seconds": 60.0},
    }
    b = {
        **a,
        "environment": {"machine": "m", "date": "d2", "git_commit": "c2"},
        "summary": {"glass_to_glass_p50_ms": 660.0, "stream_seconds": 60.0},
    }
    text = compare(a, b)
    assert "| glass_to_glass_p50_ms | 600.00 | 660.00 | 1.100 | worse |" in text
    table = {"rows": [[1, 2.5, None, "q"], [2, 3.5, True, "r"]]}
    dumped = dumps(table)
    assert '[1, 2.5, null, "q"]' in dumped and json.loads(dumped) == table


def test_the_command_line_runs_compare(tmp_path, capsys) -> None:  # noqa: ANN001
    from livehuman.cli import main

    result = {"suite": "engine", "environment": {"machine": "m", "date": "d", "git_commit": "c"},
              "load_average": {"median": 0.1}, "summary": {"rtf": 0.8}}  # fmt: skip
    (tmp_path / "a.json").write_text(json.dumps(result))
    (tmp_path / "b.json").write_text(json.dumps({**result, "summary": {"rtf": 0.4}}))
    assert main(["bench", "compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    assert "| rtf | 0.80 | 0.40 | 0.500 | better |" in capsys.readouterr().out


# --- each suite in smoke mode ---------------------------------------------------------------------------
def smoke(suite: str, tmp_path, **extra) -> tuple[dict, dict]:  # noqa: ANN001, ANN003
    from benchmarks.cli import run_suite

    # One torch thread: on two shared cores, two intra-op threads stall whenever another process
    # runs (spinning workers wait for a descheduled sibling), which makes timing tests flaky.
    options = BenchOptions(suite=suite, out=str(tmp_path), smoke=True, threads=1, progress=False, extra=extra)
    result = run_suite(options)
    assert validate(result) == [], validate(result)
    paths = save(result, tmp_path)
    assert {"json", "png", "md"} <= set(paths)
    assert json.loads(paths["json"].read_text())["suite"] == suite
    markdown = paths["md"].read_text()
    assert "Latency budget" in markdown and "565 ms" in markdown, "the DESIGN.md budget beside the figures"
    assert (tmp_path / "index.jsonl").read_text().count("\n") == 1
    return result, paths


def test_engine_smoke_reports_windows_stages_and_the_sweep(tmp_path) -> None:  # noqa: ANN001
    result, _ = smoke("engine", tmp_path)
    assert result["failures"] == []
    assert result["frames"] == 25
    windows = result["records"]["windows"]
    assert len(windows["rows"]) == result["window_compute_ms"]["n"] + 1  # + the end-of-input flush
    assert result["stage_ms"]["dit"]["n"] == result["window_compute_ms"]["n"]
    assert [(p["window"], p["overlap"]) for p in result["sweep"]] == [(2, 1), (3, 1)]
    assert all(p["seam_ratio"] is not None for p in result["sweep"])


def test_e2e_smoke_stamps_round_trip_and_a_known_delay_shows_up_in_full(tmp_path) -> None:  # noqa: ANN001
    """Real server, real WebRTC: every received frame's index is recovered exactly, and raising the
    playout delay by 300 ms (degradation off, so nothing absorbs it) moves glass to glass by 300 ms."""
    result, _ = smoke("e2e", tmp_path, calibrate_ms=300)
    frames = result["frames"]
    assert frames["received"] >= 100
    assert frames["unreadable"] == 0 and frames["stamp_mismatch"] == 0, "every stamp read back exactly"
    assert frames["dropped"] == 0 and frames["repeated"] == 0, frames["gaps"]
    assert list(result["config"]["scheduler"]["fallback_steps"]) == [], "degradation off"
    delay = result["latency_budget"]["playout_delay_ms"]
    g2g = result["glass_to_glass_all_frames_ms"]
    assert g2g["n"] >= 40 and g2g["p50"] >= delay, "a frame cannot be seen before its playout time"
    calibration = result["calibration"]
    # Net of any mid-utterance re-placement (which "input" reports on its own): should a window be
    # skipped under load, the server may move the rest of an utterance later, a real effect that
    # the stamps measure too but that is not the delay this test injects.
    assert calibration["measured_shift_net_ms"] == pytest.approx(300.0, rel=0.10), calibration
    assert result["ttff_ms"]["n"] == 1  # the main session (the calibration one has a raised delay)
    assert result["interrupt_to_silence_ms"]["n"] == 1
    assert result["burst"]["queue_ms"]["p95"] > 0.0
    assert result["av_offset_ms"]["n"] >= 1


def test_scale_smoke_ramps_sessions_and_viewers(tmp_path) -> None:  # noqa: ANN001
    result, _ = smoke("scale", tmp_path)
    assert [s["sessions"] for s in result["sessions"]] == [1]
    assert [v["viewers"] for v in result["viewers"]] == [1, 2]
    assert all(v["cpu_s_per_s"] > 0 for v in result["viewers"])
    assert result["cpu_ms_per_viewer_per_s"] is not None


def test_backends_smoke_calls_into_benchmarks_backends(tmp_path) -> None:  # noqa: ANN001
    result, _ = smoke("backends", tmp_path)
    assert result["available"] and result["mode"] == "smoke"
    torch_result = result["results"]["torch fp32"]
    assert {"audio_encoder", "dit_step", "vae_decoder_step"} <= set(torch_result["components_ms"])
    assert torch_result["window_ms"]["n"] > 0


def test_memory_growth_and_state_ratio_catch_a_leak_and_pass_bounded_state() -> None:
    from benchmarks.suites.duration import memory_growth, state_ratio

    flat = [(t, 500.0 + (t % 30) / 2.0) for t in range(10, 300, 10)]  # swings, no trend
    leaking = [(t, 500.0 + t / 5.0) for t in range(10, 300, 10)]
    assert memory_growth(flat, 60.0) < 0.01
    assert memory_growth(leaking, 60.0) > 0.05
    bounded = [[t, 0.0, 16000 + 320 * (t % 7)] for t in range(10, 300, 10)]
    growing = [[t, 0.0, 160 * t] for t in range(10, 300, 10)]
    assert state_ratio(bounded, 2, 60.0) == pytest.approx(1.0, abs=0.05)
    assert state_ratio(growing, 2, 60.0) > 1.5


def test_duration_two_minutes_of_live_stream_keep_memory_state_and_identity_flat(
    tmp_path,
    monkeypatch,
    livehuman_cache,
    default_backend,  # noqa: ANN001
) -> None:
    """The CI version of the 30-minute benchmark: the shipped model, live scheduler, virtual clock,
    on the CPU's best backend (onnx int8), reusing the run's export of the default model."""
    from benchmarks.cli import run_suite

    monkeypatch.setenv("LIVEHUMAN_CACHE", str(livehuman_cache))
    options = BenchOptions(
        suite="duration", preset="default", duration=120.0, out=str(tmp_path), threads=2, progress=False,
        backend="onnx",
    )  # fmt: skip
    result = run_suite(options)
    assert validate(result) == [], validate(result)
    delay_s = result["config"]["scheduler"]["playout_delay_ms"] / 1000.0
    assert abs(result["frames"] - (120.0 - delay_s) * 25) <= 1, "live: the first frame shows after the delay"
    assert result["memory_growth_frac"] <= 0.05, result["records"]["samples"]
    assert all(v is not None and v <= 1.5 for v in result["state_ratio"].values()), result["state_ratio"]
    assert abs(result["drift_slope"]) < 0.1 and result["drift_final"] < 3.0, result["summary"]
    assert {g["metric"] for g in result["goals"] if not g["met"]} == set(), result["goals"]


def test_bench_options_come_from_the_command_line() -> None:
    from livehuman.cli import build_parser

    args = build_parser().parse_args(["bench", "e2e", "--duration", "300", "--calibrate-ms", "0", "--smoke"])
    options = options_from(args)
    assert options.suite == "e2e" and options.duration == 300.0 and options.smoke
    assert options.extra["calibrate_ms"] == 0 and options.extra["interrupts"] is None


def test_audio_ceiling_probes_read_what_the_features_hold_and_nothing_else() -> None:
    from benchmarks.audio_ceiling import mlp, ridge, scores, with_context

    rng = np.random.default_rng(0)
    mouth = rng.random(600)
    informative = np.stack([mouth + 0.05 * rng.standard_normal(600), rng.standard_normal(600)], axis=1)
    blind = rng.standard_normal((600, 2))
    speech = mouth > 0.3
    train, held = slice(0, 400), slice(400, 600)
    for probe in (ridge, lambda x, y, v: mlp(x, y, v, steps=300, seed=0)):
        told = scores(probe(informative[train], mouth[train], informative[held]), mouth[held], speech[held])
        guessed = scores(probe(blind[train], mouth[train], blind[held]), mouth[held], speech[held])
        assert told["lipsync_corr"] > 0.95 and abs(guessed["lipsync_corr"]) < 0.25, (told, guessed)
    framed = with_context(np.arange(4.0)[:, None], 1)
    assert framed.tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]
