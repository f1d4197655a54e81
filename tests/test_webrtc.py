"""WebRTC delivery: one shared encoder, WHEP negotiation on loopback only, inbound microphone audio.

Every socket here is on 127.0.0.1: both peers use no ICE server and gather on loopback only, and
the server is told to accept nothing else. Run inside ``unshare -n`` to be sure (``make test``).
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Awaitable, Callable

import av
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiortc import (
    MediaStreamError,
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceTransport,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCSessionDescription,
)

from engine.scheduler import OutputFrame
from stream import encoder as encoder_module
from stream.encoder import (
    AUDIO_SAMPLES_PER_FRAME,
    VIDEO_TICKS_PER_FRAME,
    EncodedFrame,
    EncoderOptions,
    SharedEncoder,
)
from stream.ice import (
    IcePolicy,
    filter_fragment,
    filter_sdp_candidates,
    parse_ice_hosts,
    parse_sdpfrag,
    restrict_gathering,
)
from stream.session import END_OF_STREAM, Session, SessionOptions, Subscription
from stream.webrtc import SDP, SDPFRAG, WebRtcOptions, WhepService, setup_webrtc
from tests.fakes import SIZE, FakeBackend, fake_config

LOOPBACK = IcePolicy(("127.0.0.1",))
RATE = 48_000
OFFER_EXTRAS = (  # a browser's mDNS name and a LAN address: neither may reach aioice
    "a=candidate:1 1 udp 2122260223 0b3e3ac8-7d4f-4c3b-9f51-3e0c1a2b4c5d.local 50001 typ host\r\n"
    "a=candidate:2 1 udp 2122194687 192.168.1.23 50002 typ host\r\n"
)


# --- candidate policy ----------------------------------------------------------------------------
def test_offer_and_trickle_filters_drop_mdns_names_and_foreign_addresses() -> None:
    sdp = (
        "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n"
        "a=candidate:0 1 udp 2122260223 127.0.0.1 50000 typ host\r\n" + OFFER_EXTRAS + "a=candidate:3 1 udp "
        "1686052607 203.0.113.9 50003 typ srflx raddr 127.0.0.1 rport 50000\r\n"
        "a=candidate:4 1 udp 2122260223 stun.example.org 50004 typ host\r\na=end-of-candidates\r\n"
    )
    kept, dropped = filter_sdp_candidates(sdp, LOOPBACK)
    assert [line.split()[4] for line in kept.splitlines() if line.startswith("a=candidate:")] == ["127.0.0.1"]
    assert len(dropped) == 4 and "a=end-of-candidates" in kept and "a=mid:0" in kept

    # With no hosts configured, addresses pass but names never do: resolving them leaks traffic.
    _, dropped = filter_sdp_candidates(sdp, IcePolicy())
    assert sorted(dropped) == sorted(["0b3e3ac8-7d4f-4c3b-9f51-3e0c1a2b4c5d.local", "stun.example.org"])

    fragment, dropped = filter_fragment(
        parse_sdpfrag(sdp.replace("v=0\r\n", "a=ice-ufrag:abcd\r\n")), LOOPBACK
    )
    assert fragment.ufrag == "abcd" and fragment.end_of_candidates
    assert [(mid, c.split()[4]) for mid, c in fragment.candidates] == [("0", "127.0.0.1")]
    assert len(dropped) == 4

    assert parse_ice_hosts(" 127.0.0.1, 10.0.0.0/8 ") == ("127.0.0.1", "10.0.0.0/8")
    assert IcePolicy(("10.0.0.0/8",)).allows("10.1.2.3") and not IcePolicy(("10.0.0.0/8",)).allows("11.0.0.1")
    with pytest.raises(ValueError):
        parse_ice_hosts("127.0.0.1,not-an-address")
    assert LOOPBACK.local_addresses() == ["127.0.0.1"]


# --- the shared encoder ---------------------------------------------------------------------------
class _Source:
    """Stands in for a Session: the test feeds frames into the one subscription."""

    id = "src"

    def __init__(self) -> None:
        self.subscription = Subscription(100)

    def subscribe(self) -> Subscription:
        return self.subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        pass


class _Sink:
    def __init__(self) -> None:
        self.frames: list[EncodedFrame] = []
        self.ended = False

    def deliver(self, frame: EncodedFrame) -> None:
        self.frames.append(frame)

    def end(self) -> None:
        self.ended = True


def _frame(index: int) -> OutputFrame:
    rgb = np.full((SIZE, SIZE, 3), index % 256, np.uint8)
    return OutputFrame(index, rgb, np.zeros(AUDIO_SAMPLES_PER_FRAME, np.float32), None)


@pytest.mark.parametrize("codec", ["H264", "VP8"])
def test_shared_encoder_encodes_once_for_all_sinks_on_the_session_clock(codec: str) -> None:
    async def main() -> tuple[SharedEncoder, _Sink, _Sink, list[int]]:
        source = _Source()
        encoder = SharedEncoder(source, EncoderOptions(codec, gop_frames=20))  # type: ignore[arg-type]
        a, b = _Sink(), _Sink()
        encoder.attach(a)
        encoder.attach(b)

        async def feed(indices: range) -> None:
            for index in indices:
                source.subscription.put(_frame(index))
            while encoder.frames_encoded < indices.stop - 100:
                await asyncio.sleep(0.005)

        await feed(range(100, 130))
        forced = []
        for _ in range(2):  # a keyframe request (a viewer's PLI) is honoured on the next frame
            encoder.request_keyframe()
            start = 100 + encoder.frames_encoded
            await feed(range(start, start + 8))
            forced.append(next(f.index for f in a.frames if f.index >= start and f.keyframe) - start)
        source.subscription.put(END_OF_STREAM)
        while encoder.running:
            await asyncio.sleep(0.005)
        return encoder, a, b, forced

    encoder, a, b, forced = asyncio.run(main())
    assert encoder.frames_encoded == len(a.frames) == 46 and a.ended and b.ended
    assert all(x is y for x, y in zip(a.frames, b.frames, strict=True)), "both sinks get the same packets"
    assert a.frames[0].keyframe and forced == [0, 0]
    keyframes = [f.index for f in a.frames if f.keyframe]
    assert np.diff(keyframes).max() <= 20, "GOP bound"
    for frame in a.frames:
        (video,) = frame.video
        assert video.pts == frame.index * VIDEO_TICKS_PER_FRAME and video.time_base == fractions.Fraction(
            1, 90000
        )
        base = frame.index * AUDIO_SAMPLES_PER_FRAME
        assert [p.pts for p in frame.audio] == [base, base + 960]
        assert all(p.time_base == fractions.Fraction(1, RATE) for p in frame.audio)


# --- WHEP end to end ------------------------------------------------------------------------------
class _Microphone(MediaStreamTrack):
    """A browser microphone: 20 ms frames of a tone, in real time."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        self._start = self._start or time.monotonic()
        await asyncio.sleep(max(0.0, self._start + self.sent * 0.02 - time.monotonic()))
        t = (self.sent * 960 + np.arange(960)) / RATE
        pcm = (0.3 * 32767 * np.sin(2 * np.pi * 440.0 * t)).astype(np.int16)[None]  # (1, 960)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE, self.sent * 960, fractions.Fraction(1, RATE)
        self.sent += 1
        return frame


