"""engine.media: exact PCM decoding, compressed formats, one-line errors, portraits, mp4 output."""

from __future__ import annotations

import io
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from engine.media import DecodedAudio, MediaError, Mp4Writer, read_audio, read_image

ASSETS = Path(__file__).resolve().parents[1] / "engine" / "assets"


def _write_wav(path: Path, data: np.ndarray, rate: int, sampwidth: int) -> None:
    """``data`` is the raw integer samples as (n, channels), already in the wav's sample type."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(data.shape[1])
        w.setsampwidth(sampwidth)
        w.setframerate(rate)
        w.writeframes(np.ascontiguousarray(data).tobytes())


def _encode(path: Path, codec: str, rate: int, channels: int, options: dict[str, str] | None) -> None:
    """Encode 1 s of tone with PyAV, so compressed inputs are made by the test, not checked in."""
    layout = "mono" if channels == 1 else "stereo"
    tone = (0.3 * np.sin(2 * np.pi * 330 * np.arange(rate) / rate)).astype(np.float32)
    tone = np.repeat(tone[None], channels, axis=0)  # (channels, n)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout=layout, options=options or {})
        ctx = stream.codec_context
        fmt = ctx.codec.audio_formats[0].name  # each encoder has its own preferred sample format
        resampler = av.AudioResampler(format=fmt, layout=layout, rate=rate)
        frame_size = ctx.frame_size or 1024
        for start in range(0, rate, frame_size):
            chunk = np.ascontiguousarray(tone[:, start : start + frame_size])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate = rate
            frame.pts = start
            frame.time_base = Fraction(1, rate)
            for converted in resampler.resample(frame):
                container.mux(stream.encode(converted))
        container.mux(stream.encode(None))


def _assert_one_line_naming(err: pytest.ExceptionInfo[MediaError], path: Path) -> None:
    message = str(err.value)
    assert "\n" not in message
    assert path.name in message


# read_audio


def test_stereo_u8_wav_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=(4801, 2), dtype=np.uint8)
    path = tmp_path / "stereo8.wav"
    _write_wav(path, raw, 48_000, sampwidth=1)

    audio = read_audio(path)

    assert audio.sample_rate == 48_000
    assert audio.samples.dtype == np.float32
    assert audio.samples.shape == (2, 4801)
    expected = (raw.T.astype(np.float32) - 128) / 128
    np.testing.assert_allclose(audio.samples, expected, atol=1 / 128)
    assert audio.duration_s == pytest.approx(4801 / 48_000)
    np.testing.assert_allclose(audio.mono(), expected.mean(axis=0), atol=1 / 128)
    assert audio.mono().dtype == np.float32 and audio.mono().ndim == 1


def test_mono_s16_wav_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    raw = rng.integers(-32768, 32768, size=(16_003, 1), dtype=np.int16)
    path = tmp_path / "mono16.wav"
    _write_wav(path, raw, 16_000, sampwidth=2)

    audio = read_audio(path)

    assert audio.sample_rate == 16_000
    assert audio.samples.shape == (1, 16_003)
    np.testing.assert_array_equal(audio.samples[0], raw[:, 0].astype(np.float32) / 32768)


@pytest.mark.parametrize(
    ("name", "codec", "rate", "channels", "options"),
    [
        ("tone.mp3", "libmp3lame", 44_100, 1, None),
        ("tone.flac", "flac", 22_050, 1, None),
        ("tone.ogg", "libopus", 48_000, 1, None),
        # PyAV's wheels carry FFmpeg's own vorbis encoder: experimental, and stereo only.
        ("vorbis.ogg", "vorbis", 44_100, 2, {"strict": "experimental"}),
    ],
)
def test_compressed_formats(
    tmp_path: Path, name: str, codec: str, rate: int, channels: int, options: dict[str, str] | None
) -> None:
    path = tmp_path / name
    _encode(path, codec, rate, channels, options)

    audio = read_audio(path)

    assert isinstance(audio, DecodedAudio)
    assert audio.sample_rate == rate
    assert audio.samples.shape[0] == channels
    assert abs(audio.duration_s - 1.0) < 0.060
    # The tone survived: its level is close to the source's RMS of 0.3/sqrt(2).
    assert np.sqrt(np.mean(audio.mono() ** 2)) == pytest.approx(0.3 / np.sqrt(2), rel=0.15)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.wav"
    with pytest.raises(MediaError) as err:
        read_audio(path)
    _assert_one_line_naming(err, path)


def test_text_file_renamed_wav(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("these are meeting notes,\nnot audio\n")
    with pytest.raises(MediaError) as err:
        read_audio(path)
    _assert_one_line_naming(err, path)


def test_header_only_wav(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    _write_wav(path, np.zeros((0, 1), dtype=np.int16), 16_000, sampwidth=2)
    with pytest.raises(MediaError, match="no audio samples") as err:
        read_audio(path)
    _assert_one_line_naming(err, path)


def test_truncated_and_garbage_files(tmp_path: Path) -> None:
    good = tmp_path / "good.wav"
    _write_wav(good, np.zeros((1000, 1), dtype=np.int16), 16_000, sampwidth=2)
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(good.read_bytes()[:20])  # cut inside the RIFF header
    garbage = tmp_path / "garbage.mp3"
    garbage.write_bytes(np.random.default_rng(2).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    for path in (truncated, garbage):
        with pytest.raises(MediaError) as err:
            read_audio(path)
        _assert_one_line_naming(err, path)


def test_video_only_file_has_no_audio_stream(tmp_path: Path) -> None:
    path = tmp_path / "silent.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(MediaError, match="no audio stream") as err:
        read_audio(path)
    _assert_one_line_naming(err, path)


# read_image


def test_png_with_alpha_composites_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((60, 80, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, 40:, 3] = 255  # right half opaque red, left half fully transparent
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)

    img = read_image(path, height=30, width=40)

    assert img.shape == (30, 40, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[15, 2], [255, 255, 255])
    np.testing.assert_array_equal(img[15, 37], [255, 0, 0])


def test_portrait_jpeg_is_centre_cropped(tmp_path: Path) -> None:
    # A tall image with a green band in the middle third: a square crop keeps only the band.
    arr = np.zeros((300, 100, 3), np.uint8)
    arr[100:200] = (0, 200, 0)
    path = tmp_path / "tall.jpg"
    Image.fromarray(arr).save(path, quality=95)

    img = read_image(path, height=64, width=64)

    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert img[2:-2, :, 1].min() > 150 and img[2:-2, :, 0].max() < 60


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    # Stored landscape with EXIF orientation 6 (rotate 90 CW on display) reads as portrait.
    arr = np.zeros((100, 200, 3), np.uint8)
    arr[:, :100] = (255, 0, 0)  # left half red; after a clockwise turn it is the top half
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    Image.fromarray(arr).save(path, exif=exif, quality=95)

    img = read_image(path, height=200, width=100)

    assert img[20, 50, 0] > 200 and img[180, 50, 0] < 50


def test_image_errors(tmp_path: Path) -> None:
    text = tmp_path / "face.png"
    text.write_text("not a picture")
    with pytest.raises(MediaError) as err:
        read_image(text, 64, 64)
    _assert_one_line_naming(err, text)

    absent = tmp_path / "absent.png"
    with pytest.raises(MediaError) as err:
        read_image(absent, 64, 64)
    _assert_one_line_naming(err, absent)

    with pytest.raises(MediaError, match="upload"):
        read_image(b"not a picture", 64, 64)


def test_image_from_bytes(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (50, 40), (10, 20, 30)).save(buf, format="PNG")

    img = read_image(buf.getvalue(), height=32, width=48)

    assert img.shape == (32, 48, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[16, 24], [10, 20, 30])


# Mp4Writer


def test_mp4_writer_durations_and_codecs(tmp_path: Path) -> None:
    path = tmp_path / "out.mp4"
    rate, fps, frames = 48_000, 25, 50
    per_frame = rate // fps  # 1920: deliberately not a multiple of the AAC frame size
    writer = Mp4Writer(path, width=128, height=128, fps=fps, audio_rate=rate)
    with writer:
        for i in range(frames):
            t = np.arange(i * per_frame, (i + 1) * per_frame) / rate
            writer.write(
                np.full((128, 128, 3), i * 5, np.uint8),
                (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32),
            )
    writer.close()  # a second close (after __exit__) is a no-op

    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264"
        assert audio.codec_context.name == "aac"
        assert audio.codec_context.sample_rate == rate
        assert abs(float(video.duration * video.time_base) - 2.0) < 0.040
        # Tighter than a frame: 2 s is not a whole number of AAC frames, so a dropped tail shows.
        assert abs(float(audio.duration * audio.time_base) - 2.0) < 0.005
        assert sum(1 for _ in container.decode(video=0)) == frames
    decoded = read_audio(path)
    assert abs(decoded.duration_s - 2.0) < 0.040


def test_mp4_writer_pads_odd_sizes(tmp_path: Path) -> None:
    path = tmp_path / "odd.mp4"
    with Mp4Writer(path, width=65, height=33) as writer:
        for _ in range(3):
            writer.write(np.zeros((33, 65, 3), np.uint8), np.zeros(1920, np.float32))
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        assert (video.width, video.height) == (66, 34)
        assert sum(1 for _ in container.decode(video=0)) == 3


def test_mp4_writer_rejects_wrong_frame_shape(tmp_path: Path) -> None:
    with Mp4Writer(tmp_path / "bad.mp4", width=64, height=64) as writer, pytest.raises(ValueError):
        writer.write(np.zeros((32, 64, 3), np.uint8), np.zeros(1920, np.float32))


# shipped assets


def test_shipped_assets_load() -> None:
    portrait = read_image(ASSETS / "portrait.png", height=256, width=256)
    assert portrait.shape == (256, 256, 3)
    assert portrait.std() > 20  # a drawn face, not a blank canvas

    hello = read_audio(ASSETS / "hello.wav")
    assert hello.sample_rate == 16_000 and hello.samples.shape[0] == 1
    assert 2.0 <= hello.duration_s <= 6.0
    assert (ASSETS / "hello.wav").stat().st_size < 150_000
