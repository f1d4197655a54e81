"""Backends benchmark: each component and a whole window, per backend, precision and opset.

    python benchmarks/backends.py --preset tiny --seconds 6 --rounds 7 --out benchmarks/results

Configurations: torch eager (fp32, the reference), onnxruntime fp32 at opsets 18 and 23 (23
keeps SDPA as ONNX's fused Attention), and the int8 DiT at both opsets. Exports come from the
engine cache (``--cache-dir``), so a second run skips them.

Rounds interleave the configurations (in a rotating order), so load from other processes on a
shared machine hits them alike. Two speedups: the median over rounds of each round's torch
window over the configuration's, and the ratio of their least disturbed rounds (other load only
adds time). The load average is recorded at every round. Components
are timed through the Backend interface (the scheduler's view, conversion included) after a
warm-up. A window is one scheduler window of an offline render of looped speech: audio
features, every DiT step, blend and decode. Quality: every configuration renders the same audio
with the same seed, and its frames are compared to torch fp32 in uint8 levels.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import environment, percentiles, write_result  # noqa: E402
from benchmarks.render import ASSETS  # noqa: E402
from engine.generator import Conditioning  # noqa: E402
from engine.media import read_audio, read_image  # noqa: E402
from engine.runtime.base import Backend  # noqa: E402
from engine.runtime.onnx_backend import OnnxBackend  # noqa: E402
from engine.runtime.torch_backend import TorchBackend  # noqa: E402
from engine.scheduler import Scheduler  # noqa: E402
from engine.weights import resolve_model  # noqa: E402
from export.cache import DEFAULT_PRECISION, ensure_exported  # noqa: E402
from export.graphs import build_graphs  # noqa: E402
from export.onnx_export import DEFAULT_OPSET  # noqa: E402

log = logging.getLogger("bench.backends")

ONNX_CONFIGS = [("fp32", 18), ("fp32", 23), ("int8", 18), ("int8", 23)]


def component_calls(
    backend: Backend, inputs: dict[str, tuple[torch.Tensor, ...]]
) -> dict[str, Callable[[], Any]]:
    """One call per component on fixed inputs; the decoder step runs on a primed cache."""
    latent, audio = inputs["vae_decoder_step"][:2]
    _, cache = backend.vae_decoder_step(latent, backend.vae_decoder_cache(1), audio)
    encoder_cache = backend.vae_encoder_cache(1)
    return {
        "text_encoder": lambda: backend.encode_text("a person talking to the camera"),
        "audio_encoder": lambda: backend.audio_encoder(*inputs["audio_encoder"]),
        "dit_step": lambda: backend.dit_step(*inputs["dit_step"]),
        "vae_encoder_step": lambda: backend.vae_encoder_step(*inputs["vae_encoder_step"][:1], encoder_cache),
        "vae_decoder_step": lambda: backend.vae_decoder_step(latent, cache, audio),
    }


def time_calls(calls: dict[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, list[float]]:
    samples = {}
    for name, call in calls.items():
        for _ in range(warmup):
            call()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append((time.perf_counter() - start) * 1000.0)
        samples[name] = times
    return samples


def render_windows(
    backend: Backend, speech: np.ndarray, portrait: np.ndarray
) -> tuple[np.ndarray, list[float]]:
    """Frames and per-window compute ms of an offline render through the real scheduler."""
    config = backend.config
    scheduler = Scheduler(backend, Conditioning.from_portrait(backend, portrait), config, seed=3)
    scheduler.push_audio(speech, 16_000)
    scheduler.end_input()
    frames = []
    while not scheduler.done:
        scheduler.work()
        frames += [frame.rgb for frame in scheduler.release()]
    windows = [sum(r.timings_ms.values()) for r in scheduler.records if r.steps]
    return np.stack(frames), windows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seconds", type=float, default=6.0, help="speech rendered per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per component per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", help="engine cache (default: $LIVEHUMAN_CACHE/engines)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    model = resolve_model(args.preset)
    config = model.config
    backends: dict[str, Backend] = {"torch fp32": TorchBackend(model)}
    for precision, opset in ONNX_CONFIGS:
        directory = ensure_exported(model, precision=precision, opset=opset, cache_dir=args.cache_dir)
        backends[f"onnx {precision} opset{opset}"] = OnnxBackend(
            directory, threads=args.threads, expected=config
        )
    inputs = {name: graph.inputs for name, graph in build_graphs(model, "fp32").items()}
    speech = np.resize(read_audio(ASSETS / "hello.wav").mono(), int(args.seconds * 16_000)).astype(np.float32)
    portrait = read_image(ASSETS / "portrait.png", config.height, config.width)

    components: dict[str, dict[str, list[float]]] = {name: {} for name in backends}
    windows: dict[str, list[list[float]]] = {name: [] for name in backends}  # per round
    frames: dict[str, np.ndarray] = {}
    loads = []
    names = list(backends)
    for round_ in range(args.rounds):
        loads.append(os.getloadavg()[0])
        # Rotate the order each round, so no configuration always follows the same neighbour.
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            backend = backends[name]
            calls = component_calls(backend, inputs)
            for component, times in time_calls(calls, args.repeats, args.warmup).items():
                components[name].setdefault(component, []).extend(times)
            rendered, window_ms = render_windows(backend, speech, portrait)
            windows[name].append(window_ms[2:])  # the first windows warm caches up
            frames.setdefault(name, rendered)
        log.info("round %d/%d done, load %.2f", round_ + 1, args.rounds, loads[-1])
    loads.append(os.getloadavg()[0])

    reference = frames["torch fp32"].astype(np.float32)
    torch_rounds = [statistics.median(w) for w in windows["torch fp32"]]
    results = {}
    for name, backend in backends.items():
        diff = np.abs(frames[name].astype(np.float32) - reference)
        rounds = [statistics.median(w) for w in windows[name]]
        # Paired per round: both ran minutes apart at most, under about the same load.
        speedup = statistics.median(t / r for t, r in zip(torch_rounds, rounds, strict=True))
        # Other processes only ever add time, so the least disturbed round is the best estimate
        # of what the configuration costs on an idle machine.
        best_speedup = min(torch_rounds) / min(rounds)
        results[name] = {
            "components_ms": {c: percentiles(t) for c, t in components[name].items()},
            "window_ms": percentiles([ms for w in windows[name] for ms in w]),
            "window_ms_per_round": rounds,
            "speedup_vs_torch": speedup,
            "best_round_window_ms": min(rounds),
            "best_round_speedup_vs_torch": best_speedup,
            "frames_vs_torch_fp32": {
                "mean_abs_uint8": float(diff.mean()),
                "max_abs_uint8": float(diff.max()),
            },
            "parity": backend.manifest.parity if isinstance(backend, OnnxBackend) else None,
        }
        log.info(
            "%-18s window p50 %5.1f ms, best round %5.1f ms | %.2fx torch paired, %.2fx best | %s | "
            "vs torch: mean %.3f max %.0f",
            name,
            results[name]["window_ms"]["p50"],
            min(rounds),
            speedup,
            best_speedup,
            " ".join(f"{c} {statistics.median(t):.1f}" for c, t in components[name].items()),
            diff.mean(),
            diff.max(),
        )
    result = {
        "benchmark": "backends",
        "environment": {**environment(), "onnxruntime": _onnxruntime_version(), "threads": args.threads},
        "load_average_1min": {"per_round": loads, "median": statistics.median(loads)},
        "preset": config.name,
        "seconds_per_round": args.seconds,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "window_media_ms": config.scheduler.stride * 4 * 40,
        "default_onnx_cpu": f"onnx {DEFAULT_PRECISION[('onnx', 'cpu')]} opset{DEFAULT_OPSET}",
        "results": results,
    }
    log.info("load average during the run: median %.2f on %d cores", statistics.median(loads), os.cpu_count())
    log.info("wrote %s", write_result(result, args.out, f"backends-{config.name}"))


def _onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


if __name__ == "__main__":
    main()
