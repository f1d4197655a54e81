"""Offline render benchmark: rtf, first-frame latency and per-stage ms for a preset on this machine.

    python benchmarks/render.py --preset tiny --seconds 10 --out benchmarks/results

Goal for ``tiny`` on the 2-core CPU: rtf < 1 with torch alone, first frame under 1 s.
It renders the shipped speech sample looped to ``--seconds`` after a short warm-up render, and
records every window's stage timings besides the aggregates.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import environment, percentiles, write_result  # noqa: E402
from engine.config import FRAMES_PER_LATENT, SAMPLES_PER_LATENT  # noqa: E402
from engine.media import read_audio  # noqa: E402
from engine.render import render, with_overrides  # noqa: E402
from engine.runtime.torch_backend import TorchBackend  # noqa: E402
from engine.weights import resolve_model  # noqa: E402

ASSETS = Path(__file__).resolve().parents[1] / "engine" / "assets"
log = logging.getLogger("bench.render")


def looped_speech(seconds: float, path: Path) -> None:
    speech = read_audio(ASSETS / "hello.wav")
    mono = speech.mono()
    n = int(seconds * speech.sample_rate)
    samples = np.resize(mono, n)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(speech.sample_rate)
        wav.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def latency_budget_ms(config) -> dict[str, float]:  # noqa: ANN001
    """DESIGN.md's floor: a window's first frame waits for W latents of audio plus the look-ahead."""
    s = config.scheduler
    latent_ms = SAMPLES_PER_LATENT / 16.0
    return {
        "first_frame_audio_wait_ms": config.audio_wait_ms,
        "last_frame_audio_wait_ms": config.audio_wait_ms - s.stride * latent_ms,
        "compute_budget_ms": s.compute_budget_ms,
        "playout_delay_ms": s.playout_delay_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    model = resolve_model(args.preset)
    config = with_overrides(model.config, steps=args.steps)
    backend = TorchBackend(model)
    with tempfile.TemporaryDirectory() as tmp:
        audio, warm = Path(tmp) / "speech.wav", Path(tmp) / "warm.wav"
        looped_speech(args.seconds, audio)
        looped_speech(1.0, warm)
        render(backend, ASSETS / "portrait.png", warm, Path(tmp) / "warm.mp4", config=config, progress=False)
        report = render(backend, ASSETS / "portrait.png", audio, Path(tmp) / "out.mp4", config=config)
        window_ms = report.pop("window_ms")
    result = {
        "benchmark": "render",
        "environment": environment(),
        "preset": config.name,
        "config": config.to_dict(),
        "seconds": args.seconds,
        "report": report,
        "window_compute_ms": percentiles(window_ms),
        "window_media_ms": config.scheduler.stride * FRAMES_PER_LATENT * 40,
        "latency_budget": latency_budget_ms(config),
        "windows": window_ms,
    }
    path = write_result(result, args.out, f"render-{config.name}")
    log.info(
        "%s on %s: rtf %.3f (wall %.3f), first frame %.0f ms, window compute p50 %.1f ms per %d ms of media",
        config.name,
        result["environment"]["cpu"],
        report["rtf"],
        report["wall_rtf"],
        report["first_frame_latency_ms"],
        result["window_compute_ms"]["p50"],
        result["window_media_ms"],
    )
    log.info("stage ms: %s", {k: round(v, 1) for k, v in report["stage_ms"].items()})
    log.info("latency budget: %s", result["latency_budget"])
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()
