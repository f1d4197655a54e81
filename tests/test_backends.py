"""The runtimes behind the Backend interface: the onnx backend renders what torch renders, runs
without the torch model code, streams the decoder through its own cache outputs, and refuses a
broken export in one line naming the file. TensorRT and the torch CUDA path skip without a GPU."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from engine.config import ModelConfig, get_preset
from engine.models.livehuman import LiveHumanModel
from engine.runtime.base import BackendUnavailable
from engine.runtime.manifest import MANIFEST_NAME
from engine.runtime.onnx_backend import OnnxBackend
from engine.runtime.torch_backend import TorchBackend
from engine.weights import CONFIG_NAME, DEFAULT_MODEL_DIR
from livehuman.backends import load_backend
from livehuman.cli import main
from tests.test_cli import write_wav
from tests.test_scheduler import make_scheduler, render_offline
from tests.test_streaming import RATE, speech_like

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(default_model: LiveHumanModel) -> LiveHumanModel:
    return default_model


@pytest.fixture(scope="module")
def exported(default_export: Path) -> Path:
    """The shipped default model's CPU-default export (int8 DiT), shared with the export tests."""
    return default_export


@pytest.fixture
def broken(exported: Path, tmp_path: Path) -> Path:
    """A private copy of the export for a test to damage."""
    return Path(shutil.copytree(exported, tmp_path / "export"))


def frames_of(backend, seconds: float = 1.2) -> np.ndarray:  # noqa: ANN001
    frames = render_offline(make_scheduler(backend, backend.config, seed=5), speech_like(seconds), RATE)
    return np.stack([f.rgb for f in frames]).astype(np.float32)


def test_onnx_render_matches_torch(model: LiveHumanModel, exported: Path) -> None:
    torch_frames = frames_of(TorchBackend(model))
    onnx_frames = frames_of(OnnxBackend(exported, threads=2))
    assert onnx_frames.shape == torch_frames.shape == (30, 128, 128, 3)
    assert np.abs(onnx_frames - torch_frames).mean() < 2.0
    assert len({f.tobytes() for f in onnx_frames}) > 1, "a still video would prove nothing"


def test_onnx_backend_runs_without_the_torch_model_code(exported: Path) -> None:
    """A fresh process loads the export and renders through the scheduler without importing the
    DiT, VAE or text model code (the generator's audio token gather from engine.models.audio and
    camera warp from engine.models.camera are plain tensor ops, and torch is the interface's
    tensor type)."""
    script = f"""
import sys
import numpy as np
from engine.generator import Conditioning
from livehuman.backends import load_backend
from engine.scheduler import Scheduler

backend = load_backend("onnx", {str(exported)!r}, threads=2)
c = backend.config
portrait = np.full((c.height, c.width, 3), 128, np.uint8)
scheduler = Scheduler(backend, Conditioning.from_portrait(backend, portrait, "hello"), c)
scheduler.push_audio((0.3 * np.sin(np.arange(16000) * 0.06)).astype(np.float32), 16000)
scheduler.end_input()
frames = []
while not scheduler.done:
    scheduler.work()
    frames += scheduler.release()
assert len(frames) == 25, len(frames)
print("loaded:", sorted(m for m in sys.modules if m.startswith("engine.models.")))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = done.stdout.split("loaded:")[1]
    assert "engine.models.audio" in loaded, "the check must see what was imported"
    for module in ("engine.models.dit", "engine.models.vae", "engine.models.text", "engine.models.livehuman"):
        assert module not in loaded, loaded


@torch.no_grad()
def test_streaming_decoder_graph_feeds_its_own_cache_back(model: LiveHumanModel, exported: Path) -> None:
    """The raw graph, no backend glue: each step's next_cache outputs are the next step's inputs."""
    session = ort.InferenceSession(
        str(exported / "vae_decoder_step.onnx"), providers=["CPUExecutionProvider"]
    )
    names = [i.name for i in session.get_inputs()]
    c = model.config
    latents = torch.randn(1, c.vae.latent_channels, 4, c.latent_height, c.latent_width)
    torch_cache = model.vae.decoder_cache(1, c.latent_height, c.latent_width)
    onnx_cache = [t.numpy() for t in torch_cache]
    audio = torch.randn(1, 4 * latents.shape[2], c.audio.dim)
    for t in range(latents.shape[2]):
        latent, heard = latents[:, :, t : t + 1], audio[:, 4 * t : 4 * t + 4]
        expected, torch_cache = model.vae.decode_step(latent, torch_cache, heard)
        inputs = [latent.numpy(), heard.numpy(), *onnx_cache]
        frames, *onnx_cache = session.run(None, dict(zip(names, inputs, strict=True)))
        np.testing.assert_allclose(frames, expected.numpy(), atol=1e-4)
        for ours, theirs in zip(onnx_cache, torch_cache, strict=True):
            np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-4)
    assert any(np.abs(c).max() > 0 for c in onnx_cache), "the cache must carry something"


def _one_line_naming(exc: pytest.ExceptionInfo, needle: str) -> None:
    message = str(exc.value)
    assert "\n" not in message and needle in message, message


def test_truncated_graph_is_one_line_naming_the_file(broken: Path) -> None:
    path = broken / "dit_step.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(BackendUnavailable) as exc:
        OnnxBackend(broken)
    _one_line_naming(exc, str(path))
    assert "truncated" in str(exc.value)


def test_corrupted_graph_is_one_line_naming_the_file(broken: Path) -> None:
    path = broken / "vae_decoder_step.onnx"
    data = bytearray(path.read_bytes())
    data[100:4000] = bytes(3900)  # same size: only the digest can tell
    path.write_bytes(bytes(data))
    with pytest.raises(BackendUnavailable) as exc:
        OnnxBackend(broken)
    _one_line_naming(exc, str(path))
    assert "sha256" in str(exc.value)
    # Without the digest check, onnxruntime's own multi-line parse error is cut to one line.
    with pytest.raises(BackendUnavailable) as exc:
        OnnxBackend(broken, verify=False)
    _one_line_naming(exc, str(path))


def test_manifest_from_another_preset_is_refused(broken: Path) -> None:
    manifest = json.loads((broken / MANIFEST_NAME).read_text())
    manifest["config"] = get_preset("small").to_dict()
    (broken / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(BackendUnavailable) as exc:
        OnnxBackend(broken, expected=get_preset("tiny"))
    _one_line_naming(exc, str(broken / MANIFEST_NAME))
    assert "'small'" in str(exc.value) and "'tiny'" in str(exc.value)


def test_an_export_runs_with_the_callers_scheduler_but_refuses_another_audio_span(exported: Path) -> None:
    """A cached export is reused when only live timing changed (the budget, the playout delay), and
    those options are the caller's; a look-ahead change alters the exported audio span: refused."""
    shipped = ModelConfig.load(DEFAULT_MODEL_DIR / CONFIG_NAME)  # what ``exported`` was made from
    faster = dataclasses.replace(
        shipped, scheduler=dataclasses.replace(shipped.scheduler, compute_budget_ms=100, playout_delay_ms=520)
    )
    assert OnnxBackend(exported, expected=faster).config.scheduler == faster.scheduler
    other_span = dataclasses.replace(
        shipped, scheduler=dataclasses.replace(shipped.scheduler, lookahead_ms=40)
    )
    with pytest.raises(BackendUnavailable, match="scheduler"):
        OnnxBackend(exported, expected=other_span)


