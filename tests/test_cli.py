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


def write_wav(path: Path, seconds: float, rate: int = 48000, channels: int = 2, width: int = 2) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    signal = 0.3 * np.sin(2 * np.pi * 200 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
    # 8-bit WAV is unsigned; 16-bit is signed little-endian.
    data = ((signal + 1) * 127.5).astype(np.uint8) if width == 1 else (signal * 32767).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(np.repeat(data[:, None], channels, axis=1).tobytes())
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