class _Viewer:
    """A WHEP player: aiortc, no ICE server, loopback candidates only."""

    def __init__(self, microphone: MediaStreamTrack | None = None) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTransceiver("video", direction="recvonly")
        self.pc.addTransceiver(microphone or "audio", direction="sendrecv" if microphone else "recvonly")
        self.video: list[int] = []  # pts
        self.audio: list[tuple[int, int, float]] = []  # pts, samples, rms
        self.location = ""
        self._tasks: list[asyncio.Task[None]] = []

    async def connect(self, client: TestClient, session_id: str, candidates_end: str) -> None:
        """``candidates_end`` replaces the offer's end-of-candidates: extra lines, or "" to trickle more."""
        restrict_gathering(self.pc, LOOPBACK)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        offer = self.pc.localDescription.sdp.replace("a=end-of-candidates\r\n", candidates_end, 1)
        response = await client.post(
            f"/v1/sessions/{session_id}/whep", data=offer, headers={"Content-Type": SDP}
        )
        assert response.status == 201, await response.text()
        assert response.content_type == SDP
        self.location = response.headers["Location"]
        assert self.location.startswith(f"/v1/sessions/{session_id}/whep/")
        await self.pc.setRemoteDescription(RTCSessionDescription(await response.text(), "answer"))
        video, audio = (t.receiver.track for t in self.pc.getTransceivers())
        self._tasks = [asyncio.create_task(self._read(video)), asyncio.create_task(self._read(audio))]

    async def _read(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    self.video.append(frame.pts)
                else:
                    pcm = frame.to_ndarray().astype(np.float64)
                    self.audio.append((frame.pts, frame.samples, float(np.sqrt(np.mean(pcm**2)))))
        except MediaStreamError:
            pass

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pc.close()


def _recording(
    recv: Callable[[], Awaitable[av.Packet]], pts: list[int]
) -> Callable[[], Awaitable[av.Packet]]:
    """What the server hands aiortc, by pts."""

    async def spy() -> av.Packet:
        packet = await recv()
        pts.append(packet.pts)
        return packet

    return spy


def _ice(pc: RTCPeerConnection) -> RTCIceTransport:
    return pc.getTransceivers()[0].receiver.transport.transport  # BUNDLE: the one transport


def _hosts(pc: RTCPeerConnection) -> tuple[set[str], set[str], tuple[str, str]]:
    """Local and remote candidate addresses, and the selected pair (aiortc has no public accessor)."""
    pair = _ice(pc)._connection._nominated[1]
    return (
        {c.ip for c in _ice(pc).iceGatherer.getLocalCandidates()},
        {c.ip for c in _ice(pc).getRemoteCandidates()},
        (pair.local_candidate.host, pair.remote_candidate.host),
    )


async def _start(options: WebRtcOptions) -> tuple[Session, WhepService, TestClient]:
    config = fake_config(playout_delay_ms=520, compute_budget_ms=100)
    portrait = np.zeros((SIZE, SIZE, 3), np.uint8)
    session = await Session.create("s1", FakeBackend(config), config, portrait, SessionOptions(seed=1))
    app = web.Application()
    service = setup_webrtc(app, {"s1": session}.get, options)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return session, service, client


class _CountingVideoEncoder(encoder_module.VideoEncoder):
    instances = 0
    encodes = 0

    def __init__(self, *args: object) -> None:
        type(self).instances += 1
        super().__init__(*args)  # type: ignore[arg-type]

    def encode(self, rgb: np.ndarray, index: int, keyframe: bool) -> list[av.Packet]:
        type(self).encodes += 1
        return super().encode(rgb, index, keyframe)


def _spy_on_pushes(session: Session) -> list[tuple[np.dtype, int, int]]:
    """What reaches ``session.push_audio``: (dtype, samples, rate) per call."""
    pushed: list[tuple[np.dtype, int, int]] = []
    push = session.push_audio

    def spy(samples: np.ndarray, rate: int) -> int:
        pushed.append((samples.dtype, samples.size, rate))
        return push(samples, rate)

    session.push_audio = spy  # type: ignore[method-assign]
    return pushed


def test_whep_viewers_share_one_encoder_receive_paced_media_and_send_speech(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(encoder_module, "VideoEncoder", _CountingVideoEncoder)

    async def main() -> dict:
        session, service, client = await _start(WebRtcOptions(ice_hosts=("127.0.0.1",)))
        pushed = _spy_on_pushes(session)
        microphone = _Microphone()
        plain, talker = _Viewer(), _Viewer(microphone)
        try:
            await asyncio.gather(
                plain.connect(client, "s1", OFFER_EXTRAS + "a=end-of-candidates\r\n"),
                talker.connect(client, "s1", ""),
            )
            server_plain, server_talker = (
                service.viewers[v.location.rsplit("/", 1)[1]] for v in (plain, talker)
            )
            sent: dict[str, list[int]] = {"video": [], "audio": []}
            for track in (server_plain.video, server_plain.audio):
                track.recv = _recording(track.recv, sent[track.kind])
            await asyncio.sleep(3.0)

            # A PLI from a viewer reaches the shared encoder through aiortc's RTCP handling.
            forced = service.encoders[0].forced_keyframes
            receiver = talker.pc.getTransceivers()[0].receiver
            await receiver._send_rtcp_pli(receiver.getSynchronizationSources()[0].source)
            await asyncio.sleep(0.3)
            pli_forced = service.encoders[0].forced_keyframes - forced

            # Trickled candidates are filtered like the offer's.
            ufrag = talker.pc.localDescription.sdp.split("a=ice-ufrag:")[1].split()[0]
            frag = f"a=ice-ufrag:{ufrag}\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n{OFFER_EXTRAS}"
            frag += "a=candidate:9 1 udp 2122260223 127.0.0.1 9 typ host\r\na=end-of-candidates\r\n"
            patch = await client.patch(talker.location, data=frag, headers={"Content-Type": SDPFRAG})
            restart = await client.patch(
                talker.location, data=frag, headers={"Content-Type": SDPFRAG, "If-Match": "*"}
            )
            stats = {
                "stats": service.stats(),
                "encoders": len(service.encoders),
                "frames_encoded": service.encoders[0].frames_encoded,
                "encodes": _CountingVideoEncoder.encodes,  # one may be in flight on its thread
                "frames_released": session.scheduler.stats.frames_released,
                "plain_hosts": _hosts(plain.pc),
                "server_hosts": _hosts(server_plain.pc),
                "pli_forced": pli_forced,
                "patch": (patch.status, restart.status),
                "trickled": {(c.ip, c.port) for c in _ice(server_talker.pc).getRemoteCandidates()},
            }

            delete = await client.delete(plain.location)
            stats["delete"] = (delete.status, (await client.delete(plain.location)).status)
            stats["after_delete"] = (
                len(service.viewers),
                server_plain.pc.connectionState,
                service.encoders[0].sinks,
            )
            await client.delete(talker.location)
            stats["after_all"] = (len(service.viewers), len(service.encoders), session.subscribers)
        finally:
            await plain.close()
            await talker.close()
            await client.close()  # runs the app's shutdown: close_all()
            await session.close()
        return {
            "plain": plain,
            "talker": talker,
            "sent": sent,
            "pushed": pushed,
            "mic": microphone.sent,
            **stats,
        }

    r = asyncio.run(main())
    # Loopback only, on both ends; the offered mDNS and LAN candidates never reached aioice.
    assert r["plain_hosts"] == ({"127.0.0.1"}, {"127.0.0.1"}, ("127.0.0.1", "127.0.0.1"))
    assert r["server_hosts"] == ({"127.0.0.1"}, {"127.0.0.1"}, ("127.0.0.1", "127.0.0.1"))

    # One encoder for two viewers: one encode per session frame, not one per viewer.
    assert r["encoders"] == 1 and _CountingVideoEncoder.instances == 1
    assert (r["stats"]["viewers"], r["stats"]["connected"], r["stats"]["encoders"][0]["sinks"]) == (2, 2, 2)
    assert r["frames_encoded"] <= r["encodes"] <= r["frames_encoded"] + 1 <= r["frames_released"] + 1

    for viewer in (r["plain"], r["talker"]):
        video, audio = np.array(viewer.video), np.array([a[0] for a in viewer.audio])
        assert len(video) >= 60, f"{len(video)} frames in 3 s"
        assert (np.diff(video) == VIDEO_TICKS_PER_FRAME).all(), "25 fps on the media clock, no gaps"
        assert (np.diff(audio) == 960).all(), "contiguous 20 ms audio"
        samples = sum(a[1] for a in viewer.audio)
        # Frame count and media duration agree, and audio spans what video does (the receiver's
        # jitter buffers hold back one video frame and four audio packets).
        assert audio[-1] + 960 == samples
        assert abs(samples / AUDIO_SAMPLES_PER_FRAME - len(video)) <= 3

    # What the server handed aiortc: both tracks start on the same frame, on one clock.
    sent_video, sent_audio = np.array(r["sent"]["video"]), np.array(r["sent"]["audio"])
    assert sent_video[0] // VIDEO_TICKS_PER_FRAME == sent_audio[0] // AUDIO_SAMPLES_PER_FRAME
    assert (np.diff(sent_video) == VIDEO_TICKS_PER_FRAME).all() and (np.diff(sent_audio) == 960).all()

    # The talker's microphone became session speech in 20 ms packets, which every viewer hears.
    assert r["pushed"] and all(p == (np.float32, 960, RATE) for p in r["pushed"])
    assert len(r["pushed"]) >= 0.8 * r["mic"]
    # (Late packets may be replaced by silence under load: that is the live scheduler's contract.)
    loud = [rms > 3000 for _, _, rms in r["plain"].audio]
    assert sum(loud) >= 25, "the viewer without a microphone hears the talker's tone"

    assert r["pli_forced"] == 1
    assert r["patch"] == (204, 405)
    assert ("127.0.0.1", 9) in r["trickled"] and not any(ip != "127.0.0.1" for ip, _ in r["trickled"])
    assert r["delete"] == (200, 404)
    assert r["after_delete"] == (1, "closed", 1)
    assert r["after_all"] == (0, 0, 0)


def test_whep_falls_back_to_vp8_and_frees_viewers_when_the_session_ends() -> None:
    async def main() -> tuple[list[str], list[int], int]:
        session, service, client = await _start(WebRtcOptions(ice_hosts=("127.0.0.1",)))
        viewer = _Viewer()
        video = viewer.pc.getTransceivers()[0]
        video.setCodecPreferences(
            [c for c in RTCRtpReceiver.getCapabilities("video").codecs if c.name == "VP8"]
        )
        try:
            await viewer.connect(client, "s1", "a=end-of-candidates\r\n")
            async with asyncio.timeout(5):
                while len(viewer.video) < 25:
                    await asyncio.sleep(0.05)
            codecs = [e.codec for e in service.encoders]
            server_pc = next(iter(service.viewers.values())).pc
            await session.close()  # the encoder's frames end, and with them the viewer
            async with asyncio.timeout(5):
                while service.viewers or service.encoders:
                    await asyncio.sleep(0.05)
        finally:
            await viewer.close()
            await client.close()
            await session.close()
        return codecs, viewer.video, server_pc.connectionState

    codecs, video, state = asyncio.run(main())
    assert codecs == ["VP8"]
    assert (np.diff(video) == VIDEO_TICKS_PER_FRAME).all()
    assert state == "closed"


def test_shutdown_finishes_a_close_that_the_session_s_end_began() -> None:
    """At shutdown the sessions close first, and each ending session starts closing its viewers;
    the service's shutdown must let those closes finish (it once cancelled them, and the peer
    connection, half closed, kept aiortc's receiver thread alive: the server never exited)."""

    async def main() -> str:
        session, service, client = await _start(WebRtcOptions(ice_hosts=("127.0.0.1",)))
        viewer = _Viewer()
        try:
            await viewer.connect(client, "s1", "a=end-of-candidates\r\n")
            server_pc = next(iter(service.viewers.values())).pc
            await session.close()  # the encoder's frames end, and the viewer's close begins
            async with asyncio.timeout(5):
                while service.viewers:
                    await asyncio.sleep(0)
            await service.close_all()  # at once, as the app's shutdown does
            state = server_pc.connectionState
        finally:
            await viewer.close()
            await client.close()
        return state

    assert asyncio.run(main()) == "closed"


def test_whep_refuses_bad_requests_with_clear_4xx() -> None:
    async def main() -> list[tuple[int, str]]:
        options = WebRtcOptions(ice_hosts=("127.0.0.1",), connect_timeout_s=0.3)
        session, service, client = await _start(options)
        audio_only = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        audio_only.addTransceiver("audio", direction="recvonly")
        restrict_gathering(audio_only, LOOPBACK)
        await audio_only.setLocalDescription(await audio_only.createOffer())
        results = []
        try:
            for path, body, kind in [
                ("/v1/sessions/s1/whep", "this is not SDP", SDP),
                ("/v1/sessions/s1/whep", "v=0\r\nm=video\r\n", SDP),
                ("/v1/sessions/s1/whep", audio_only.localDescription.sdp, SDP),
                ("/v1/sessions/s1/whep", audio_only.localDescription.sdp, "text/plain"),
                ("/v1/sessions/nope/whep", audio_only.localDescription.sdp, SDP),
            ]:
                response = await client.post(path, data=body, headers={"Content-Type": kind})
                results.append((response.status, (await response.json())["error"]))
            response = await client.delete("/v1/sessions/s1/whep/nobody")
            results.append((response.status, (await response.json())["error"]))
            assert not service.viewers and not service.encoders, "a refused offer leaves nothing behind"

            # A viewer that never completes ICE (it drops our answer) is freed at the deadline.
            silent = _Viewer()
            restrict_gathering(silent.pc, LOOPBACK)
            await silent.pc.setLocalDescription(await silent.pc.createOffer())
            sdp = silent.pc.localDescription.sdp
            response = await client.post("/v1/sessions/s1/whep", data=sdp, headers={"Content-Type": SDP})
            results.append((response.status, ""))
            (server_pc,) = (v.pc for v in service.viewers.values())
            await asyncio.sleep(0.6)
            results.append((len(service.viewers) + len(service.encoders), server_pc.connectionState))
            await silent.close()
        finally:
            await audio_only.close()
            await client.close()
            await session.close()
        return results

    results = asyncio.run(main())
    assert [status for status, _ in results[:6]] == [400, 400, 400, 415, 404, 404]
    assert results[6:] == [(201, ""), (0, "closed")]
    assert "malformed SDP" in results[0][1] and "malformed SDP" in results[1][1]
    assert "no video section" in results[2][1]
