"""WebRTC delivery over WHEP: one peer connection per viewer, fed by the session's shared encoder.

``POST /v1/sessions/{id}/whep`` (``application/sdp`` offer) -> ``201`` with the answer and a
``Location`` naming the viewer; ``DELETE`` that location stops it; ``PATCH`` with
``application/trickle-ice-sdpfrag`` adds the viewer's trickled candidates (ICE restart is not
supported: 405). The server does not trickle: its answer carries every candidate it gathered.

A viewer's tracks hand aiortc the shared encoder's ``av.Packet``s, which aiortc only packetises.
Video goes out as H.264 (constrained baseline) or VP8, whichever the offer has (the encoder
options name the preference), audio as Opus. If the offer also sends audio (a browser
microphone), it is resampled per stream to mono float32 and pushed into the session.

ICE: no STUN/TURN server unless configured (aiortc's default would contact a public one), host
candidates only on ``ice_hosts``, and remote candidates outside them, or given as names, are
dropped before aioice sees them (see ``stream.ice``). A viewer that fails, closes or never
connects frees its peer connection; shutdown closes them all.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import secrets
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Final

import av
from aiohttp import web
from aiortc import (
    MediaStreamError,
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.codecs import CODECS
from aiortc.exceptions import InternalError, InvalidStateError, OperationError
from aiortc.rtcpeerconnection import find_common_codecs
from aiortc.rtcrtpparameters import RTCRtpCodecCapability
from aiortc.sdp import MediaDescription, SessionDescription, candidate_from_sdp

from engine.config import OUTPUT_SAMPLE_RATE
from stream.app import CONFIG_KEY, MANAGER_KEY
from stream.encoder import EncodedFrame, EncoderOptions, SharedEncoder, VideoCodec
from stream.ice import (
    IcePolicy,
    filter_fragment,
    filter_sdp_candidates,
    parse_ice_hosts,
    parse_sdpfrag,
    restrict_gathering,
)
from stream.session import Session

log = logging.getLogger(__name__)

SDP: Final = "application/sdp"
SDPFRAG: Final = "application/trickle-ice-sdpfrag"
ICE_HOSTS_ENV: Final = "LIVEHUMAN_ICE_HOSTS"
ICE_SCHEMES: Final = ("stun:", "stuns:", "turn:", "turns:")
VIDEO_QUEUE_FRAMES: Final = 25  # 1 s: a sender this far behind resyncs from a keyframe
AUDIO_QUEUE_PACKETS: Final = 50  # 1 s of 20 ms packets; the oldest go first
GetSession = Callable[[str], Session | None]


@dataclass(frozen=True)
class WebRtcOptions:
    ice_servers: tuple[str, ...] = ()  # STUN/TURN URLs (credentials are not carried); none by default
    ice_hosts: tuple[str, ...] = ()  # addresses or CIDR networks; empty: every interface, any peer
    encoder: EncoderOptions = EncoderOptions()
    connect_timeout_s: float = 20.0  # a viewer not connected by then is dropped
    max_viewers: int = 64

    def __post_init__(self) -> None:
        IcePolicy(self.ice_hosts)  # raises ValueError on a bad entry
        for url in self.ice_servers:
            if not url.startswith(ICE_SCHEMES):
                raise ValueError(f"ICE server {url!r} is not a stun:, stuns:, turn: or turns: URL")

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--ice-server",
            action="append",
            default=[],
            metavar="URL",
            help="STUN/TURN server URL for ICE (repeatable; none by default)",
        )
        parser.add_argument(
            "--ice-hosts",
            type=_ice_hosts_argument,
            default=os.environ.get(ICE_HOSTS_ENV, "127.0.0.1"),
            metavar="ADDR[,ADDR]",
            help="offer host candidates only on these addresses/networks and accept remote candidates "
            f"only inside them (env {ICE_HOSTS_ENV}; default: 127.0.0.1, loopback only)",
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> WebRtcOptions:
        return cls(ice_servers=tuple(args.ice_server), ice_hosts=tuple(args.ice_hosts))


def _ice_hosts_argument(text: str) -> tuple[str, ...]:
    try:
        return parse_ice_hosts(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


class OfferError(ValueError):
    """An offer we cannot answer; the message is returned to the client with a 400."""


class EncodedTrack(MediaStreamTrack):
    """A viewer's outgoing track: shared-encoder packets queued until aiortc's sender asks."""

    def __init__(self, kind: str, maxsize: int) -> None:
        super().__init__()
        self.kind = kind
        self._queue: asyncio.Queue[av.Packet | None] = asyncio.Queue(maxsize)

    def put(self, packet: av.Packet) -> bool:
        """Queue a packet; False if the oldest had to be dropped to make room."""
        dropped = self._queue.full()
        if dropped:
            self._queue.get_nowait()
        self._queue.put_nowait(packet)
        return not dropped

    def clear(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()

    def finish(self) -> None:
        """End of stream: the sender's next ``recv`` after the queued packets raises."""
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        packet = await self._queue.get()
        if packet is None:
            self.stop()
            raise MediaStreamError
        return packet


