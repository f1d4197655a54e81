"""A WHEP player on aiortc that records what it receives, for end-to-end tests and benchmarks.

It never contacts a STUN server and gathers host candidates only on the given addresses
(loopback by default), like the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import aiohttp
import av
import numpy as np
from aiortc import (
    MediaStreamError,
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)

from stream.ice import IcePolicy, restrict_gathering

SDP = "application/sdp"


@dataclass
class ReceivedVideo:
    pts: int  # 90 kHz
    received_at: float  # time.monotonic() when decoded
    image: np.ndarray | None  # (H, W, 3) uint8 when images are kept


@dataclass
class ReceivedAudio:
    pts: int  # 48 kHz samples
    samples: np.ndarray  # float32 mono
    received_at: float


def _mono_float(frame: av.AudioFrame) -> np.ndarray:
    """Any decoded audio frame (aiortc's Opus decoder gives packed s16 stereo) -> float32 mono."""
    pcm = frame.to_ndarray().astype(np.float32)
    if frame.format.is_planar:
        mono = pcm.mean(axis=0)
    else:
        mono = pcm.reshape(-1, len(frame.layout.channels)).mean(axis=1)
    return mono / 32768.0 if frame.format.name.startswith("s16") else mono


@dataclass
class WhepClient:
    ice_hosts: tuple[str, ...] = ("127.0.0.1",)
    keep_images: bool = False
    video: list[ReceivedVideo] = field(default_factory=list)
    audio: list[ReceivedAudio] = field(default_factory=list)
    location: str | None = None

    def __post_init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTransceiver("video", direction="recvonly")
        self.pc.addTransceiver("audio", direction="recvonly")
        self._tasks: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None

    async def connect(self, http: aiohttp.ClientSession, whep_url: str) -> None:
        """POST the offer (candidates gathered, no trickle) and start receiving."""
        self._http = http
        restrict_gathering(self.pc, IcePolicy(self.ice_hosts))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with http.post(whep_url, data=self.pc.localDescription.sdp, headers={"Content-Type": SDP}) as r:
            if r.status != 201:
                raise RuntimeError(f"WHEP offer refused: {r.status} {await r.text()}")
            self.location = str(r.url.join(aiohttp.client.URL(r.headers["Location"])))
            answer = await r.text()
        await self.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        for transceiver in self.pc.getTransceivers():
            track = transceiver.receiver.track
            self._tasks.append(asyncio.create_task(self._read(track), name=f"whep-client-{track.kind}"))

    async def _read(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                now = time.monotonic()
                if track.kind == "video":
                    image = frame.to_ndarray(format="rgb24") if self.keep_images else None
                    self.video.append(ReceivedVideo(frame.pts, now, image))
                else:
                    self.audio.append(ReceivedAudio(frame.pts, _mono_float(frame), now))

    def selected_pair(self) -> tuple[str, str]:
        """(local, remote) host of the nominated ICE pair; aiortc has no public accessor."""
        transport = self.pc.getTransceivers()[0].receiver.transport.transport
        pair = transport._connection._nominated[1]
        return pair.local_candidate.host, pair.remote_candidate.host

    async def close(self) -> None:
        """Stop receiving, DELETE the viewer, close the peer connection; safe to call twice."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.location and self._http is not None and not self._http.closed:
            with contextlib.suppress(aiohttp.ClientError):
                async with self._http.delete(self.location):
                    pass
            self.location = None
        await self.pc.close()
