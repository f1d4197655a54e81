"""What an export was built from: weights hash, toolchain versions and the engine cache key."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from engine.config import ModelConfig
from engine.runtime.manifest import graph_config

# Distributions whose versions change what an export produces or which runtime can read it.
_TOOLCHAIN = {
    "onnx": ("torch", "onnx", "onnxscript", "onnxruntime"),
    "tensorrt": ("torch", "onnx", "onnxscript", "tensorrt"),
}


def weights_sha256(model: nn.Module) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order: the same weights
    give the same hash whichever file or layout they were loaded from."""
    sha = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().contiguous().cpu()
        sha.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        sha.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


def code_sha256() -> str:
    """sha256 of the source that decides what an export computes: the model code, the config and
    the exporter. A changed layer or export rule invalidates cached exports even when the weights
    and tools did not change."""
    root = Path(__file__).resolve().parents[1]
    sha = hashlib.sha256()
    for path in sorted(
        [root / "engine" / "config.py", *root.glob("engine/models/*.py"), *root.glob("export/*.py")]
    ):
        sha.update(path.relative_to(root).as_posix().encode())
        sha.update(path.read_bytes())
    return sha.hexdigest()


def toolchain(format: str) -> dict[str, str]:
    """Versions of the tools behind ``format`` ('missing' where one is not installed;
    onnxruntime-gpu stands in for onnxruntime, as they install the same module), and the hash
    of livehuman's own model and export code."""
    versions = {"livehuman": code_sha256()[:16]}
    for dist in _TOOLCHAIN[format]:
        candidates = (dist, "onnxruntime-gpu") if dist == "onnxruntime" else (dist,)
        versions[dist] = "missing"
        for candidate in candidates:
            try:
                versions[dist] = metadata.version(candidate)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


def cache_key(
    config: ModelConfig,
    weights: str,
    format: str,
    precision: str,
    device: str,
    opset: int,
    tools: dict[str, str],
) -> str:
    """The engine cache key: weights hash + graph shapes + precision + device + toolchain."""
    fields = {
        "weights": weights,
        "shapes": graph_config(config),
        "format": format,
        "precision": precision,
        "device": device,
        "opset": opset,
        "toolchain": tools,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Provenance:
    """Computed once per export: hashing a large model's weights takes seconds."""

    weights_sha256: str
    toolchain: dict[str, str]
    key: str


def provenance(
    model: nn.Module, config: ModelConfig, format: str, precision: str, device: str, opset: int
) -> Provenance:
    weights, tools = weights_sha256(model), toolchain(format)
    return Provenance(weights, tools, cache_key(config, weights, format, precision, device, opset, tools))