@dataclass(frozen=True)
class MediaPlan:
    """What we answer: the video codec, and our direction on the offer's first audio section."""

    video_codec: VideoCodec
    audio_direction: str | None  # "sendonly", "sendrecv", "recvonly"; None: no audio section


def plan_media(description: SessionDescription, preferred: VideoCodec) -> MediaPlan:
    kinds = {media.kind: media for media in reversed(description.media)}  # first of each kind
    video = kinds.get("video")
    if video is None:
        raise OfferError("the offer has no video section")
    if (video.direction or "sendrecv") not in ("recvonly", "sendrecv"):
        raise OfferError("the offer's video section must be recvonly or sendrecv")
    offered = {codec.name.upper() for codec in find_common_codecs(CODECS["video"], video.rtp.codecs)}
    choices = [preferred] + [codec for codec in ("H264", "VP8") if codec != preferred]
    codec = next((c for c in choices if c in offered), None)
    if codec is None:
        raise OfferError("the offer has no usable video codec (H.264 with packetization-mode=1, or VP8)")
    audio = kinds.get("audio")
    return MediaPlan(codec, _answer_direction(audio) if audio is not None else None)


def _answer_direction(media: MediaDescription) -> str | None:
    return {"recvonly": "sendonly", "sendrecv": "sendrecv", "sendonly": "recvonly"}.get(
        media.direction or "sendrecv"
    )


def _capabilities(kind: str, name: str) -> list[RTCRtpCodecCapability]:
    """Our codec and its retransmission format (RTX resends our already-encoded packets)."""
    codecs = RTCRtpSender.getCapabilities(kind).codecs
    return [c for c in codecs if c.name.upper() == name.upper()] + [c for c in codecs if c.name == "rtx"]


