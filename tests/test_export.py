"""Export: the manifest and parity report, int8 with its error on record, the opset-23 fused
attention path, the byte tokenizer without the torch encoder, the engine cache's reuse and
rebuild decisions, and the command line's one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import export.cache
from engine.config import get_preset
from engine.models.livehuman import LiveHumanModel
from engine.runtime.manifest import MANIFEST_NAME, PARITY_NAME, prompt_ids, read_manifest
from engine.runtime.torch_backend import TorchBackend
from export.cache import ensure_exported, stale_reason
from export.errors import ParityError
from export.graphs import build_graphs
from export.onnx_export import DEFAULT_OPSET, export_graph, tokenizer_spec
from export.parity import TOLERANCES, check_parity
from export.provenance import provenance, weights_sha256
from livehuman.cli import main

COMPONENTS = ("text_encoder", "audio_encoder", "dit_step", "vae_encoder_step", "vae_decoder_step")


class Rebuilt(Exception):
    """Raised by a stand-in exporter: proves ensure_exported decided to build."""


@pytest.fixture(scope="module")
def model(default_model: LiveHumanModel) -> LiveHumanModel:
    return default_model


@pytest.fixture(scope="module")
def cached(default_export: Path) -> Path:
    """The shipped default model built through the engine cache, as a server start would: the CPU default
    (int8 DiT); shared with the backend tests."""
    return default_export


@pytest.fixture
def no_rebuild(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise Rebuilt

    monkeypatch.setattr(export.cache, "export_model", refuse)


def test_manifest_records_what_the_export_came_from(model: LiveHumanModel, cached: Path) -> None:
    manifest = read_manifest(cached, "onnx")
    c = model.config
    assert manifest.config == c and manifest.precision == "int8" and manifest.opset == DEFAULT_OPSET == 23
    assert manifest.weights_sha256 == weights_sha256(model)
    assert set(manifest.toolchain) == {"livehuman", "torch", "onnx", "onnxscript", "onnxruntime"}
    assert manifest.toolchain["onnxruntime"] == ort.__version__
    assert set(manifest.components) == set(COMPONENTS)
    dit = manifest.components["dit_step"]
    assert dit.precision == "int8"
    assert dit.inputs[0].shape == (
        1,
        c.vae.latent_channels,
        c.scheduler.window,
        c.latent_height,
        c.latent_width,
    )
    assert dit.outputs[0].name == "velocity" and dit.outputs[0].shape == dit.inputs[0].shape
    decoder = manifest.components["vae_decoder_step"]
    assert len(decoder.inputs) - 1 == len(decoder.outputs) == 1 + len(model.vae.decoder_cache(1, 16, 16))
    assert decoder.inputs[1].name == "audio" and decoder.inputs[1].shape == (1, 4, c.audio.dim)
    assert all(manifest.components[n].precision == "fp32" for n in COMPONENTS if n != "dit_step")


def test_parity_report_keeps_the_int8_error_on_record(cached: Path) -> None:
    report = json.loads((cached / PARITY_NAME).read_text())
    assert report == read_manifest(cached, "onnx").parity
    for name in COMPONENTS:
        entry = report[name]
        assert entry["ok"] and entry["max_abs"] <= entry["tolerance"]["max_abs"]
    # Quantisation error is visible, orders of magnitude above float32's rounding.
    assert report["dit_step"]["mean_abs"] > 100 * report["vae_decoder_step"]["mean_abs"]


def test_parity_fails_loudly_above_tolerance(model: LiveHumanModel, tmp_path: Path) -> None:
    class Drifting(TorchBackend):
        def dit_step(self, *args: torch.Tensor) -> torch.Tensor:
            return super().dit_step(*args) + 0.01

    reference = TorchBackend(model)
    precisions = dict.fromkeys(COMPONENTS, "fp32")
    with pytest.raises(ParityError) as exc:
        check_parity(reference, Drifting(model), build_graphs(model, "fp32"), precisions, tmp_path)
    assert "\n" not in str(exc.value) and "dit_step" in str(exc.value)
    assert not json.loads((tmp_path / PARITY_NAME).read_text())["dit_step"]["ok"]


def _ops(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_opset_23_keeps_fused_attention(cached: Path) -> None:
    """The default export: SDPA stays ONNX's Attention op, even after int8 quantisation."""
    ops = _ops(cached / "dit_step.onnx")
    assert {"Attention", "RMSNormalization", "MatMulInteger"} <= ops and "Softmax" not in ops


