"""The engine cache: exports keyed by weights hash + shapes + precision + device + toolchain.

A server start calls ``ensure_exported``: an export whose key matches and whose files verify is
reused as is; anything else (new weights, another onnxruntime or TensorRT, changed model code, a
truncated file, an export that died half way) is rebuilt, and the builds it replaces are removed.
Builds go to a temporary directory that is renamed into place once its manifest is written, so a
crash never leaves a directory that looks complete.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from engine.models.livehuman import LiveHumanModel
from engine.runtime.base import BackendUnavailable
from engine.runtime.manifest import COMPONENTS, Manifest, component_path, read_manifest
from export.errors import ExportError
from export.onnx_export import DEFAULT_OPSET, export_onnx
from export.provenance import Provenance, provenance

log = logging.getLogger(__name__)

FORMATS = ("onnx", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
# Chosen by benchmarks/backends.py: on the CPU, the int8 DiT is the fastest configuration whose
# frames stay within a few uint8 levels of fp32; on GPUs, fp16 is the common fast path.
DEFAULT_PRECISION = {("onnx", "cpu"): "int8", ("onnx", "cuda"): "fp16", ("tensorrt", "cuda"): "fp16"}


def default_cache_dir() -> Path:
    """``$LIVEHUMAN_CACHE/engines``, by default under ``~/.cache/livehuman``."""
    root = os.environ.get("LIVEHUMAN_CACHE") or Path.home() / ".cache" / "livehuman"
    return Path(root) / "engines"


def default_precision(format: str, device: str) -> str:
    if (format, device) not in DEFAULT_PRECISION:
        raise ExportError(f"no {format} export for device {device!r} (tensorrt needs cuda)")
    return DEFAULT_PRECISION[(format, device)]


def _target(format: str, device: str) -> str:
    """The device part of the cache key: TensorRT engines are only valid on the GPU model they
    were built for, ONNX graphs on any device of the kind."""
    if format == "tensorrt":
        from engine.runtime.tensorrt_backend import gpu_identity, import_tensorrt

        import_tensorrt()  # the more fundamental absence is the one to report
        return gpu_identity()
    return device


def export_model(
    model: LiveHumanModel,
    directory: str | Path,
    *,
    format: str = "onnx",
    precision: str | None = None,
    device: str = "cpu",
    opset: int = DEFAULT_OPSET,
    origin: Provenance | None = None,
) -> Manifest:
    """Export ``model`` to ``directory`` in ``format``; parity-checked, manifest written last."""
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; choose onnx or tensorrt")
    precision = precision or default_precision(format, device)
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if format == "onnx":
        return export_onnx(model, directory, precision=precision, opset=opset, device=device, origin=origin)
    from export.tensorrt_export import export_tensorrt

    return export_tensorrt(model, directory, precision=precision, origin=origin)


def stale_reason(directory: Path, key: str, format: str) -> str | None:
    """Why the export in ``directory`` cannot be reused for ``key``; None when it can."""
    try:
        manifest = read_manifest(directory, format)
        if manifest.key != key:
            return f"built for another key ({manifest.key[:12]}, want {key[:12]})"
        for name in COMPONENTS:
            component_path(manifest, directory, name)
    except BackendUnavailable as exc:
        return str(exc)
    return None


def ensure_exported(
    model: LiveHumanModel,
    *,
    format: str = "onnx",
    precision: str | None = None,
    device: str = "cpu",
    opset: int = DEFAULT_OPSET,
    cache_dir: str | Path | None = None,
) -> Path:
    """The cached export of ``model`` for this precision, device and toolchain, built if needed."""
    precision = precision or default_precision(format, device)
    origin = provenance(model, model.config, format, precision, _target(format, device), opset)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    # Builds of the same weights share a prefix: a new toolchain or code version replaces them,
    # while other weights under the same preset name (a checkpoint and the random preset) coexist.
    prefix = f"{model.config.name}-{origin.weights_sha256[:8]}-{format}-{precision}-opset{opset}-{device}-"
    directory = cache_dir / f"{prefix}{origin.key[:16]}"
    reason = stale_reason(directory, origin.key, format)
    if reason is None:
        log.info("engine cache: reusing %s", directory)
        return directory
    log.info("engine cache: building %s (%s)", directory, reason)
    cache_dir.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=cache_dir))
    try:
        export_model(
            model, build, format=format, precision=precision, device=device, opset=opset, origin=origin
        )
        shutil.rmtree(directory, ignore_errors=True)
        build.rename(directory)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    # Older builds of the same weights, format, precision and device are stale now. A process
    # still running one keeps working: runtimes hold the loaded graphs in memory.
    for old in cache_dir.glob(f"{prefix}*"):
        if old != directory:
            log.info("engine cache: removing stale %s", old)
            shutil.rmtree(old, ignore_errors=True)
    return directory