class Viewer:
    """One WHEP viewer: its peer connection, tracks and tasks. Delivery starts when it connects."""

    def __init__(
        self, service: WhepService, session: Session, encoder: SharedEncoder, pc: RTCPeerConnection
    ) -> None:
        self.id = secrets.token_urlsafe(12)
        self.etag = f'"{secrets.token_hex(8)}"'
        self.session = session
        self.encoder = encoder
        self.pc = pc
        self.video = EncodedTrack("video", VIDEO_QUEUE_FRAMES)
        self.audio = EncodedTrack("audio", AUDIO_QUEUE_PACKETS)
        self.remote_ufrag: str | None = None
        self.primary_mid: str | None = None
        self.resyncs = 0  # times the sender fell a queue behind and restarted from a keyframe
        self._service = service
        self._synced = False  # a keyframe has been queued: deltas may follow
        self._attached = False
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()

    # --- PacketSink ------------------------------------------------------------------------------
    def deliver(self, frame: EncodedFrame) -> None:
        if not self._synced:
            if not frame.keyframe:
                return
            self._synced = True
        if not all([self.video.put(packet) for packet in frame.video]):
            self.video.clear()
            self._synced = False
            self.resyncs += 1
            self.encoder.request_keyframe()
            log.warning("viewer %s: video queue full, resyncing from a keyframe", self.id)
        for packet in frame.audio:
            self.audio.put(packet)

    def end(self) -> None:
        self.video.finish()
        self.audio.finish()
        self._service.spawn_close(self, "the session ended")

    # --- lifecycle -------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._attached

    def start(self) -> None:
        """Arm the connect deadline and follow the connection's state."""
        self.pc.on("connectionstatechange", self._on_state)
        self._spawn(self._connect_deadline(), "deadline")

    def _on_state(self) -> None:
        state = self.pc.connectionState
        log.info("viewer %s: connection %s", self.id, state)
        if state == "connected" and not self._attached and not self._closed:
            self._attached = True
            self.encoder.attach(self)
        elif state in ("failed", "closed"):
            self._service.spawn_close(self, f"connection {state}")

    async def _connect_deadline(self) -> None:
        await asyncio.sleep(self._service.options.connect_timeout_s)
        if not self._attached:
            self._service.spawn_close(self, "not connected in time")

    def on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._service.claim_microphone(self):
            self._spawn(self._pump_microphone(track), "microphone")

    async def _pump_microphone(self, track: MediaStreamTrack) -> None:
        """The viewer's microphone becomes session speech: mono float32 at 48 kHz, one resampler
        for the whole stream so that packet boundaries never change a sample."""
        resampler = av.AudioResampler(format="flt", layout="mono", rate=OUTPUT_SAMPLE_RATE)
        pushed = False
        try:
            while True:
                frame = await track.recv()
                for out in resampler.resample(frame):
                    self.session.push_audio(out.to_ndarray().reshape(-1), out.sample_rate)
                    pushed = True
        except MediaStreamError:
            log.info("viewer %s: microphone ended", self.id)
        except (RuntimeError, ValueError) as exc:
            log.warning("viewer %s: microphone audio refused: %s", self.id, exc)
        finally:
            if pushed:
                self.session.end_segment()

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        task = asyncio.create_task(coro, name=f"viewer-{self.id}-{what}")
        self._tasks.add(task)
        task.add_done_callback(_log_task_failure)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Free everything the viewer holds; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.encoder.detach(self)
        # The peer connection before its tracks: aiortc#283, close() can wait forever on senders
        # whose tracks were stopped first.
        await self.pc.close()
        self.video.stop()
        self.audio.stop()


def _route_keyframe_requests(sender: RTCRtpSender, encoder: SharedEncoder) -> None:
    """aiortc turns a viewer's PLI/FIR into ``sender._send_keyframe()``, which only reaches its own
    encoder; packets come from ours, so the request is forwarded there (aiortc 1.16)."""
    own = sender._send_keyframe

    def send_keyframe() -> None:
        own()
        encoder.request_keyframe()

    sender._send_keyframe = send_keyframe  # type: ignore[method-assign]


