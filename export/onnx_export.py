"""torch -> ONNX for the five components, int8 quantisation, manifest and parity report.

Each component goes through ``torch.onnx.export(..., dynamo=True)``. Opset 18 exports attention
as plain MatMul/Softmax (``attention_backend("math")``); opset 23 keeps SDPA, which the exporter
lowers to ONNX's fused ``Attention`` op that onnxruntime implements natively. int8 is
onnxruntime's dynamic quantisation of the DiT's MatMuls (weights int8 ahead of time, activations
quantised per call), which suits the CPU path; the rest stays float32 (measured: the audio and
text encoders lose ~20% accuracy to it, and quantised convs run slower than float ones).

The manifest is written last, after parity passed, so a directory with a manifest is complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from engine.models.attention import attention_backend
from engine.models.livehuman import LiveHumanModel
from engine.models.text import PAD_ID, ByteTextEncoder
from engine.runtime.base import Backend, BackendUnavailable
from engine.runtime.manifest import (
    COMPONENTS,
    MANIFEST_NAME,
    ComponentSpec,
    Manifest,
    TensorSpec,
    file_digest,
    one_line,
)
from engine.runtime.onnx_backend import OnnxBackend
from engine.runtime.torch_backend import TorchBackend
from export.errors import ExportError
from export.graphs import LOWERED_COMPONENTS, Graph, build_graphs
from export.parity import check_parity
from export.provenance import Provenance, provenance

log = logging.getLogger(__name__)

# Measured on the 2-core CPU (benchmarks/backends.py, README "Backends and export"): opset 23's
# fused Attention and RMSNormalization make the tiny DiT step ~15% faster than opset 18's
# MatMul/Softmax and decomposed norms; the convolutional VAE is the same at both. TensorRT
# exports use 18, which every TensorRT 10 parser reads.
DEFAULT_OPSET = 23
OPSETS = (18, 23)
ONNX_PRECISIONS = ("fp32", "fp16", "int8")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs a warning per missing optional op library (torchvision) and a line per
    deduplicated constant on every call; keep its errors only."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnx_ir", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_graph(graph: Graph, path: Path, opset: int) -> None:
    """One component to ``path`` (weights inline, or beside it past protobuf's 2 GB limit)."""
    if opset not in OPSETS:
        raise ExportError(f"opset {opset} is not supported; choose one of {', '.join(map(str, OPSETS))}")
    fused = opset >= 23 and graph.fused_attention
    with attention_backend("sdpa" if fused else "math"), _quiet_exporter(), warnings.catch_warnings():
        # torch's own deprecation notices from inside the exporter; nothing a user can act on.
        warnings.simplefilter("ignore", FutureWarning)
        try:
            program = torch.onnx.export(
                graph.module.eval(),
                graph.inputs,
                dynamo=True,
                opset_version=opset,
                input_names=graph.input_names,
                output_names=graph.output_names,
                verbose=False,
            )
        except Exception as exc:  # the exporter raises many types; the first line says which op
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"torch.onnx.export failed for {path.stem}: {first}") from exc
    program.save(path)


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation of MatMul weights (per-tensor, signed)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # Past protobuf's 2 GB limit, every stage keeps its weights in a file beside the graph.
    large = sum(p.stat().st_size for p in source.parent.glob(f"{source.name}*")) >= 2**31
    prepared = source.with_suffix(".prepared.onnx")
    try:
        # Shapes are static, so ONNX's own inference suffices; onnxruntime's symbolic one mistakes
        # opset 23's Attention for its contrib op of the same name and fails.
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True, save_as_external_data=large)
        _drop_value_info(prepared)
        quantize_dynamic(
            prepared,
            target,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            use_external_data_format=large,
        )
    except Exception as exc:  # the quantiser raises bare asserts and ValueErrors alike
        raise ExportError(f"int8 quantisation of {source.name} failed: {one_line(exc)}") from exc
    for leftover in source.parent.glob(f"{prepared.name}*"):
        leftover.unlink()


