"""Native TensorRT engines built by ``export/``: fixed shapes, fp16/bf16 inside, CUDA graphs.

Each component is one engine with static shapes, so every input and output gets one device
buffer for the life of the backend and the engine's tensor addresses are set once. A call copies
the inputs into their buffers, replays a CUDA graph of ``execute_async_v3`` (captured after one
plain run, which keeps TensorRT's lazy initialisation out of the graph) and copies the outputs
back: a window's launches cost one replay per component. Buffers come from torch, which is why
the ``tensorrt`` extra needs a CUDA build of torch.

Engines only run on the TensorRT version and GPU model that built them; the manifest records
both and a mismatch is a one-line "stale engine" error naming the directory.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType
from typing import Any

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
    read_manifest,
)

log = logging.getLogger(__name__)


def import_tensorrt() -> ModuleType:
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailable(
            "tensorrt: the tensorrt package is not installed (pip install 'livehuman[tensorrt]')"
        ) from exc
    return tensorrt


def gpu_identity() -> str:
    """The GPU an engine is built for: name and compute capability."""
    if not torch.cuda.is_available():
        raise BackendUnavailable(f"tensorrt: no CUDA GPU visible to torch {torch.__version__}")
    major, minor = torch.cuda.get_device_capability(0)
    return f"{torch.cuda.get_device_name(0)} sm{major}{minor}"


def _torch_dtype(trt: ModuleType, dtype: Any) -> torch.dtype:
    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.bfloat16: torch.bfloat16,
        trt.int64: torch.int64,
        trt.int32: torch.int32,
        trt.bool: torch.bool,
    }
    return table[dtype]


class TensorRTEngine:
    """One deserialised engine with static device buffers and, after its first call, a CUDA graph."""

    def __init__(
        self, trt: ModuleType, runtime: Any, path: Path, spec: ComponentSpec, cuda_graphs: bool
    ) -> None:
        self.spec = spec
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise BackendUnavailable(
                f"engine file '{path}' cannot be deserialised by TensorRT {trt.__version__}"
            )
        self.context = self.engine.create_execution_context()
        self.buffers: dict[str, torch.Tensor] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = tuple(self.engine.get_tensor_shape(name))
            dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(name))
            self.buffers[name] = torch.empty(shape, dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, self.buffers[name].data_ptr())
        self.stream = torch.cuda.Stream()
        self.cuda_graphs = cuda_graphs
        self.graph: torch.cuda.CUDAGraph | None = None

    def __call__(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        with torch.cuda.stream(self.stream):
            for spec, tensor in zip(self.spec.inputs, inputs, strict=True):
                self.buffers[spec.name].copy_(tensor, non_blocking=True)
            if self.graph is not None:
                self.graph.replay()
            else:
                if not self.context.execute_async_v3(self.stream.cuda_stream):
                    raise RuntimeError(f"tensorrt: {self.spec.file} failed to run")
                if self.cuda_graphs:
                    self._capture()
            # .cpu() waits for this stream, so the outputs are complete when they are returned.
            return [self.buffers[spec.name].float().cpu() for spec in self.spec.outputs]

    def _capture(self) -> None:
        """Record one enqueue into a CUDA graph; later calls replay it on the same buffers."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            self.context.execute_async_v3(self.stream.cuda_stream)
        self.graph = graph


class TensorRTBackend(GraphBackend):
    """The Backend interface over an ``export --format tensorrt`` directory."""

    name = "tensorrt"

    def __init__(
        self,
        directory: str | Path,
        *,
        expected: ModelConfig | None = None,
        manifest: Manifest | None = None,
        cuda_graphs: bool = True,
        verify: bool = True,
    ) -> None:
        trt = import_tensorrt()
        gpu = gpu_identity()
        self.directory = Path(directory)
        self.manifest = manifest or read_manifest(self.directory, "tensorrt")
        self.config = (
            self.manifest.config
            if expected is None
            else check_config(self.manifest, expected, self.directory)
        )
        built_with = self.manifest.toolchain.get("tensorrt")
        if built_with != trt.__version__ or self.manifest.device != gpu:
            raise BackendUnavailable(
                f"tensorrt: stale engines in '{self.directory}': built with TensorRT {built_with} for "
                f"{self.manifest.device}, this is TensorRT {trt.__version__} on {gpu} (export again)"
            )
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engines = {
            name: TensorRTEngine(
                trt,
                runtime,
                component_path(self.manifest, self.directory, name, verify),
                self.manifest.components[name],
                cuda_graphs,
            )
            for name in COMPONENTS
        }
        log.info("tensorrt backend: %s (%s) on %s", self.directory, self.manifest.precision, gpu)

    def _execute(self, component: str, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.engines[component](inputs)
