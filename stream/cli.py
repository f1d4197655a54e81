"""``livehuman serve`` (the live server, same as ``python server.py``), ``livehuman speak``
(stream an audio file into a session in real time, as a voice agent would) and ``livehuman live
--mic`` (drive a local session from the microphone and watch it in the demo page)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from engine.config import MODEL_SAMPLE_RATE

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

    from engine.config import ModelConfig
    from engine.runtime.base import Backend
    from stream.app import ServerConfig

log = logging.getLogger(__name__)

TOKEN_ENV = "LIVEHUMAN_TOKEN"
PACKET_S = 0.02  # one 20 ms packet, as a telephony or agent pipeline sends them
# A stop (SIGTERM, Ctrl-C) gives open WebSockets and WHEP requests this long to finish, instead of
# aiohttp's 60 s: sessions are closed by the app's own shutdown hooks, nothing is left to wait for.
SHUTDOWN_TIMEOUT_S = 3.0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="run the live server (HTTP API, audio WebSocket, WHEP)")
    add_serve_arguments(serve)
    serve.set_defaults(handler=serve_command)

    speak = subparsers.add_parser("speak", help="stream an audio file into a live session in real time")
    speak.add_argument(
        "--session", required=True, help="session URL (http://HOST/v1/sessions/ID) or its audio URL"
    )
    speak.add_argument("--audio", required=True, help="speech (wav, mp3, flac, ogg)")
    speak.set_defaults(handler=speak_command)

    live = subparsers.add_parser("live", help="drive a local session from the microphone and preview it")
    add_serve_arguments(live)
    live.add_argument("--mic", action="store_true", required=True, help="use the default input device")
    live.add_argument("--device", help="input device (index or name; default: the system's)")
    live.add_argument("--image", help="portrait (default: the shipped one)")
    live.set_defaults(handler=live_command)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--preset",
        default="default",
        help="default (the shipped trained model), default-prompt (the same with prompt control), a preset "
        "name (random weights) or a model directory",
    )
    parser.add_argument(
        "--backend",
        choices=("auto", "torch", "onnx", "tensorrt"),
        default="auto",
        help="model runtime (default auto: the fastest that loads here; onnx on a CPU, exported once "
        "into the engine cache)",
    )
    parser.add_argument(
        "--compute-budget-ms",
        type=int,
        help="time one window may take (default: the model's); lower it on a fast backend to lower latency",
    )
    parser.add_argument(
        "--playout-delay-ms",
        type=int,
        help="audio arrival to frame shown (default: the model's); at least the audio wait + compute budget",
    )
    parser.add_argument("--max-sessions", type=int, default=4, help="concurrent sessions before 503")
    parser.add_argument(
        "--idle-timeout", type=float, default=120.0, help="close idle sessions after S seconds"
    )
    parser.add_argument(
        "--bench-stamp",
        action="store_true",
        help="code each frame's index in a corner and mark the audio (for latency benchmarks)",
    )
    from stream.webrtc import WebRtcOptions  # imports aiortc (a dependency of every install)

    WebRtcOptions.add_arguments(parser)


def serve_command(args: argparse.Namespace) -> int:
    """Load the model (before the loop starts, so the first session is not waiting on it) and serve
    until interrupted. Bearer-token auth is on when ``LIVEHUMAN_TOKEN`` is set."""
    from aiohttp import web

    from stream.app import build_app

    config, backend, model_config = _server(args)
    web.run_app(
        build_app(config, backend, model_config=model_config),
        host=config.host,
        port=config.port,
        print=log.info,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    return 0


def live_command(args: argparse.Namespace) -> int:
    """The server plus one session fed by the local microphone; the log prints its preview URL."""
    from pathlib import Path

    from aiohttp import web

    from stream.app import MANAGER_KEY, build_app
    from stream.demo import PORTRAIT
    from stream.microphone import MicrophoneSource

    config, backend, model_config = _server(args)
    app = build_app(config, backend, model_config=model_config)
    device = int(args.device) if args.device and args.device.isdigit() else args.device
    portrait = Path(args.image or PORTRAIT).read_bytes()

    microphones: list[MicrophoneSource] = []

    async def start_microphone(app: web.Application) -> None:
        session = await app[MANAGER_KEY].create(portrait)
        microphones.append(MicrophoneSource(session, device=device))
        microphones[-1].start()
        log.info("preview: http://%s:%d/?session=%s", config.host, config.port, session.id)

    async def stop_microphone(_: web.Application) -> None:
        for microphone in microphones:
            microphone.stop()

    app.on_startup.append(start_microphone)
    app.on_shutdown.insert(0, stop_microphone)
    web.run_app(app, host=config.host, port=config.port, print=log.info, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    return 0


def _server(args: argparse.Namespace) -> tuple[ServerConfig, Backend, ModelConfig]:
    """The server's config, its model (loaded before the event loop starts, so the first session
    does not wait on it) and the model config sessions get, with the command line's scheduler
    options applied."""
    from engine.render import with_overrides
    from livehuman.backends import load_backend
    from stream.app import ServerConfig
    from stream.sessions import SessionLimits

    config = ServerConfig(
        host=args.host,
        port=args.port,
        sessions=SessionLimits(max_sessions=args.max_sessions, idle_timeout_s=args.idle_timeout),
        token=os.environ.get(TOKEN_ENV) or None,
        ice_hosts=tuple(args.ice_hosts),
        ice_servers=tuple(args.ice_server),
        bench_stamp=args.bench_stamp,
        model=str(args.preset),
    )
    backend = load_backend(args.backend, args.preset)
    model_config = with_overrides(
        backend.config, compute_budget_ms=args.compute_budget_ms, playout_delay_ms=args.playout_delay_ms
    )
    log.info(
        "model %s (%dx%d) on %s, playout delay %d ms; auth %s",
        model_config.name,
        model_config.width,
        model_config.height,
        backend.name,
        model_config.scheduler.playout_delay_ms,
        "on" if config.token else f"off (set {TOKEN_ENV} to require a bearer token)",
    )
    return config, backend, model_config


def speak_command(args: argparse.Namespace) -> int:
    """Exit 0 once the utterance has played, 1 if the session ended first, 2 if the session could not
    be reached or the server closed the connection (the reason is logged)."""
    from websockets import WebSocketException

    from engine.media import read_audio

    decoded = read_audio(args.audio)
    samples = _to_model_rate(decoded.mono(), decoded.sample_rate)
    try:
        events = asyncio.run(speak(args.session, samples, token=os.environ.get(TOKEN_ENV) or None))
    except (OSError, TimeoutError, ValueError, WebSocketException) as exc:
        log.error("speak: %s", " ".join(str(exc).split()) or type(exc).__name__)
        return 2
    if not any(e["type"] == "playback_finished" for e in events):
        log.error("speak: the session closed before the speech had played")
        return 1
    return 0


def audio_ws_url(url: str) -> str:
    """The audio WebSocket URL for a session URL (http(s) -> ws(s), ``/audio`` appended)."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss"):
        raise ValueError(f"session URL {url!r}: expected http(s):// or ws(s)://")
    path = parts.path.rstrip("/")
    if not path.endswith("/audio"):
        path += "/audio"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


