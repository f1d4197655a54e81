"""`livehuman render` end to end on the tiny preset, and its one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import wave
from pathlib import Path

import av
import numpy as np
import pytest

from livehuman.cli import main

ASSETS = Path(__file__).resolve().parents[1] / "engine" / "assets"


def write_wav(
    path: Path, seconds: float, rate: int = 48000, channels: int = 2, width: int = 2, amplitude: float = 0.3
) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    signal = amplitude * np.sin(2 * np.pi * 200 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
    # 8-bit WAV is unsigned; 16-bit is signed little-endian.
    data = ((signal + 1) * 127.5).astype(np.uint8) if width == 1 else (signal * 32767).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(np.repeat(data[:, None], channels, axis=1).tobytes())
    return path


def write_video(path: Path, frames: int, size: int = 32, fps: int = 25) -> Path:
    """An H.264 clip (no audio) whose every frame differs: frame i is red level 8i over a bar at
    column i, so a test can tell which source frame it is looking at."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            image = np.zeros((size, size, 3), np.uint8)
            image[..., 0] = 8 * i % 256
            image[:, i % size, 1] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def probe(path: Path) -> tuple[int, float, float]:
    """(video frames, video seconds, audio seconds) of an mp4, counted by decoding."""
    with av.open(str(path)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(audio=0))
        audio_s = samples / stream.rate
    return frames, frames / 25, audio_s


@pytest.mark.parametrize("seconds,rate,channels,width", [(1.0, 48000, 2, 2), (0.7, 22050, 1, 1)])
def test_render_writes_exact_frames_and_matching_audio(tmp_path, seconds, rate, channels, width) -> None:  # noqa: ANN001
    audio = write_wav(tmp_path / "in.wav", seconds, rate, channels, width)
    out, report = tmp_path / "out.mp4", tmp_path / "report.json"
    args = ["render", "--image", str(ASSETS / "portrait.png"), "--audio", str(audio), "--out", str(out)]
    assert main([*args, "--report", str(report), "--steps", "2"]) == 0
    frames, video_s, audio_s = probe(out)
    seconds = int(seconds * rate) / rate  # what the file holds
    assert frames == round(seconds * 25)
    assert abs(video_s - seconds) <= 0.04 and abs(audio_s - seconds) <= 0.04 + 1024 / 48000
    data = json.loads(report.read_text())
    for key in (
        "frames",
        "fps",
        "audio_duration_s",
        "video_duration_s",
        "windows",
        "steps",
        "seam_ratio",
        "motion",
        "rtf",
        "first_frame_latency_ms",
        "stage_ms",
    ):
        assert key in data, key
    assert data["frames"] == frames and data["steps"] == 2 and data["motion"] > 0
    assert set(data["stage_ms"]) >= {"audio", "dit", "blend", "decode"}


def _error(capsys, args: list[str]) -> str:  # noqa: ANN001
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("livehuman: error:") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys) -> None:  # noqa: ANN001
    portrait = str(ASSETS / "portrait.png")
    good = str(write_wav(tmp_path / "ok.wav", 0.2))
    out = str(tmp_path / "o.mp4")
    assert "missing.wav" in _error(
        capsys, ["render", "--image", portrait, "--audio", "missing.wav", "--out", out]
    )
    empty = write_wav(tmp_path / "empty.wav", 0.0)
    assert "empty.wav" in _error(capsys, ["render", "--image", portrait, "--audio", str(empty), "--out", out])
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n")
    assert "notes.wav" in _error(capsys, ["render", "--image", portrait, "--audio", str(text), "--out", out])
    fake_image = tmp_path / "face.png"
    fake_image.write_text("not an image")
    assert "face.png" in _error(capsys, ["render", "--image", str(fake_image), "--audio", good, "--out", out])
    assert "nope" in _error(
        capsys, ["render", "--image", portrait, "--audio", good, "--out", out, "--preset", "nope"]
    )


