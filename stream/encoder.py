"""One encoder per session and video codec, shared by every viewer: video and Opus as ``av.Packet``s.

Encoding is the costly part of delivery, so N viewers cost one encode plus N packetise-and-encrypt
passes. aiortc's ``RTCRtpSender`` takes an ``av.Packet`` returned by a track's ``recv()`` and only
packetises it (``Encoder.pack``: H.264 NAL units into STAP-A/FU-A, VP8 with a payload descriptor,
Opus as is), so the packets made here reach every viewer unchanged.

Timestamps come from integer counters on the session's one clock, never from aiortc's own
(which assumes 30 fps): video pts = index * 3600 at 90 kHz, audio pts = index * 1920 (+ 960 for
the second 20 ms packet) at 48 kHz. Both are derived from the same frame index, so lip sync holds
by construction; aiortc adds a random origin per stream and reports both in RTCP sender reports
from the same wall clock.

A new viewer or a keyframe request (PLI/FIR) forces a keyframe on the next frame, at most one per
``min_keyframe_gap`` frames, because one lossy viewer's requests cost every viewer bitrate.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
from dataclasses import dataclass
from typing import Literal, Protocol

import av
import numpy as np
from av.video.frame import PictureType

from engine.config import FPS, OUTPUT_SAMPLE_RATE
from engine.scheduler import OutputFrame
from stream.session import Session

log = logging.getLogger(__name__)

VideoCodec = Literal["H264", "VP8"]
VIDEO_CLOCK_RATE = 90_000
VIDEO_TICKS_PER_FRAME = VIDEO_CLOCK_RATE // FPS  # 3600
AUDIO_SAMPLES_PER_FRAME = OUTPUT_SAMPLE_RATE // FPS  # 1920
OPUS_PACKET_SAMPLES = OUTPUT_SAMPLE_RATE // 50  # 20 ms, what WebRTC receivers expect
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)
AUDIO_TIME_BASE = fractions.Fraction(1, OUTPUT_SAMPLE_RATE)


@dataclass(frozen=True)
class EncoderOptions:
    video_codec: VideoCodec = "H264"  # preferred; a viewer that offers only the other gets that
    video_bitrate: int = 1_500_000
    gop_frames: int = 2 * FPS  # at most 2 s: the longest a viewer waits if a forced keyframe is lost
    min_keyframe_gap: int = 5  # frames (200 ms) between forced keyframes
    x264_preset: str = "ultrafast"  # live on CPU: speed over compression
    audio_bitrate: int = 64_000

    def __post_init__(self) -> None:
        if self.video_codec not in ("H264", "VP8"):
            raise ValueError(f"video_codec must be H264 or VP8, not {self.video_codec!r}")
        if not 1 <= self.gop_frames <= 2 * FPS:
            raise ValueError(f"gop_frames must be in [1, {2 * FPS}] (2 s), not {self.gop_frames}")


@dataclass(frozen=True)
class EncodedFrame:
    """One session frame, encoded: the packets every viewer sends for it."""

    index: int
    video: tuple[av.Packet, ...]
    audio: tuple[av.Packet, ...]
    keyframe: bool


class PacketSink(Protocol):
    """A consumer of a shared encoder (a WebRTC viewer). Called on the event loop; must not block."""

    def deliver(self, frame: EncodedFrame) -> None: ...

    def end(self) -> None:
        """The session ended: no more frames."""
        ...


class VideoEncoder:
    """One libx264 (constrained baseline, zerolatency, Annex B with SPS/PPS on every IDR) or
    libvpx (realtime) context. Zero lag: each frame comes out as one packet, at once."""

    def __init__(self, codec: VideoCodec, width: int, height: int, options: EncoderOptions) -> None:
        if width % 2 or height % 2:
            raise ValueError(f"yuv420p needs an even frame size, not {width}x{height}")
        self.codec = codec
        if codec == "H264":
            context = av.CodecContext.create("libx264", "w")
            context.profile = "Constrained Baseline"  # the profile every WebRTC H.264 decoder has
            context.options = {
                "preset": options.x264_preset,
                "tune": "zerolatency",
                "forced-idr": "1",  # a forced keyframe must be an IDR, or a joining viewer can't start
                "maxrate": str(options.video_bitrate),
                "bufsize": str(options.video_bitrate // 2),
            }
        else:
            context = av.CodecContext.create("libvpx", "w")
            context.options = {
                "deadline": "realtime",
                "cpu-used": "8",
                "lag-in-frames": "0",
                "error-resilient": "1",
            }
        context.width, context.height = width, height
        context.pix_fmt = "yuv420p"
        context.time_base = fractions.Fraction(1, FPS)  # pts in frames; rate control needs the rate
        context.framerate = fractions.Fraction(FPS, 1)
        context.gop_size = options.gop_frames
        context.bit_rate = options.video_bitrate
        self._context = context

    def encode(self, rgb: np.ndarray, index: int, keyframe: bool) -> list[av.Packet]:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(
            format="yuv420p"
        )
        frame.pts = index
        frame.pict_type = PictureType.I if keyframe else PictureType.NONE
        packets = list(self._context.encode(frame))
        for packet in packets:
            packet.pts = packet.dts = packet.pts * VIDEO_TICKS_PER_FRAME
            packet.time_base = VIDEO_TIME_BASE
        return packets


class OpusEncoder:
    """Mono Opus at 48 kHz in 20 ms packets. libopus turns each input frame into one packet at
    once, so each packet takes the pts of the samples it was made from."""

    def __init__(self, bitrate: int) -> None:
        context = av.CodecContext.create("libopus", "w")
        context.sample_rate = OUTPUT_SAMPLE_RATE
        context.layout = "mono"
        context.format = "flt"
        context.bit_rate = bitrate
        context.time_base = AUDIO_TIME_BASE
        context.options = {"application": "voip"}  # the avatar speaks; tuned for speech
        self._context = context

    def encode(self, samples: np.ndarray, pts: int) -> list[av.Packet]:
        if samples.shape[0] % OPUS_PACKET_SAMPLES:
            raise ValueError(f"audio comes in 20 ms packets, got {samples.shape[0]} samples")
        packets = []
        for start in range(0, samples.shape[0], OPUS_PACKET_SAMPLES):
            chunk = samples[None, start : start + OPUS_PACKET_SAMPLES].astype(np.float32)  # (1, 960)
            frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
            frame.sample_rate = OUTPUT_SAMPLE_RATE
            frame.pts = pts + start
            for packet in self._context.encode(frame):
                packet.pts = packet.dts = pts + start
                packet.time_base = AUDIO_TIME_BASE
                packets.append(packet)
        return packets


class SharedEncoder:
    """Encodes a session's frames once for all of its sinks; runs only while it has sinks.

    Each run subscribes to the session and makes fresh codec contexts: a run that was cancelled
    may still have an encode in flight on its thread, and contexts are never shared across runs.
    """

    def __init__(self, session: Session, options: EncoderOptions) -> None:
        self.session = session
        self.options = options
        self.codec: VideoCodec = options.video_codec
        self.frames_encoded = 0
        self.keyframes = 0
        self.forced_keyframes = 0
        self._sinks: list[PacketSink] = []
        self._task: asyncio.Task[None] | None = None
        self._keyframe_wanted = False
        self._last_keyframe: int | None = None

    @property
    def sinks(self) -> int:
        return len(self._sinks)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def attach(self, sink: PacketSink) -> None:
        """Start delivering to ``sink`` from the next keyframe, which is requested now."""
        if sink not in self._sinks:
            self._sinks.append(sink)
        self.request_keyframe()
        if not self.running:
            self._last_keyframe = None
            self._task = asyncio.create_task(self._run(), name=f"encoder-{self.session.id}-{self.codec}")

    async def detach(self, sink: PacketSink) -> None:
        with contextlib.suppress(ValueError):
            self._sinks.remove(sink)
        if not self._sinks:
            await self.stop()

    def request_keyframe(self) -> None:
        self._keyframe_wanted = True

    async def stop(self) -> None:
        """Stop encoding (no ``end()`` to the sinks: they are going away); safe to call twice."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _force_keyframe(self, index: int) -> bool:
        if not self._keyframe_wanted:
            return False
        if self._last_keyframe is not None and index - self._last_keyframe < self.options.min_keyframe_gap:
            return False
        self._keyframe_wanted = False
        return True

    async def _run(self) -> None:
        subscription = self.session.subscribe()
        video: VideoEncoder | None = None
        audio = OpusEncoder(self.options.audio_bitrate)
        try:
            async for frame in subscription:
                if video is None:
                    height, width = frame.rgb.shape[:2]
                    video = VideoEncoder(self.codec, width, height, self.options)
                force = self._force_keyframe(frame.index)
                encoded = await asyncio.to_thread(_encode, video, audio, frame, force)
                self.frames_encoded += 1
                if encoded.keyframe:
                    self.keyframes += 1
                    self.forced_keyframes += int(force)
                    self._last_keyframe = frame.index
                    self._keyframe_wanted = False  # every sink attached by now gets this one
                for sink in list(self._sinks):
                    sink.deliver(encoded)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("session %s: %s encoder failed", self.session.id, self.codec)
        finally:
            self.session.unsubscribe(subscription)
        log.info("session %s: frames ended after %d encoded", self.session.id, self.frames_encoded)
        for sink in list(self._sinks):
            sink.end()


def _encode(video: VideoEncoder, audio: OpusEncoder, frame: OutputFrame, keyframe: bool) -> EncodedFrame:
    """Runs on a worker thread: PyAV releases the GIL while the codecs work."""
    video_packets = video.encode(frame.rgb, frame.index, keyframe)
    audio_packets = audio.encode(frame.audio, frame.index * AUDIO_SAMPLES_PER_FRAME)
    return EncodedFrame(
        index=frame.index,
        video=tuple(video_packets),
        audio=tuple(audio_packets),
        keyframe=any(packet.is_keyframe for packet in video_packets),
    )
