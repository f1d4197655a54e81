"""File I/O for the offline render path: decode audio and portraits, encode the result as mp4.

Everything a user hands us goes through here, so every failure becomes a ``MediaError`` whose
one-line message names the file: the CLI prints it and exits 2 instead of showing a PyAV or
Pillow traceback. Networking lives elsewhere; these functions only touch local files and bytes.

Timestamps in ``Mp4Writer`` come from integer counters (video frames, audio samples), never from
wall-clock time or float sums, so a long render cannot drift out of sync.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.config import FPS, OUTPUT_SAMPLE_RATE

logger = logging.getLogger(__name__)

# The AAC encoder consumes exactly this many samples per frame (except the last one).
AAC_FRAME_SIZE = 1024


class MediaError(ValueError):
    """A media file that cannot be used; the message is one line that names the file."""


def _one_line(text: str) -> str:
    # Library messages sometimes span lines; the CLI contract is a single line.
    return " ".join(str(text).split())


def _ffmpeg_reason(exc: Exception) -> str:
    # FFmpegError's str() repeats the errno and the path; strerror is the readable part.
    return _one_line(getattr(exc, "strerror", None) or exc)


@dataclass(frozen=True)
class DecodedAudio:
    """Decoded audio at the file's own rate and channel count; resampling is the caller's choice."""

    samples: np.ndarray  # float32 (channels, n) in [-1, 1]
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return self.samples.shape[1] / self.sample_rate

    def mono(self) -> np.ndarray:
        """Mean of the channels as float32 (n,): the models hear one channel."""
        return self.samples.mean(axis=0, dtype=np.float32)


def read_audio(path: str | Path) -> DecodedAudio:
    """Decode any audio file FFmpeg can read (wav, mp3, flac, ogg, m4a) to float32 planar.

    The sample format is converted but the rate and layout are kept, so PCM input comes back with
    exactly the samples that are in the file.
    """
    name = str(path)

    def fail(reason: str) -> MediaError:
        return MediaError(f"audio file {name!r}: {reason}")

    if not Path(path).is_file():
        raise fail("file not found")
    try:
        with av.open(name) as container:
            if not container.streams.audio:
                raise fail("no audio stream")
            stream = container.streams.audio[0]
            # Only the format is given: the resampler takes rate and layout from each frame.
            resampler = av.AudioResampler(format="fltp")
            chunks = []
            for frame in container.decode(stream):
                chunks.extend(f.to_ndarray() for f in resampler.resample(frame))
            chunks.extend(f.to_ndarray() for f in resampler.resample(None))
            sample_rate = stream.codec_context.sample_rate
    except av.FFmpegError as exc:
        raise fail(f"cannot be decoded as audio ({_ffmpeg_reason(exc)})") from exc
    if sum(c.shape[1] for c in chunks) == 0:
        raise fail("contains no audio samples")
    samples = np.concatenate(chunks, axis=1).astype(np.float32, copy=False)
    audio = DecodedAudio(samples=samples, sample_rate=int(sample_rate))
    logger.debug(
        "decoded %s: %d ch, %d Hz, %.2f s", name, samples.shape[0], audio.sample_rate, audio.duration_s
    )
    return audio


def read_image(source: bytes | str | Path, height: int, width: int) -> np.ndarray:
    """Load a portrait as uint8 (H, W, 3) RGB, centre-cropped to the target aspect and resized.

    Accepts raw bytes because the server passes uploads straight through. Phone photos carry
    their rotation in EXIF, and transparent PNGs would turn black without compositing on white.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if isinstance(source, bytes):
        name = f"<upload of {len(source)} bytes>"
        fp: io.BytesIO | Path = io.BytesIO(source)
    else:
        name = str(source)
        fp = Path(source)
        if not fp.is_file():
            raise MediaError(f"image file {name!r}: file not found")
    try:
        with Image.open(fp) as img:
            img.load()
            oriented = ImageOps.exif_transpose(img)
            rgb = _to_rgb_on_white(oriented)
    except UnidentifiedImageError as exc:
        raise MediaError(f"image file {name!r}: not an image (unrecognised format)") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # Pillow reports truncated files as OSError and some corrupt headers as SyntaxError.
        raise MediaError(f"image file {name!r}: cannot be read as an image ({_one_line(exc)})") from exc
    fitted = ImageOps.fit(rgb, (width, height), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))
    return np.asarray(fitted, dtype=np.uint8)