def _drop_value_info(path: Path) -> None:
    """Forget the intermediate shapes that pre-processing recorded; the quantiser infers its own.

    onnxruntime 1.30's quantiser, after its own rewrites, re-infers shapes over these records and
    fails where they disagree (the DiT graph: "differ in dimension 0: (256) vs (192)"); 1.32's
    does not. Without them both quantise. The weights, external or not, stay where they are."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    del model.graph.value_info[:]
    onnx.save(model, str(path))


def component_files(directory: Path, main: str) -> dict[str, dict]:
    """The graph file and any external-data file saved beside it, with their digests."""
    return {p.name: file_digest(p) for p in sorted(directory.glob(f"{main}*")) if p.is_file()}


def _signature(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Fixed input and output specs as the saved graph declares them."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    model = onnx.load(str(path), load_external_data=False)

    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        tensor = value.type.tensor_type
        return TensorSpec(
            value.name,
            tuple(d.dim_value for d in tensor.shape.dim),
            tensor_dtype_to_np_dtype(tensor.elem_type).name,
        )

    return tuple(map(spec, model.graph.input)), tuple(map(spec, model.graph.output))


def component_precisions(precision: str) -> dict[str, str]:
    return {name: precision if name in LOWERED_COMPONENTS else "fp32" for name in COMPONENTS}


def export_components(
    graphs: dict[str, Graph], directory: Path, precision: str, opset: int
) -> dict[str, ComponentSpec]:
    """Write every graph as ``<component>.onnx``; int8 components are quantised from float32."""
    specs = {}
    for name, component_precision in component_precisions(precision).items():
        start = time.perf_counter()
        file = f"{name}.onnx"
        if component_precision == "int8":
            raw = directory / f"{name}.fp32.onnx"
            export_graph(graphs[name], raw, opset)
            quantize_int8(raw, directory / file)
            for leftover in directory.glob(f"{name}.fp32.onnx*"):
                leftover.unlink()
        else:
            export_graph(graphs[name], directory / file, opset)
        inputs, outputs = _signature(directory / file)
        specs[name] = ComponentSpec(
            file, component_files(directory, file), component_precision, inputs, outputs
        )
        log.info("exported %s (%s) in %.1f s", name, component_precision, time.perf_counter() - start)
    return specs


def tokenizer_spec(model: LiveHumanModel) -> dict:
    """The byte tokenizer's rule, read off the torch encoder: byte 0's id is the offset."""
    if not isinstance(model.text, ByteTextEncoder):
        raise ExportError(f"only the built-in byte text encoder exports, not {type(model.text).__name__}")
    offset = int(model.text.tokenize(["\x00"])[0, 0])
    return {"kind": "bytes", "offset": offset, "pad_id": PAD_ID, "max_tokens": model.text.max_tokens}


def export_onnx(
    model: LiveHumanModel,
    directory: str | Path,
    *,
    precision: str = "fp32",
    opset: int = DEFAULT_OPSET,
    device: str = "cpu",
    origin: Provenance | None = None,
    threads: int | None = None,
) -> Manifest:
    """Export, check parity against ``model`` and write the manifest; returns it.

    ``origin`` is the weights hash and cache key when the caller computed them already.
    """
    if precision not in ONNX_PRECISIONS:
        raise ExportError(
            f"onnx exports {', '.join(ONNX_PRECISIONS)}, not {precision} "
            "(onnxruntime has few bf16 kernels: use --format tensorrt or the torch backend for bf16)"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST_NAME).unlink(missing_ok=True)  # the directory is incomplete until the end
    model = model.eval()
    origin = origin or provenance(model, model.config, "onnx", precision, device, opset)
    graphs = build_graphs(model, precision)
    manifest = Manifest(
        format="onnx",
        config=model.config,
        precision=precision,
        opset=opset,
        device=device,
        weights_sha256=origin.weights_sha256,
        key=origin.key,
        toolchain=origin.toolchain,
        tokenizer=tokenizer_spec(model),
        components=export_components(graphs, directory, precision, opset),
        parity={},
    )
    try:
        # Parity runs on the CPU EP, which every onnxruntime has and which runs fp16 graphs too.
        candidate = OnnxBackend(directory, manifest=manifest, threads=threads)
    except BackendUnavailable as exc:
        raise ExportError(f"the exported graphs do not load: {exc}") from exc
    return finish_export(model, candidate, graphs, manifest, directory)


def finish_export(
    model: LiveHumanModel, candidate: Backend, graphs: dict[str, Graph], manifest: Manifest, directory: Path
) -> Manifest:
    """Check ``candidate`` (the export, loaded) against ``model``, then write the manifest last."""
    precisions = {name: spec.precision for name, spec in manifest.components.items()}
    report = check_parity(TorchBackend(model), candidate, graphs, precisions, directory)
    manifest = dataclasses.replace(manifest, parity=report)
    manifest.save(directory)
    log.info(
        "%s export of %s (%s, opset %d) in %s",
        manifest.format,
        model.config.name,
        manifest.precision,
        manifest.opset,
        directory,
    )
    return manifest
