"""The onnxruntime backend: the exported graphs of ``export/``, without the torch model code.

Deployments run this where installing the model code is unwanted or the graphs come from a
build machine: it reads ``manifest.json`` and five graphs, and imports nothing from
``engine.models`` (torch is still imported, because tensors cross the Backend interface as torch
CPU tensors). Shapes are fixed per config, as exported; the streaming decoder's conv cache is a
set of explicit graph inputs and outputs that the caller feeds back window after window.

Session tuning. One backend holds five sessions and a server holds a backend per stream, so
sessions never spin their thread pools (``session.intra_op.allow_spinning=0``: with spinning, a
measured pipeline ran ~30% slower), use an explicit number of intra-op threads and one inter-op
thread, and full graph optimisation. On the CUDA (or TensorRT) execution provider, inputs and
outputs go through IO binding, so ORT allocates outputs on the device once per call instead of
synchronising per tensor.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from engine.config import ModelConfig
from engine.runtime.base import BackendUnavailable
from engine.runtime.graph_backend import GraphBackend
from engine.runtime.manifest import (
    COMPONENTS,
    ComponentSpec,
    Manifest,
    check_config,
    component_path,
    one_line,
    read_manifest,
)

log = logging.getLogger(__name__)


def import_onnxruntime() -> ModuleType:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailable(
            "onnx: onnxruntime is not installed (pip install onnxruntime, or 'livehuman[cuda]' for GPUs)"
        ) from exc
    return onnxruntime


def check_device(ort: ModuleType, device: str) -> list[str]:
    """The providers this onnxruntime offers, if it can run on ``device``; else BackendUnavailable.

    Separate from ``execution_providers`` so that ``auto`` on a GPU machine with the CPU-only
    onnxruntime gives up on onnx/cuda before exporting anything, not after a minute of export.
    """
    if device not in ("cpu", "cuda"):
        raise BackendUnavailable(f"onnx: unknown device {device!r}; choose cpu or cuda")
    available = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise BackendUnavailable(
            f"onnx: device 'cuda' needs onnxruntime-gpu, but this onnxruntime offers {', '.join(available)} "
            "(pip uninstall onnxruntime, then pip install 'livehuman[cuda]')"
        )
    return available


def execution_providers(ort: ModuleType, device: str, cache_dir: Path) -> list[Any]:
    """CPU EP for ``cpu``; TensorRT (when present), then CUDA, then CPU for ``cuda``."""
    available = check_device(ort, device)
    if device == "cpu":
        return ["CPUExecutionProvider"]
    providers: list[Any] = []
    if "TensorrtExecutionProvider" in available:
        # ORT's TensorRT EP builds engines on first run; caching them beside the graphs makes
        # that a one-time cost per export.
        trt_options = {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir)}
        providers.append(("TensorrtExecutionProvider", trt_options))
    return [*providers, "CUDAExecutionProvider", "CPUExecutionProvider"]


def session_options(ort: ModuleType, threads: int) -> Any:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


class OnnxGraph:
    """One inference session and its fixed signature: numpy arrays in, numpy arrays out."""

    def __init__(
        self, ort: ModuleType, path: Path, spec: ComponentSpec, options: Any, providers: list[Any]
    ) -> None:
        self.path = path
        self.spec = spec
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises several unrelated types for a bad file
            raise BackendUnavailable(
                f"component file '{path}' cannot be loaded by onnxruntime: {one_line(exc)}"
            ) from exc
        names = [i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()]
        expected = [t.name for t in spec.inputs], [t.name for t in spec.outputs]
        if names != expected:
            raise BackendUnavailable(
                f"component file '{path}' does not match its manifest entry's inputs/outputs"
            )
        wanted = next((p if isinstance(p, str) else p[0] for p in providers), "CPUExecutionProvider")
        self.on_device = wanted != "CPUExecutionProvider"
        if self.on_device and not set(self.session.get_providers()) & {wanted, "CUDAExecutionProvider"}:
            raise BackendUnavailable(f"onnx: '{path}' fell back to the CPU: no usable CUDA GPU")

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        feeds = {
            spec.name: np.ascontiguousarray(array, dtype=spec.dtype)
            for spec, array in zip(self.spec.inputs, arrays, strict=True)
        }
        if not self.on_device:
            return self.session.run(None, feeds)
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        for spec in self.spec.outputs:
            binding.bind_output(spec.name, "cuda")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()


class OnnxBackend(GraphBackend):
    """The Backend interface over an ``export --format onnx`` directory.

    ``expected`` is the config the caller means to run; an export of another preset is refused.
    ``verify`` checks every file's sha256 against the manifest (cheap next to loading it).
    """

    name = "onnx"

    def __init__(
        self,
        directory: str | Path,
        *,
        device: str = "cpu",
        threads: int | None = None,
        expected: ModelConfig | None = None,
        manifest: Manifest | None = None,
        verify: bool = True,
    ) -> None:
        ort = import_onnxruntime()
        self.directory = Path(directory)
        self.manifest = manifest or read_manifest(self.directory, "onnx")
        self.config = (
            self.manifest.config
            if expected is None
            else check_config(self.manifest, expected, self.directory)
        )
        self.device = device
        providers = execution_providers(ort, device, self.directory / "ort_trt_cache")
        options = session_options(ort, threads or torch.get_num_threads())
        self.graphs = {
            name: OnnxGraph(
                ort,
                component_path(self.manifest, self.directory, name, verify),
                self.manifest.components[name],
                options,
                providers,
            )
            for name in COMPONENTS
        }
        log.info(
            "onnx backend: %s (%s, opset %d) on %s",
            self.directory,
            self.manifest.precision,
            self.manifest.opset,
            self.graphs["dit_step"].session.get_providers()[0],
        )

    def _execute(self, component: str, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        outputs = self.graphs[component](*(t.detach().cpu().numpy() for t in inputs))
        return [torch.from_numpy(np.asarray(out, dtype=np.float32)) for out in outputs]