@torch.no_grad()
def test_opset_18_fp16_dit_has_plain_attention_and_float32_edges(
    model: LiveHumanModel, tmp_path: Path
) -> None:
    """The TensorRT path: MatMul/Softmax attention any parser reads, computing in fp16 behind
    float32 inputs and output, within fp16's tolerance of torch; the reference stays float32."""
    graph = build_graphs(model, "fp16")["dit_step"]
    assert next(model.dit.parameters()).dtype == torch.float32
    export_graph(graph, tmp_path / "dit.onnx", opset=18)
    ops = _ops(tmp_path / "dit.onnx")
    assert "Softmax" in ops and "Attention" not in ops
    session = ort.InferenceSession(str(tmp_path / "dit.onnx"), providers=["CPUExecutionProvider"])
    assert {i.type for i in session.get_inputs()} == {"tensor(float)"}
    feeds = {name: t.numpy() for name, t in zip(graph.input_names, graph.inputs, strict=True)}
    error = np.abs(session.run(None, feeds)[0] - model.dit(*graph.inputs).numpy())
    max_tol, mean_tol = TOLERANCES["fp16"]
    assert 0 < error.max() <= max_tol and error.mean() <= mean_tol, "fp16 must differ, within tolerance"


@pytest.mark.parametrize("prompt", ["", "a person talking", "é" * 40, "\x00zero byte"])
def test_prompt_ids_follow_the_torch_tokenizer(model: LiveHumanModel, prompt: str) -> None:
    ids = prompt_ids(prompt, tokenizer_spec(model))
    np.testing.assert_array_equal(ids, model.text.tokenize([prompt]).numpy())


def test_cache_reuses_a_current_export(model: LiveHumanModel, cached: Path, no_rebuild: None) -> None:
    before = (cached / MANIFEST_NAME).stat().st_mtime_ns
    assert ensure_exported(model, precision="int8", cache_dir=cached.parent) == cached
    assert (cached / MANIFEST_NAME).stat().st_mtime_ns == before


def test_cache_rebuilds_for_new_weights(model: LiveHumanModel, cached: Path, no_rebuild: None) -> None:
    retrained = LiveHumanModel.random(get_preset("tiny"), seed=1)
    origin = provenance(retrained, retrained.config, "onnx", "int8", "cpu", DEFAULT_OPSET)
    assert "another key" in stale_reason(cached, origin.key, "onnx")
    with pytest.raises(Rebuilt):
        ensure_exported(retrained, precision="int8", cache_dir=cached.parent)
    with pytest.raises(Rebuilt):  # another precision is another entry
        ensure_exported(model, precision="fp32", cache_dir=cached.parent)


def test_cache_rebuilds_a_damaged_export(model: LiveHumanModel, cached: Path, no_rebuild: None) -> None:
    path = cached / "text_encoder.onnx"
    data = path.read_bytes()
    key = read_manifest(cached, "onnx").key
    try:
        path.write_bytes(data[:-10])
        assert "truncated" in stale_reason(cached, key, "onnx")
        with pytest.raises(Rebuilt):
            ensure_exported(model, precision="int8", cache_dir=cached.parent)
    finally:
        path.write_bytes(data)
    assert stale_reason(cached, key, "onnx") is None


def test_a_rebuild_replaces_the_stale_build(
    model: LiveHumanModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = weights_sha256(model)[:8]
    stale = tmp_path / f"tiny-{weights}-onnx-int8-opset{DEFAULT_OPSET}-cpu-0123456789abcdef"
    kept = [
        tmp_path / f"tiny-{weights}-onnx-fp32-opset{DEFAULT_OPSET}-cpu-0123456789abcdef",  # precision
        tmp_path / f"tiny-00000000-onnx-int8-opset{DEFAULT_OPSET}-cpu-0123456789abcdef",  # weights
    ]
    for directory in (stale, *kept):
        directory.mkdir()

    def fake_export(model: LiveHumanModel, directory: Path, **kwargs: object) -> None:
        (Path(directory) / "built").write_text("yes")

    monkeypatch.setattr(export.cache, "export_model", fake_export)
    built = ensure_exported(model, precision="int8", cache_dir=tmp_path)
    assert (built / "built").is_file() and built.name.startswith(stale.name[:-16])
    assert not stale.exists()
    assert sorted(tmp_path.iterdir()) == sorted([built, *kept]), "others kept, no leftovers"


def test_toolchain_is_part_of_the_key(model: LiveHumanModel) -> None:
    from export.provenance import cache_key

    weights = weights_sha256(model)
    args = (model.config, weights, "onnx", "int8", "cpu", 18)
    assert cache_key(*args, {"onnxruntime": "1.0"}) != cache_key(*args, {"onnxruntime": "1.1"})
    assert cache_key(*args, {"onnxruntime": "1.0"}) == cache_key(*args, {"onnxruntime": "1.0"})


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--precision", "bf16"], "bf16"),
        (["--format", "tensorrt"], "tensorrt"),
        (["--preset", "nope"], "nope"),
    ],
)
def test_export_cli_errors_are_one_line(tmp_path: Path, capsys, argv: list[str], needle: str) -> None:  # noqa: ANN001
    if argv[:2] == ["--format", "tensorrt"] and torch.cuda.is_available():
        pytest.skip("a GPU is present: the tensorrt export might run")
    assert main(["export", "--out", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and needle in err, err
