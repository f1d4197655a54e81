"""Bench stamps survive the codecs a viewer gets: the frame code through H.264 and VP8 at low
bitrates, the audio marker through Opus and AAC, each tied back to the exact frame."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from engine.media import read_audio
from engine.resample import StreamResampler
from engine.scheduler import OutputFrame
from stream.stamps import (
    SAMPLES_PER_FRAME,
    STAMP_BITS,
    add_marker,
    detect_markers,
    draw_stamp,
    find_markers,
    read_stamp,
    stamp_frame,
)

SIZE = 128  # the tiny preset's frame
RATE = 48_000
VOICE = Path(__file__).resolve().parents[1] / "engine" / "assets" / "hello.wav"


def _scene(index: int, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A moving, noisy picture: hard for a codec at a low bitrate, so it must spend bits everywhere."""
    yy, xx = np.mgrid[0:size, 0:size]
    tint = np.array([1.0, 0.5, -0.3])
    base = (
        128 + 60 * np.sin(xx / 7 + index / 5)[..., None] * tint + 50 * np.cos(yy / 5 - index / 3)[..., None]
    )
    return np.clip(base + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)


def _speech_48k(repeats: int) -> np.ndarray:
    """The shipped voice sample at 48 kHz, repeated: speech with formants under the markers."""
    speech = read_audio(VOICE)
    resampler = StreamResampler(speech.sample_rate, RATE)
    voice = np.concatenate([resampler.process(speech.mono()), resampler.flush()])
    return np.tile(voice, repeats)


@pytest.mark.parametrize(
    "codec,container,options",
    [
        ("libx264", "mp4", {"preset": "veryfast", "tune": "zerolatency"}),
        ("libvpx", "webm", {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}),
    ],
)
def test_frame_codes_survive_video_codecs_at_low_bitrate(codec: str, container: str, options: dict) -> None:
    rng = np.random.default_rng(0)
    first, count = 2**STAMP_BITS - 150, 300  # crosses the wrap of the code
    expected = [(first + i) % 2**STAMP_BITS for i in range(count)]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(codec, rate=25, options=options)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.codec_context.bit_rate = 100_000  # 100 kbit/s for 128x128 at 25 fps
        stream.codec_context.thread_count = 1  # threads only contend on a small, busy CI machine
        for i in range(count):
            frame = av.VideoFrame.from_ndarray(draw_stamp(_scene(i, rng), first + i), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    buffer.seek(0)
    with av.open(buffer) as decoded:
        read = [read_stamp(f.to_ndarray(format="rgb24")) for f in decoded.decode(video=0)]
    assert read == expected


def test_codes_read_back_after_scaling_and_never_from_unstamped_frames() -> None:
    rng = np.random.default_rng(1)
    stamped = draw_stamp(_scene(0, rng), 123_456)
    # As an RTMP profile shows a 128 px avatar: 720 px wide, bicubic.
    scaled = av.VideoFrame.from_ndarray(stamped, format="rgb24").reformat(720, 720, interpolation="BICUBIC")
    assert read_stamp(scaled.to_ndarray(format="rgb24")) == 123_456
    assert read_stamp(draw_stamp(_scene(0, rng, 360), 7)) == 7
    for plain in (
        _scene(3, rng),
        np.zeros((SIZE, SIZE, 3), np.uint8),
        np.full((SIZE, SIZE, 3), 255, np.uint8),
    ):
        assert read_stamp(plain) is None
    flipped = stamped.copy()
    flipped[:16, 16:32] = 255 - flipped[:16, 16:32]  # one data cell inverted: the CRC catches it
    assert read_stamp(flipped) is None
    assert read_stamp(np.zeros((16, 16, 3), np.uint8)) is None
    with pytest.raises(ValueError, match="too small"):
        draw_stamp(np.zeros((16, 16, 3), np.uint8), 1)


def test_stamp_frame_is_a_frame_hook_that_never_touches_the_frame_it_was_given() -> None:
    rgb = np.full((SIZE, SIZE, 3), 90, np.uint8)
    audio = np.zeros(SAMPLES_PER_FRAME, np.float32)
    for index in (50, 51):
        frame = OutputFrame(index, rgb, audio, segment_id=None, repeated=True)
        stamped = stamp_frame(frame)
        assert (stamped.index, stamped.repeated, read_stamp(stamped.rgb)) == (index, True, index)
        assert stamped.audio.shape == audio.shape and stamped.audio.dtype == np.float32
        if index % 25:
            assert stamped.audio is audio, "no marker on this frame: its audio is passed through"
        else:
            assert np.abs(stamped.audio).max() > 0.1
    assert (rgb == 90).all() and not audio.any(), "a repeated frame shares these arrays"


@pytest.mark.parametrize("codec,container,bitrate", [("libopus", "ogg", 32_000), ("aac", "mp4", 64_000)])
def test_audio_markers_survive_speech_codecs_and_land_on_their_frame(
    codec: str, container: str, bitrate: int
) -> None:
    first = 37  # a stream that does not start on a marker
    speech = _speech_48k(repeats=3)
    count = len(speech) // SAMPLES_PER_FRAME
    frames = [
        add_marker(speech[i * SAMPLES_PER_FRAME : (i + 1) * SAMPLES_PER_FRAME], first + i)
        for i in range(count)
    ]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(codec, rate=RATE, layout="mono")
        stream.codec_context.bit_rate = bitrate
        for i, samples in enumerate(frames):
            frame = av.AudioFrame.from_ndarray(samples[None, :], format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = (
                RATE,
                (first + i) * SAMPLES_PER_FRAME,
                Fraction(1, RATE),
            )
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    buffer.seek(0)
    with av.open(buffer) as decoded:
        chunks = list(decoded.decode(audio=0))
    # The decoder's timestamps undo the codec's priming delay, as a player's would.
    start = round(float(chunks[0].time) * RATE)
    received = np.concatenate([c.to_ndarray().mean(axis=0) for c in chunks])

    expected = [f for f in range(first, first + count) if f % 25 == 0]
    markers = detect_markers(received, start)
    assert [m.frame for m in markers] == expected
    assert max(abs(m.sample - m.frame * SAMPLES_PER_FRAME) for m in markers) <= SAMPLES_PER_FRAME  # 40 ms
    # A receiver whose idea of the timeline is 3 s off still gets the same frames.
    assert find_markers(received, start + 3 * RATE) == expected


def test_speech_alone_has_no_markers() -> None:
    speech = _speech_48k(repeats=5)
    assert find_markers(speech, 0) == []
    assert find_markers(np.clip(2 * speech, -1, 1), 0) == []
    assert find_markers(np.zeros(100, np.float32), 0) == []
