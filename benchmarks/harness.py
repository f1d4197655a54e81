"""What every suite shares: options, backend loading, a load-average sampler, counted failures,
compact per-sample tables and the speech the suites push.

Nothing here measures; it keeps the suites short and makes them record the same things.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("bench")

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "engine" / "assets"
RESULTS_DIR = REPO / "benchmarks" / "results"
RATE = 16_000  # model audio; the suites push speech at this rate, so positions map 1:1
PACKET = RATE // 50  # 20 ms, as telephony and agent pipelines send it


@dataclass
class BenchOptions:
    """The command line of ``livehuman bench SUITE``; recorded verbatim in every result."""

    suite: str
    preset: str = "tiny"
    backend: str = "torch"
    duration: float | None = None  # seconds of speech in the main scenario; None: suite default
    out: str = str(RESULTS_DIR)
    smoke: bool = False  # a few seconds of audio, for tests
    threads: int | None = None  # torch intra-op threads (None: torch's default)
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # suite-specific options

    def get(self, name: str, default: Any) -> Any:
        value = self.extra.get(name)
        return default if value is None else value

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.update(data.pop("extra"))
        return data


class Failures:
    """Failures are counted and recorded, never raised: a result says what it could not measure."""

    def __init__(self) -> None:
        self.items: list[dict[str, str]] = []

    def add(self, where: str, error: BaseException | str) -> None:
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        log.warning("%s failed: %s", where, text)
        if not isinstance(error, str):
            log.debug("%s", "".join(traceback.format_exception(error)))
        self.items.append({"where": where, "error": text})

    @contextlib.contextmanager
    def guard(self, where: str) -> Iterator[None]:
        """Run a block; an exception in it is recorded and the suite goes on."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - counted, per the benchmark contract
            self.add(where, exc)

    def __len__(self) -> int:
        return len(self.items)


class LoadSampler:
    """Samples the 1-minute load average once a second on a daemon thread, so a result shows how
    busy the machine was (other jobs share these cores)."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-load-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(self.interval_s)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self.samples.append(os.getloadavg()[0])

    def report(self) -> dict[str, Any]:
        values = self.samples or [os.getloadavg()[0]]
        return {
            "cores": os.cpu_count(),
            "median": float(np.median(values)),
            "max": float(max(values)),
            "samples": [round(v, 2) for v in values],
        }


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """Per-sample records as one header and rows of values: compact, and still every sample."""
    return {"columns": list(columns), "rows": [[_round(v) for v in row] for row in rows]}


def _round(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return round(float(value), 3)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def load_backend(
    name: str, preset: str, threads: int | None = None, scheduler: Any = None
) -> tuple[Any, dict[str, Any]]:
    """The backend to benchmark and a note of how it was loaded.

    ``livehuman.backends.load_backend`` when it is there; otherwise torch, and the note says so.
    ``scheduler`` replaces the model's scheduler config first: exported graphs have fixed shapes
    per window geometry, so another W/O needs its own export (the engine cache keeps each).
    """
    import torch

    from engine.weights import resolve_model

    if threads is not None:
        torch.set_num_threads(threads)
    target: Any = preset  # a preset, a model directory or an export directory
    if scheduler is not None:
        target = resolve_model(preset)
        target.config = dataclasses.replace(target.config, scheduler=scheduler)
    try:
        from livehuman.backends import load_backend as select
    except ImportError as exc:
        from engine.runtime.torch_backend import TorchBackend

        note = f"livehuman.backends unavailable ({exc}); fell back to TorchBackend"
        log.warning("%s", note)
        model = target if scheduler is not None else resolve_model(preset)
        return TorchBackend(model), {"requested": name, "loaded": "torch", "note": note}
    backend = select(name, target, threads=threads)
    info = {"requested": name, "loaded": getattr(backend, "name", type(backend).__name__), "note": None}
    return backend, info


def speech(seconds: float | None = None) -> np.ndarray:
    """The shipped speech sample at 16 kHz, looped to ``seconds`` (None: once, at its own length):
    real speech, pauses included."""
    from engine.media import read_audio
    from engine.resample import StreamResampler

    decoded = read_audio(ASSETS / "hello.wav")
    mono = decoded.mono()
    if decoded.sample_rate != RATE:
        resampler = StreamResampler(decoded.sample_rate, RATE)
        mono = np.concatenate([resampler.process(mono), resampler.flush()])
    if seconds is None:
        return mono.astype(np.float32)
    return np.resize(mono, int(round(seconds * RATE))).astype(np.float32)


def vowel(seconds: float, amplitude: float = 0.3) -> np.ndarray:
    """A sustained voiced sound with no pauses (harmonics of 150 Hz below 800 Hz, slow tremolo), so
    "the audio went silent" can only mean the interrupt took effect. Kept below 800 Hz, where the
    bench-stamp audio markers are not looked for."""
    t = np.arange(int(round(seconds * RATE))) / RATE
    voice = sum(np.sin(2 * np.pi * 150 * h * t) / h for h in range(1, 6))
    envelope = 0.8 + 0.2 * np.sin(2 * np.pi * 3 * t)
    return (amplitude * envelope * voice / 1.5).astype(np.float32)


def peak_rss_mb() -> float:
    """The process's peak resident set (VmHWM) in MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak_rss() -> bool:
    """Reset VmHWM (Linux >= 4.0: write 5 to clear_refs), so the next peak is this phase's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def current_peak_mb() -> float | None:
    """VmHWM from /proc (resettable, unlike getrusage's ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


@contextlib.contextmanager
def young_gc_only() -> Iterator[None]:
    """No full garbage collection while a networked suite measures; young generations still run.

    The client keeps minutes of per-packet and per-frame records, and a full collection over
    that heap stalled its asyncio loop: two pushes of real-time speech went out 293 ms apart at
    258.5 s of a 5-minute run, which the server rightly took as the speech stopping (it inserted
    silence and re-placed the rest of the utterance). Short-lived cycles are still freed by the
    young generations; the full collection runs once, afterwards.
    """
    thresholds = gc.get_threshold()
    gc.set_threshold(thresholds[0], thresholds[1], 1_000_000_000)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.collect()


def monotonic() -> float:
    """The clock every timestamp in a result is taken on (system-wide, so server and client agree)."""
    return time.monotonic()
