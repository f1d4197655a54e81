"""What an export directory holds, read back by the runtimes without the torch model code.

``export/`` writes ``manifest.json`` last, after every component passed its parity check, so a
directory with a manifest is complete. The manifest records what the graphs were built from and
for (config, weights hash, precision, opset, toolchain) and, per component, its files with size
and sha256 and its fixed input/output shapes. Runtimes check all of it on load, so a truncated
file, an export of another preset or a missing component is one line naming the file, never a
crash deep inside onnxruntime or TensorRT.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import ModelConfig
from engine.runtime.base import BackendUnavailable

MANIFEST_NAME = "manifest.json"
PARITY_NAME = "parity.json"
MANIFEST_VERSION = 2  # 2: the VAE decoder step takes the frames' audio
# Every component a runtime needs, in the order export builds them.
COMPONENTS = ("text_encoder", "audio_encoder", "dit_step", "vae_encoder_step", "vae_decoder_step")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: "float32", "int64"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(data["name"], tuple(data["shape"]), data["dtype"])


@dataclass(frozen=True)
class ComponentSpec:
    """One graph (or engine): its files with their digests, its precision, its fixed signature."""

    file: str  # the graph or engine, relative to the export directory
    files: dict[str, dict[str, Any]]  # every file it needs (external weights too): size, sha256
    precision: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "files": self.files,
            "precision": self.precision,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ComponentSpec:
        return cls(
            file=data["file"],
            files=data["files"],
            precision=data["precision"],
            inputs=tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
        )


@dataclass(frozen=True)
class Manifest:
    format: str  # "onnx" | "tensorrt"
    config: ModelConfig
    precision: str
    opset: int
    device: str  # "cpu" | "cuda" | a GPU name for TensorRT engines
    weights_sha256: str
    key: str  # the engine cache key: weights + shapes + precision + device + toolchain
    toolchain: dict[str, str]
    # How prompts become the text graph's ids, so a runtime needs no tokenizer code.
    tokenizer: dict[str, Any]
    components: dict[str, ComponentSpec]
    parity: dict[str, Any]  # per component: max_abs, mean_abs, tolerance, as in parity.json

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "format": self.format,
            "preset": self.config.name,
            "config": self.config.to_dict(),
            "precision": self.precision,
            "opset": self.opset,
            "device": self.device,
            "weights_sha256": self.weights_sha256,
            "key": self.key,
            "toolchain": self.toolchain,
            "tokenizer": self.tokenizer,
            "components": {name: spec.to_dict() for name, spec in self.components.items()},
            "parity": self.parity,
        }

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def graph_config(config: ModelConfig) -> dict[str, Any]:
    """The part of a config that shapes the graphs: what two exports must agree on to be swapped.

    Sampler and live-timing settings are left out, since a render may override them per run;
    the window length and the look-ahead stay, because the DiT and the audio span are exported
    at their size.
    """
    data = config.to_dict()
    data["scheduler"] = {"window": config.scheduler.window, "lookahead_ms": config.scheduler.lookahead_ms}
    for key in ("sampler", "capabilities"):
        data.pop(key)
    return data


def file_digest(path: Path) -> dict[str, Any]:
    """Size and sha256 of a file, read in blocks so multi-GB weights never sit in memory."""
    sha = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return {"size": path.stat().st_size, "sha256": sha.hexdigest()}


def read_manifest(directory: str | Path, expected_format: str | None = None) -> Manifest:
    """Parse ``directory/manifest.json``; anything unusable is BackendUnavailable naming the file.

    ``expected_format`` None accepts any format (to find out which runtime an export needs).
    """
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise BackendUnavailable(
            f"{expected_format or 'export'}: no {MANIFEST_NAME} in '{directory}' "
            f"(run `livehuman export --format {expected_format or 'onnx'} --out {directory}`)"
        )
    try:
        data = json.loads(path.read_text())
        if data.get("version") != MANIFEST_VERSION:
            raise ValueError(f"version {data.get('version')!r}, this runtime reads {MANIFEST_VERSION}")
        manifest = Manifest(
            format=data["format"],
            config=ModelConfig.from_dict(data["config"]),
            precision=data["precision"],
            opset=int(data["opset"]),
            device=data["device"],
            weights_sha256=data["weights_sha256"],
            key=data["key"],
            toolchain=dict(data["toolchain"]),
            tokenizer=dict(data["tokenizer"]),
            components={name: ComponentSpec.from_dict(c) for name, c in data["components"].items()},
            parity=dict(data["parity"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:  # ConfigError is a ValueError
        raise BackendUnavailable(f"manifest '{path}' cannot be read: {one_line(exc)}") from exc
    if expected_format is not None and manifest.format != expected_format:
        raise BackendUnavailable(
            f"manifest '{path}' describes a {manifest.format} export, not {expected_format}"
        )
    return manifest


def check_config(manifest: Manifest, expected: ModelConfig, directory: str | Path) -> ModelConfig:
    """Refuse an export whose graphs were built for another model shape (another preset); return
    ``expected``, the config to run. Only graph shapes must match: scheduler options that leave
    the graphs alone (steps, budget, playout delay) are the caller's, not the cached export's."""
    theirs, ours = graph_config(manifest.config), graph_config(expected)
    if theirs != ours:
        differ = sorted(k for k in ours if ours[k] != theirs.get(k))
        raise BackendUnavailable(
            f"manifest '{Path(directory) / MANIFEST_NAME}' is for preset '{manifest.config.name}', "
            f"not '{expected.name}' (differs in {', '.join(differ)})"
        )
    return expected


def component_path(manifest: Manifest, directory: str | Path, name: str, verify: bool = True) -> Path:
    """The main file of component ``name`` after checking every file it needs is intact."""
    directory = Path(directory)
    spec = manifest.components.get(name)
    if spec is None:
        raise BackendUnavailable(f"manifest '{directory / MANIFEST_NAME}' has no component '{name}'")
    for file, expected in spec.files.items():
        path = directory / file
        if not path.is_file():
            raise BackendUnavailable(f"component file '{path}' is missing")
        size = path.stat().st_size
        if size != expected["size"]:
            raise BackendUnavailable(
                f"component file '{path}' is truncated or corrupted ({size} bytes, manifest says "
                f"{expected['size']})"
            )
        if verify and file_digest(path)["sha256"] != expected["sha256"]:
            raise BackendUnavailable(
                f"component file '{path}' is corrupted (sha256 differs from the manifest)"
            )
    return directory / spec.file


def one_line(exc: BaseException) -> str:
    """An exception as one line, for messages users read (onnxruntime errors span pages)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def prompt_ids(prompt: str, tokenizer: dict[str, Any]) -> np.ndarray:
    """(1, max_tokens) int64 ids by the manifest's rule: UTF-8 bytes plus an offset, truncated,
    padded with the pad id. Export checks this function against the torch text encoder (through
    the runtime under test) before it writes the manifest."""
    if tokenizer.get("kind") != "bytes":
        raise BackendUnavailable(
            f"tokenizer {tokenizer.get('kind')!r} is unknown to this runtime (knows 'bytes')"
        )
    length, offset, pad = tokenizer["max_tokens"], tokenizer["offset"], tokenizer["pad_id"]
    data = np.frombuffer(prompt.encode("utf-8")[:length], dtype=np.uint8).astype(np.int64) + offset
    ids = np.full((1, length), pad, dtype=np.int64)
    ids[0, : data.size] = data
    return ids