def test_train_refuses_unknown_addons_before_any_work(tmp_path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "run"
    for flag in ("--addons", "--redo"):
        err = _error(capsys, ["train", "--finetune", "default", flag, "lipsync,nope", "--out", str(out)])
        assert "nope" in err and "hearing, lipsync, decoder" in err, err
    assert not any(out.rglob("*.pt")), "nothing trained"


def test_console_script_reports_errors_without_traceback(tmp_path) -> None:  # noqa: ANN001
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "livehuman.cli",
            "render",
            "--image",
            "x.png",
            "--audio",
            "y.wav",
            "--out",
            "z.mp4",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


def test_render_loads_a_model_directory(tmp_path) -> None:  # noqa: ANN001
    from engine.config import get_preset
    from engine.models.livehuman import LiveHumanModel
    from engine.weights import save_model

    save_model(LiveHumanModel.random(get_preset("tiny"), seed=1), tmp_path / "model")
    audio = write_wav(tmp_path / "in.wav", 0.4)
    args = [
        "render",
        "--image",
        str(ASSETS / "portrait.png"),
        "--audio",
        str(audio),
        "--out",
        str(tmp_path / "o.mp4"),
    ]
    assert main([*args, "--preset", str(tmp_path / "model"), "--steps", "1"]) == 0
    assert probe(tmp_path / "o.mp4")[0] == 10


def _video_model(directory: Path, **capabilities: bool) -> Path:
    """The tiny preset on random weights, saved declaring ``capabilities`` as a trained model would,
    at 64 px instead of 128: encoding the source, the costly part of a re-dub, takes a quarter as long."""
    import dataclasses

    from engine.config import Capabilities, get_preset
    from engine.models.livehuman import LiveHumanModel
    from engine.weights import save_model

    tiny = get_preset("tiny")
    config = dataclasses.replace(
        tiny, height=64, width=64, capabilities=Capabilities(**capabilities)
    ).validate()
    save_model(LiveHumanModel.random(config, seed=1), directory)
    return directory


def test_render_redubs_a_video_with_camera_and_prompt(tmp_path) -> None:  # noqa: ANN001
    model = _video_model(tmp_path / "model", video=True, camera=True, prompt=True)
    video = write_video(tmp_path / "host.mp4", frames=31)
    audio = write_wav(tmp_path / "in.wav", 1.0)
    out, report = tmp_path / "out.mp4", tmp_path / "report.json"
    args = ["render", "--video", str(video), "--audio", str(audio), "--out", str(out), "--preset", str(model)]
    options = ["--steps", "1", "--camera", "push_in:50", "--prompt", "smiling", "--report", str(report)]
    assert main([*args, *options]) == 0
    frames, video_s, audio_s = probe(out)
    assert frames == 25, "as long as the speech, not the 1.24 s source"
    assert abs(video_s - 1.0) <= 0.04 and abs(audio_s - 1.0) <= 0.04 + 1024 / 48000
    assert json.loads(report.read_text())["frames"] == 25


def test_render_video_output_is_the_source_where_nothing_is_said(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """On the fake backend silence generates exactly the source's VAE round trip, so the re-dub
    composites the source's own pixels: the mp4 plays the video's mirror loop, frame for frame."""
    import dataclasses

    import livehuman.backends
    from engine.config import Capabilities
    from engine.media import read_video
    from engine.redub import MAX_SECONDS, mirror_loop
    from tests.fakes import SIZE, FakeBackend, fake_config

    config = dataclasses.replace(fake_config(), capabilities=Capabilities(video=True))
    monkeypatch.setattr(livehuman.backends, "load_backend", lambda *_: FakeBackend(config))
    video = write_video(tmp_path / "host.mp4", frames=31)
    silence = write_wav(tmp_path / "silence.wav", 1.6, amplitude=0.0)
    out = tmp_path / "out.mp4"
    assert main(["render", "--video", str(video), "--audio", str(silence), "--out", str(out)]) == 0
    with av.open(str(out)) as container:
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    loop = mirror_loop(read_video(video, SIZE, SIZE, MAX_SECONDS))
    assert len(frames) == 40 and len(loop) == 60
    error = np.abs(frames.astype(np.float32) - loop[:40]).mean(axis=(1, 2, 3))
    assert error.max() < 6.0, error  # H.264 at 16 px; neighbouring source frames differ by 8+ levels
    # Past the clip's last frame (30) it plays backwards (29), not from the start again (0).
    assert np.abs(frames[31].astype(np.float32) - loop[0]).mean() > 50


def test_video_errors_are_one_line_and_exit_code_2(tmp_path, capsys, monkeypatch) -> None:  # noqa: ANN001
    """--video with --image, a missing or undecodable video, and a model that cannot re-dub."""
    import dataclasses

    import livehuman.backends
    from engine.config import Capabilities
    from tests.fakes import FakeBackend, fake_config

    portrait, video = str(ASSETS / "portrait.png"), str(write_video(tmp_path / "host.mp4", frames=31))
    base = ["render", "--audio", str(write_wav(tmp_path / "in.wav", 0.2)), "--out", str(tmp_path / "o.mp4")]
    both = _error(capsys, [*base, "--image", portrait, "--video", video])
    assert "--image and --video are mutually exclusive" in both
    neither = _error(capsys, base)
    assert "--image" in neither and "--video" in neither
    assert "'missing.mp4': file not found" in _error(capsys, [*base, "--video", "missing.mp4"])
    refused = _error(capsys, [*base, "--video", video, "--preset", "tiny"])
    assert "video: model 'tiny' cannot re-dub a video (capabilities.video is false)" in refused
    assert not (tmp_path / "o.mp4").exists(), "refused before the output is opened"
    config = dataclasses.replace(fake_config(), capabilities=Capabilities(video=True))
    monkeypatch.setattr(livehuman.backends, "load_backend", lambda *_: FakeBackend(config))
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n")
    bad = _error(capsys, [*base, "--video", str(text)])
    assert "video file" in bad and "notes.mp4" in bad and "cannot be decoded as video" in bad
