"""CUDA parity of a trained model: torch fp32 on the CPU against torch on CUDA.

    python benchmarks/cuda_parity.py --preset default --out benchmarks/results

The unit test checks the CUDA path on a random tiny model; this checks what a GPU user gets from
the shipped one. It renders the same speech from the same portrait and seed as ``livehuman render``
does, on the CPU (the reference) and on CUDA, fp32 eager and the CUDA default (a bf16 DiT,
compiled into CUDA graphs), and reports the frame difference, PSNR, how the mouth estimator's
reading of the CUDA frames follows the CPU frames', and each render's time: the second render,
since the first one compiles. Needs a CUDA GPU; without one it says so and exits 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import environment, write_result  # noqa: E402
from engine.media import DecodedAudio, read_audio, read_image  # noqa: E402
from engine.render import render_frames  # noqa: E402
from engine.runtime.torch_backend import TorchBackend  # noqa: E402
from engine.training.estimators import mouth_opening  # noqa: E402
from engine.weights import resolve_model  # noqa: E402

log = logging.getLogger("bench.cuda_parity")

ASSETS = Path(__file__).resolve().parents[1] / "engine" / "assets"
VARIANTS: dict[str, dict[str, Any]] = {
    "fp32": {},
    "bf16_compiled": {"dtype": torch.bfloat16, "compile": True},
}


def timed_render(
    backend: TorchBackend, portrait: np.ndarray, audio: DecodedAudio
) -> tuple[np.ndarray, float]:
    """Every frame of one offline render (``engine.render.render_frames``), and its wall time."""
    start = time.perf_counter()
    frames, _ = render_frames(backend, portrait, audio.mono(), sample_rate=audio.sample_rate)
    return frames.astype(np.float32), time.perf_counter() - start


def run(args: argparse.Namespace) -> dict[str, Any]:
    audio = read_audio(args.audio)
    cpu = TorchBackend(resolve_model(args.preset))
    portrait = read_image(args.image, cpu.config.height, cpu.config.width)
    reference, cpu_seconds = timed_render(cpu, portrait, audio)
    reference_mouth = mouth_opening(reference, portrait)
    result: dict[str, Any] = {
        "bench": "cuda_parity",
        "preset": args.preset,
        "environment": environment(),
        "command": " ".join(sys.argv),
        "audio_s": round(audio.duration_s, 2),
        "cpu_fp32_render_s": round(cpu_seconds, 2),
    }
    for name, options in VARIANTS.items():
        backend = TorchBackend(resolve_model(args.preset), "cuda", **options)
        first_seconds = timed_render(backend, portrait, audio)[1]
        frames, seconds = timed_render(backend, portrait, audio)
        error = np.abs(frames - reference)
        mse = float(np.mean(error**2))
        mouth = mouth_opening(frames, portrait)
        result[name] = {
            "first_render_s": round(first_seconds, 2),
            "render_s": round(seconds, 2),
            "rtf": round(seconds / audio.duration_s, 4),
            "mean_abs_diff": round(float(error.mean()), 3),
            "psnr_db": round(10 * np.log10(255**2 / mse), 2) if mse else None,
            "mouth_corr_vs_cpu": round(float(np.corrcoef(mouth, reference_mouth)[0, 1]), 4),
            "mouth_mean": round(float(mouth.mean()), 3),
            "mouth_mean_cpu": round(float(reference_mouth.mean()), 3),
        }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="default", help="model name or directory (default: the shipped)")
    parser.add_argument("--audio", default=str(ASSETS / "hello.wav"))
    parser.add_argument("--image", default=str(ASSETS / "portrait.png"))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if not torch.cuda.is_available():
        log.error("cuda_parity needs a CUDA GPU; torch %s sees none", torch.__version__)
        return 2
    result = run(args)
    path = write_result(result, args.out, f"cuda-parity-{Path(args.preset).name}")
    log.info("fp32 %s, bf16 compiled %s -> %s", result["fp32"], result["bf16_compiled"], path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