def read_video(source: bytes | str | Path, height: int, width: int, max_seconds: float) -> np.ndarray:
    """Decode a video's picture as uint8 (F, H, W, 3) RGB at 25 fps, each frame centre-cropped and
    resized as a portrait is. Any frame rate is resampled by time stamps (the last frame shown at
    each 40 ms tick), so a 30 fps phone clip and a 25 fps export give the same timing; the audio
    track, if any, is ignored: it is the speech being replaced."""
    if isinstance(source, bytes):
        name, opened = f"<upload of {len(source)} bytes>", io.BytesIO(source)
    else:
        name, opened = str(source), str(source)
        if not Path(source).is_file():
            raise MediaError(f"video file {name!r}: file not found")

    def fail(reason: str) -> MediaError:
        return MediaError(f"video file {name!r}: {reason}")

    frames: list[np.ndarray] = []
    previous: np.ndarray | None = None
    first = last = 0.0
    try:
        with av.open(opened) as container:
            if not container.streams.video:
                raise fail("no video stream")
            for index, frame in enumerate(container.decode(container.streams.video[0])):
                t = float(frame.time) if frame.time is not None else index / FPS
                first = t if previous is None else first
                t -= first
                if t > max_seconds:
                    raise fail(f"longer than the {max_seconds:g} s a session can loop; trim it")
                fitted = ImageOps.fit(frame.to_image(), (width, height), method=Image.Resampling.LANCZOS)
                while previous is not None and len(frames) / FPS < t - 0.5 / FPS:
                    frames.append(previous)  # the ticks before this frame show the one before it
                previous, last = np.asarray(fitted.convert("RGB"), dtype=np.uint8), t
    except av.FFmpegError as exc:
        raise fail(f"cannot be decoded as video ({_ffmpeg_reason(exc)})") from exc
    while previous is not None and len(frames) / FPS < last + 0.5 / FPS:
        frames.append(previous)
    if not frames:
        raise fail("contains no video frames")
    return np.stack(frames)


def _to_rgb_on_white(img: Image.Image) -> Image.Image:
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    )
    if not has_alpha:
        return img.convert("RGB")
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


class Mp4Writer:
    """H.264 + AAC mp4 written one video frame (and its audio) at a time.

    Audio of any length is buffered and encoded in whole AAC frames so that the caller can hand
    over exactly the samples that belong to each video frame. ``close()`` is idempotent.
    """

    def __init__(
        self,
        path: str | Path,
        width: int,
        height: int,
        fps: int = FPS,
        audio_rate: int = OUTPUT_SAMPLE_RATE,
        crf: int = 20,
    ) -> None:
        if width <= 0 or height <= 0 or fps <= 0 or audio_rate <= 0:
            raise ValueError(f"invalid mp4 geometry {width}x{height} @ {fps} fps, {audio_rate} Hz")
        self.path = str(path)
        self.width = width
        self.height = height
        self.fps = fps
        self.audio_rate = audio_rate
        # yuv420p subsamples chroma by 2, so x264 rejects odd sizes; frames are edge-padded.
        self._pad_h = height % 2
        self._pad_w = width % 2
        self._video_frames = 0
        self._audio_samples = 0
        self._audio_buffer = np.zeros(0, dtype=np.float32)
        self._closed = False
        try:
            self._container = av.open(self.path, mode="w", format="mp4")
        except av.FFmpegError as exc:
            raise MediaError(f"output file {self.path!r}: cannot be written ({_ffmpeg_reason(exc)})") from exc
        self._video = self._container.add_stream(
            "libx264", rate=fps, options={"preset": "veryfast", "crf": str(crf)}
        )
        self._video.width = width + self._pad_w
        self._video.height = height + self._pad_h
        self._video.pix_fmt = "yuv420p"
        self._video.codec_context.time_base = Fraction(1, fps)
        self._audio = self._container.add_stream("aac", rate=audio_rate, layout="mono")
        self._audio.codec_context.time_base = Fraction(1, audio_rate)

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def write(self, frame: np.ndarray, audio: np.ndarray) -> None:
        """Encode one video frame and the audio that plays during it (any number of samples)."""
        if self._closed:
            raise RuntimeError(f"Mp4Writer for {self.path!r} is closed")
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(
                f"frame must be uint8 ({self.height}, {self.width}, 3), got {frame.dtype} {frame.shape}"
            )
        if audio.ndim != 1:
            raise ValueError(f"audio must be 1-D mono samples, got shape {audio.shape}")
        if self._pad_h or self._pad_w:
            frame = np.pad(frame, ((0, self._pad_h), (0, self._pad_w), (0, 0)), mode="edge")
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        video_frame.pts = self._video_frames
        video_frame.time_base = Fraction(1, self.fps)
        self._video_frames += 1
        self._container.mux(self._video.encode(video_frame))

        self._audio_buffer = np.concatenate([self._audio_buffer, audio.astype(np.float32, copy=False)])
        whole = len(self._audio_buffer) - len(self._audio_buffer) % AAC_FRAME_SIZE
        for start in range(0, whole, AAC_FRAME_SIZE):
            self._encode_audio(self._audio_buffer[start : start + AAC_FRAME_SIZE])
        self._audio_buffer = self._audio_buffer[whole:]

    def _encode_audio(self, samples: np.ndarray) -> None:
        audio_frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples[None, :]), format="fltp", layout="mono"
        )
        audio_frame.sample_rate = self.audio_rate
        audio_frame.pts = self._audio_samples
        audio_frame.time_base = Fraction(1, self.audio_rate)
        self._audio_samples += len(samples)
        self._container.mux(self._audio.encode(audio_frame))

    def close(self) -> None:
        """Flush both encoders and finish the file; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        try:
            # AAC accepts a short final frame, so the tail is encoded as-is rather than padded
            # with silence that would lengthen the audio track.
            if len(self._audio_buffer):
                self._encode_audio(self._audio_buffer)
                self._audio_buffer = self._audio_buffer[:0]
            self._container.mux(self._video.encode(None))
            self._container.mux(self._audio.encode(None))
        finally:
            self._container.close()
        logger.debug(
            "wrote %s: %d frames, %.2f s audio",
            self.path,
            self._video_frames,
            self._audio_samples / self.audio_rate,
        )