def test_missing_component_is_one_line_naming_it(broken: Path) -> None:
    (broken / "vae_encoder_step.onnx").unlink()
    with pytest.raises(BackendUnavailable) as exc:
        OnnxBackend(broken)
    _one_line_naming(exc, str(broken / "vae_encoder_step.onnx"))
    manifest = json.loads((broken / MANIFEST_NAME).read_text())
    del manifest["components"]["vae_encoder_step"]
    (broken / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(BackendUnavailable) as exc:
        OnnxBackend(broken)
    _one_line_naming(exc, "'vae_encoder_step'")


def test_render_cli_takes_an_export_and_reports_a_broken_one(
    exported: Path, broken: Path, tmp_path: Path, capsys
) -> None:  # noqa: ANN001
    audio = write_wav(tmp_path / "in.wav", 0.5)
    args = ["render", "--image", str(ROOT / "engine/assets/portrait.png"), "--audio", str(audio)]
    assert (
        main([*args, "--out", str(tmp_path / "a.mp4"), "--backend", "onnx", "--preset", str(exported)]) == 0
    )
    assert (tmp_path / "a.mp4").stat().st_size > 0
    (broken / "audio_encoder.onnx").write_bytes(b"")
    assert main([*args, "--out", str(tmp_path / "b.mp4"), "--backend", "onnx", "--preset", str(broken)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "audio_encoder.onnx" in err, err


def test_load_backend_picks_by_name_and_export(model: LiveHumanModel, exported: Path) -> None:
    assert load_backend("auto", exported).name == "onnx"  # the export's format decides
    assert load_backend("torch", model).name == "torch"
    with pytest.raises(BackendUnavailable, match="is an export"):
        load_backend("torch", exported)
    with pytest.raises(BackendUnavailable, match="unknown backend"):
        load_backend("jax", exported)  # type: ignore[arg-type]


def test_onnx_on_cuda_without_its_runtime_fails_before_exporting(
    model: LiveHumanModel, tmp_path: Path
) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime runs on CUDA")
    with pytest.raises(BackendUnavailable, match="onnxruntime-gpu"):
        load_backend("onnx", model, device="cuda", cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing exported for a runtime that cannot run it


def _has_tensorrt_gpu() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def test_tensorrt_missing_is_one_line(exported: Path) -> None:
    if _has_tensorrt_gpu():
        pytest.skip("tensorrt and a GPU are present: nothing is missing")
    from engine.runtime.tensorrt_backend import TensorRTBackend

    with pytest.raises(BackendUnavailable) as exc:
        TensorRTBackend(exported)
    assert "\n" not in str(exc.value) and "tensorrt" in str(exc.value)


@pytest.mark.skipif(not _has_tensorrt_gpu(), reason="needs the tensorrt package and a CUDA GPU")
def test_tensorrt_render_matches_torch(model: LiveHumanModel, tmp_path: Path) -> None:
    from engine.runtime.tensorrt_backend import TensorRTBackend
    from export.tensorrt_export import export_tensorrt

    export_tensorrt(model, tmp_path, precision="fp16")
    backend = TensorRTBackend(tmp_path, expected=model.config)
    assert np.abs(frames_of(backend) - frames_of(TorchBackend(model))).mean() < 2.0


def test_torch_cuda_unavailable_is_one_line(model: LiveHumanModel) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(BackendUnavailable) as exc:
        TorchBackend(model, "cuda")
    assert "\n" not in str(exc.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_cuda_bf16_compiled_matches_cpu() -> None:
    reference = frames_of(TorchBackend(LiveHumanModel.random(get_preset("tiny"))))
    fast = TorchBackend(LiveHumanModel.random(get_preset("tiny")), "cuda", dtype=torch.bfloat16, compile=True)
    assert np.abs(frames_of(fast) - reference).mean() < 4.0