async def speak(url: str, samples: np.ndarray, token: str | None = None) -> list[dict]:
    """Send 16 kHz mono float32 speech in 20 ms PCM16 packets paced in real time, then
    ``end_of_speech``; returns the playback events, ending with the utterance's ``playback_finished``."""
    from websockets.asyncio.client import connect

    packet = round(MODEL_SAMPLE_RATE * PACKET_S)
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
    headers = {"Authorization": f"Bearer {token}"} if token else None
    events: list[dict] = []
    async with connect(audio_ws_url(url), additional_headers=headers) as ws:
        receiver = asyncio.create_task(_receive_events(ws, events), name="speak-events")
        try:
            loop = asyncio.get_running_loop()
            start = loop.time()
            for i, offset in enumerate(range(0, len(pcm), packet)):
                # Paced from one start time, so scheduling delays never accumulate.
                await asyncio.sleep(max(start + i * PACKET_S - loop.time(), 0.0))
                await ws.send(pcm[offset : offset + packet].tobytes())
            await ws.send(json.dumps({"type": "end_of_speech"}))
            await asyncio.wait_for(receiver, timeout=len(samples) / MODEL_SAMPLE_RATE + 10.0)
        finally:
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiver  # re-raises why the server closed the connection, if it did
    return events


async def _receive_events(ws: ClientConnection, events: list[dict]) -> None:
    async for message in ws:
        event = json.loads(message)
        log.info("%s", " ".join(f"{k}={v}" for k, v in event.items()))
        events.append(event)
        if event["type"] == "playback_finished":
            return


def _to_model_rate(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    from engine.resample import StreamResampler

    resampler = StreamResampler(sample_rate, MODEL_SAMPLE_RATE)
    return np.concatenate([resampler.process(samples), resampler.flush()])
