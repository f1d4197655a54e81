"""ONNX -> native TensorRT engines, one per component, with fixed shapes.

Precision lives in the graph, not in builder flags: the DiT is exported computing in fp16 or
bf16 (float32 at its edges) and the network is built strongly typed, which TensorRT 10 accepts
and TensorRT 11 requires (it removed the FP16/BF16 builder flags). Opset 18 with plain
MatMul/Softmax attention, which every TensorRT 10 parser reads. int8 would need calibration or
Q/DQ nodes, so it stays an onnxruntime CPU option.

Unverified here: this machine has neither TensorRT nor a GPU. Everything below is the public
``tensorrt`` Python API of TensorRT 10.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from types import ModuleType

from engine.models.livehuman import LiveHumanModel
from engine.runtime.base import BackendUnavailable
from engine.runtime.manifest import MANIFEST_NAME, ComponentSpec, Manifest
from engine.runtime.tensorrt_backend import TensorRTBackend, gpu_identity, import_tensorrt
from export.errors import ExportError
from export.graphs import build_graphs
from export.onnx_export import component_files, export_components, finish_export, tokenizer_spec
from export.provenance import Provenance, provenance

log = logging.getLogger(__name__)

TENSORRT_OPSET = 18
TENSORRT_PRECISIONS = ("fp32", "fp16", "bf16")


def build_engine(trt: ModuleType, onnx_path: Path, engine_path: Path) -> None:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse '{onnx_path}': {errors}")
    serialized = builder.build_serialized_network(network, builder.create_builder_config())
    if serialized is None:
        raise ExportError(f"TensorRT could not build an engine from '{onnx_path}' (its log says why)")
    engine_path.write_bytes(serialized)


def export_tensorrt(
    model: LiveHumanModel,
    directory: str | Path,
    *,
    precision: str = "fp16",
    origin: Provenance | None = None,
) -> Manifest:
    """Build engines for every component in ``directory``, parity-check them, write the manifest."""
    if precision not in TENSORRT_PRECISIONS:
        raise ExportError(
            f"tensorrt builds {', '.join(TENSORRT_PRECISIONS)} engines, not {precision} "
            "(int8 runs on the CPU: --format onnx --precision int8)"
        )
    try:
        trt = import_tensorrt()
        gpu = gpu_identity()
    except BackendUnavailable as exc:
        raise ExportError(str(exc)) from exc
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST_NAME).unlink(missing_ok=True)
    model = model.eval()
    origin = origin or provenance(model, model.config, "tensorrt", precision, gpu, TENSORRT_OPSET)
    graphs = build_graphs(model, precision)
    onnx_dir = directory / "onnx"
    onnx_dir.mkdir(exist_ok=True)
    components = {}
    for name, spec in export_components(graphs, onnx_dir, precision, TENSORRT_OPSET).items():
        engine_file = f"{name}.engine"
        build_engine(trt, onnx_dir / spec.file, directory / engine_file)
        files = component_files(directory, engine_file)
        components[name] = ComponentSpec(engine_file, files, spec.precision, spec.inputs, spec.outputs)
        log.info("built TensorRT engine %s (%s) for %s", engine_file, spec.precision, gpu)
    shutil.rmtree(onnx_dir)
    manifest = Manifest(
        format="tensorrt",
        config=model.config,
        precision=precision,
        opset=TENSORRT_OPSET,
        device=gpu,
        weights_sha256=origin.weights_sha256,
        key=origin.key,
        toolchain={**origin.toolchain, "tensorrt": trt.__version__},
        tokenizer=tokenizer_spec(model),
        components=components,
        parity={},
    )
    return finish_export(model, TensorRTBackend(directory, manifest=manifest), graphs, manifest, directory)