class WhepService:
    """The WHEP endpoint for every session: viewers, their shared encoders, and teardown."""

    def __init__(self, get_session: GetSession, options: WebRtcOptions) -> None:
        self.options = options
        self.policy = IcePolicy(options.ice_hosts)
        self._get_session = get_session
        self._viewers: dict[str, Viewer] = {}
        self._encoders: dict[tuple[Session, VideoCodec], SharedEncoder] = {}
        self._microphones: dict[Session, Viewer] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        if self.policy.local_addresses() == []:
            log.warning("ICE hosts %s match no local interface: viewers cannot connect", options.ice_hosts)

    @property
    def viewers(self) -> Mapping[str, Viewer]:
        return self._viewers

    @property
    def encoders(self) -> list[SharedEncoder]:
        return list(self._encoders.values())

    def stats(self) -> dict[str, object]:
        """For the stats endpoint: how many viewers, and what each shared encoder has done."""
        viewers = list(self._viewers.values())
        return {
            "viewers": len(viewers),
            "connected": sum(viewer.connected for viewer in viewers),
            "resyncs": sum(viewer.resyncs for viewer in viewers),
            "encoders": [
                {
                    "session": encoder.session.id,
                    "codec": encoder.codec,
                    "sinks": encoder.sinks,
                    "frames_encoded": encoder.frames_encoded,
                    "keyframes": encoder.keyframes,
                    "forced_keyframes": encoder.forced_keyframes,
                }
                for encoder in self._encoders.values()
            ],
        }

    # --- HTTP ------------------------------------------------------------------------------------
    async def handle_offer(self, request: web.Request) -> web.Response:
        session_id = request.match_info["id"]
        session = self._get_session(session_id)
        if session is None:
            return _error(404, f"no session {session_id!r}")
        if request.content_type != SDP:
            return _error(415, f"send the SDP offer with Content-Type: {SDP}")
        if self._closing or len(self._viewers) >= self.options.max_viewers:
            return _error(503, "no room for another viewer")
        try:
            viewer = await self._answer(session, await request.text())
        except OfferError as exc:
            log.info("session %s: offer refused: %s", session_id, exc)
            return _error(400, str(exc))
        headers = {
            "Location": f"{request.rel_url.raw_path.rstrip('/')}/{viewer.id}",
            "ETag": viewer.etag,
            "Accept-Patch": SDPFRAG,
        }
        if self.options.ice_servers:
            headers["Link"] = ", ".join(f'<{url}>; rel="ice-server"' for url in self.options.ice_servers)
        return web.Response(
            status=201, text=viewer.pc.localDescription.sdp, content_type=SDP, headers=headers
        )

    async def handle_patch(self, request: web.Request) -> web.Response:
        viewer = self._find(request)
        if viewer is None:
            return _error(404, "no such viewer")
        if request.content_type != SDPFRAG:
            return _error(415, f"send candidates with Content-Type: {SDPFRAG}")
        if_match = request.headers.get("If-Match")
        if if_match == "*":
            # RFC 9725: a resource that trickles but cannot restart ICE answers a restart with 405.
            return _error(405, "ICE restart is not supported; start a new viewer", {"Allow": "PATCH, DELETE"})
        if if_match is not None and if_match != viewer.etag:
            return _error(412, "If-Match does not match this viewer's ETag")
        fragment = parse_sdpfrag(await request.text())
        if fragment.ufrag is not None and fragment.ufrag != viewer.remote_ufrag:
            return _error(422, "ice-ufrag does not match this viewer's ICE session")
        fragment, dropped = filter_fragment(fragment, self.policy)
        if dropped:
            log.info("viewer %s: dropped trickled candidates %s", viewer.id, dropped)
        try:
            for mid, attribute in fragment.candidates:
                candidate = candidate_from_sdp(attribute.split(":", 1)[1])
                candidate.sdpMid = mid or viewer.primary_mid
                await viewer.pc.addIceCandidate(candidate)
        except (ValueError, IndexError) as exc:
            return _error(400, f"malformed candidate: {exc}")
        if fragment.end_of_candidates:
            await viewer.pc.addIceCandidate(None)
        return web.Response(status=204)

    async def handle_delete(self, request: web.Request) -> web.Response:
        viewer = self._find(request)
        if viewer is None:
            return _error(404, "no such viewer")
        await self.close_viewer(viewer.id, "deleted by the client")
        return web.Response(status=200)

    def _find(self, request: web.Request) -> Viewer | None:
        viewer = self._viewers.get(request.match_info["viewer_id"])
        if viewer is None or viewer.session.id != request.match_info["id"]:
            return None
        return viewer

    # --- negotiation -----------------------------------------------------------------------------
    async def _answer(self, session: Session, offer: str) -> Viewer:
        if not offer.lstrip().startswith("v=0"):
            raise OfferError("malformed SDP offer: it must start with v=0")
        offer, dropped = filter_sdp_candidates(offer, self.policy)
        if dropped:
            log.info("session %s: dropped offered candidates %s", session.id, dropped)
        try:
            description = SessionDescription.parse(offer)
        except Exception as exc:  # the parser asserts and indexes freely on bad input
            raise OfferError(f"malformed SDP offer: cannot parse it ({type(exc).__name__})") from exc
        plan = plan_media(description, self.options.encoder.video_codec)

        pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[RTCIceServer(urls=url) for url in self.options.ice_servers])
        )
        encoder = self._encoder(session, plan.video_codec)
        viewer = Viewer(self, session, encoder, pc)
        viewer.remote_ufrag = description.media[0].ice.usernameFragment
        answered = False
        try:
            video = pc.addTransceiver(viewer.video, direction="sendonly")
            video.setCodecPreferences(_capabilities("video", plan.video_codec))
            _route_keyframe_requests(video.sender, encoder)
            if plan.audio_direction is not None:
                sends = plan.audio_direction in ("sendonly", "sendrecv")
                audio = pc.addTransceiver(viewer.audio if sends else "audio", direction=plan.audio_direction)
                audio.setCodecPreferences(_capabilities("audio", "opus"))
            pc.on("track", viewer.on_track)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            restrict_gathering(pc, self.policy)
            await pc.setLocalDescription(await pc.createAnswer())
            answered = True
        except (ValueError, OperationError, InternalError, InvalidStateError) as exc:
            raise OfferError(f"cannot answer the offer: {exc}") from exc
        finally:
            if not answered:  # refused, failed or cancelled: nothing may stay behind
                await viewer.close()
                self._release(viewer)
        viewer.primary_mid = pc.getTransceivers()[0].mid
        self._viewers[viewer.id] = viewer
        viewer.start()
        log.info("session %s: viewer %s answered (%s + opus)", session.id, viewer.id, plan.video_codec)
        return viewer

    def _encoder(self, session: Session, codec: VideoCodec) -> SharedEncoder:
        key = (session, codec)
        if key not in self._encoders:
            options = dataclasses.replace(self.options.encoder, video_codec=codec)
            self._encoders[key] = SharedEncoder(session, options)
        return self._encoders[key]

    def _release(self, viewer: Viewer) -> None:
        """Drop what the service kept for a closed viewer: its microphone claim, and its encoder
        once no other viewer uses it."""
        if self._microphones.get(viewer.session) is viewer:
            del self._microphones[viewer.session]
        encoder = viewer.encoder
        if not any(other.encoder is encoder for other in self._viewers.values()):
            self._encoders.pop((encoder.session, encoder.codec), None)

    def claim_microphone(self, viewer: Viewer) -> bool:
        """One microphone per session: two streams pushed into one timeline would interleave."""
        holder = self._microphones.setdefault(viewer.session, viewer)
        if holder is not viewer:
            log.info(
                "session %s: viewer %s's microphone ignored, %s has it",
                viewer.session.id,
                viewer.id,
                holder.id,
            )
        return holder is viewer

    # --- teardown --------------------------------------------------------------------------------
    async def close_viewer(self, viewer_id: str, reason: str) -> bool:
        viewer = self._viewers.pop(viewer_id, None)
        if viewer is None:
            return False
        log.info("session %s: viewer %s closing (%s)", viewer.session.id, viewer_id, reason)
        await viewer.close()
        self._release(viewer)
        return True

    def spawn_close(self, viewer: Viewer, reason: str) -> None:
        """Close from a callback that cannot await (a state change, the encoder's end)."""
        if viewer.id not in self._viewers:
            return
        task = asyncio.create_task(self.close_viewer(viewer.id, reason), name=f"close-viewer-{viewer.id}")
        self._tasks.add(task)
        task.add_done_callback(_log_task_failure)
        task.add_done_callback(self._tasks.discard)

    async def close_all(self) -> None:
        """Close every peer connection and stop every encoder; safe to call twice."""
        self._closing = True
        await asyncio.gather(
            *(self.close_viewer(viewer_id, "server shutdown") for viewer_id in list(self._viewers)),
            return_exceptions=True,
        )
        # Closes already under way (a session that ended first) are awaited, not cancelled: a
        # peer connection cut off half-closed leaves aiortc's receiver thread waiting, and the
        # process could not exit.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for encoder in list(self._encoders.values()):
            await encoder.stop()
        self._encoders.clear()


