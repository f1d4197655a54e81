"""``load_backend``: one call from a backend name and a model (or preset, or export) to a Backend.

``auto`` takes the best that loads here: TensorRT, then onnxruntime on CUDA, then torch on CUDA
when a GPU is visible; onnxruntime, then torch, on the CPU. Each candidate that cannot load says
why in one line and the next is tried, so a missing extra never stops a render.

Given a model or preset, the onnx and tensorrt backends go through
``export.cache.ensure_exported``, which reuses a matching export and builds a stale or missing
one. It lives in ``livehuman/``, the wiring package, because ``engine`` must not depend on
``export/`` (``stream -> engine <- export``); ``export`` is imported lazily, only then. Given
an export directory, nothing from ``export/`` or ``engine.models`` is imported at all.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from engine.runtime.base import Backend, BackendUnavailable
from engine.runtime.manifest import MANIFEST_NAME, Manifest, read_manifest

if TYPE_CHECKING:
    from engine.models.livehuman import LiveHumanModel

log = logging.getLogger(__name__)

BackendName = Literal["torch", "onnx", "tensorrt", "auto"]
BACKENDS = ("torch", "onnx", "tensorrt")
_TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _gpu_visible() -> bool:
    if torch.cuda.is_available():
        return True
    try:
        import onnxruntime
    except ImportError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def auto_order(device: str | None) -> list[tuple[str, str]]:
    """(backend, device) candidates for ``auto``, best first."""
    if device == "cuda" or (device is None and _gpu_visible()):
        return [("tensorrt", "cuda"), ("onnx", "cuda"), ("torch", "cuda"), ("onnx", "cpu"), ("torch", "cpu")]
    return [("onnx", "cpu"), ("torch", "cpu")]


def _export_manifest(model_or_preset: LiveHumanModel | str | Path) -> Manifest | None:
    """The manifest when ``model_or_preset`` is an export directory, else None."""
    if not isinstance(model_or_preset, str | Path) or not (Path(model_or_preset) / MANIFEST_NAME).is_file():
        return None
    return read_manifest(model_or_preset)


def _resolve(model_or_preset: LiveHumanModel | str | Path) -> LiveHumanModel:
    from engine.weights import resolve_model

    if isinstance(model_or_preset, str | Path):
        return resolve_model(str(model_or_preset))
    return model_or_preset


def _load_torch(
    model_or_preset: LiveHumanModel | str | Path, device: str, precision: str | None, threads: int | None
) -> Backend:
    from engine.runtime.torch_backend import TorchBackend

    # On CUDA the fast path is the default: a bf16 DiT, compiled, replayed as CUDA graphs.
    precision = precision or ("bf16" if device == "cuda" else "fp32")
    if precision not in _TORCH_DTYPES or (device == "cpu" and precision != "fp32"):
        raise BackendUnavailable(
            f"torch: runs fp32 on the CPU and fp32/fp16/bf16 on CUDA, not {precision} on {device}"
        )
    return TorchBackend(
        _resolve(model_or_preset), device, threads, dtype=_TORCH_DTYPES[precision], compile=device == "cuda"
    )


def _load(
    name: str,
    model_or_preset: LiveHumanModel | str | Path,
    device: str,
    precision: str | None,
    threads: int | None,
    cache_dir: str | Path | None,
) -> Backend:
    manifest = _export_manifest(model_or_preset)
    if name == "torch":
        if manifest is not None:
            raise BackendUnavailable(
                f"torch: '{model_or_preset}' is an export; torch needs the model's weights"
            )
        return _load_torch(model_or_preset, device, precision, threads)
    expected = None
    directory = Path(model_or_preset) if manifest is not None else None
    if name == "onnx":
        from engine.runtime.onnx_backend import check_device, import_onnxruntime

        check_device(import_onnxruntime(), device)
    if directory is None:
        from export.cache import ensure_exported
        from export.errors import ExportError

        model = _resolve(model_or_preset)
        expected = model.config
        try:
            directory = ensure_exported(
                model, format=name, precision=precision, device=device, cache_dir=cache_dir
            )
        except ExportError as exc:
            raise BackendUnavailable(f"{name} export failed: {exc}") from exc
    if name == "onnx":
        from engine.runtime.onnx_backend import OnnxBackend

        return OnnxBackend(directory, device=device, threads=threads, expected=expected)
    from engine.runtime.tensorrt_backend import TensorRTBackend

    return TensorRTBackend(directory, expected=expected)


def load_backend(
    name: BackendName = "auto",
    model_or_preset: LiveHumanModel | str | Path = "tiny",
    *,
    device: str | None = None,
    precision: str | None = None,
    threads: int | None = None,
    cache_dir: str | Path | None = None,
) -> Backend:
    """A ready Backend.

    ``model_or_preset`` is a model, a preset name, a weights directory, or an export directory
    (with ``manifest.json``, whose format then decides ``auto``). ``device`` None means the
    export's device, CUDA for TensorRT, else the CPU. ``precision`` None takes the default per
    backend and device (``export.cache.DEFAULT_PRECISION``; bf16 for torch on CUDA).
    """
    if name not in (*BACKENDS, "auto"):
        raise BackendUnavailable(f"unknown backend {name!r}; choose {', '.join(BACKENDS)} or auto")
    manifest = _export_manifest(model_or_preset)
    if name != "auto":
        if device is None:
            device = "cuda" if name == "tensorrt" or (manifest and manifest.device == "cuda") else "cpu"
        return _load(name, model_or_preset, device, precision, threads, cache_dir)
    candidates = auto_order(device)
    if manifest is not None:
        candidates = [(n, d) for n, d in candidates if n == manifest.format]
    reasons = []
    for candidate, candidate_device in candidates:
        try:
            backend = _load(candidate, model_or_preset, candidate_device, precision, threads, cache_dir)
        except BackendUnavailable as exc:
            log.info("backend %s on %s unavailable: %s", candidate, candidate_device, exc)
            reasons.append(str(exc))
            continue
        log.info("backend: %s on %s", candidate, candidate_device)
        return backend
    raise BackendUnavailable(f"no backend loads here: {' | '.join(reasons)}")