WHEP_SERVICE: Final = web.AppKey("whep_service", WhepService)


def setup(app: web.Application) -> None:
    """Route-module entry point (see stream/app.py): WHEP for the app's sessions."""
    config = app[CONFIG_KEY]
    options = WebRtcOptions(ice_servers=config.ice_servers, ice_hosts=config.ice_hosts)
    setup_webrtc(app, app[MANAGER_KEY].find, options)


def setup_webrtc(app: web.Application, get_session: GetSession, options: WebRtcOptions) -> WhepService:
    """Add the WHEP routes to ``app`` and close every viewer on its shutdown."""
    service = WhepService(get_session, options)
    app[WHEP_SERVICE] = service
    app.router.add_post("/v1/sessions/{id}/whep", service.handle_offer)
    app.router.add_patch("/v1/sessions/{id}/whep/{viewer_id}", service.handle_patch)
    app.router.add_delete("/v1/sessions/{id}/whep/{viewer_id}", service.handle_delete)

    async def on_shutdown(_: web.Application) -> None:
        await service.close_all()

    app.on_shutdown.append(on_shutdown)
    return service


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    """Returned, not raised, so that the app's middlewares (CORS) still decorate it."""
    return web.json_response({"error": message}, status=status, headers=headers)


def _log_task_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s failed", task.get_name(), exc_info=task.exception())
