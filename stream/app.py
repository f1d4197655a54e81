"""The live server's aiohttp application: one SessionManager, shared middlewares, route modules.

How a route module plugs in: it is a module with ``setup(app: web.Application) -> None`` that
adds its routes (and any ``on_shutdown`` hooks) and finds what it needs on the app:

- ``app[MANAGER_KEY]``: the ``SessionManager``; ``manager.get(id)`` raises ``SessionNotFound``,
  which every route answers with ``404``, as ``AtCapacity`` becomes ``503`` + ``Retry-After``;
- ``app[CONFIG_KEY]``: the ``ServerConfig`` (limits, token, ICE hosts).

Its dotted name goes in ``ROUTE_MODULES`` (or in ``build_app(routes=...)``, which also takes a
plain ``setup(app)`` callable). Its handlers then get, for free: bearer-token auth (``?token=``
also for WebSocket upgrades), CORS including OPTIONS preflight, and errors as ``{"error": ...}``
JSON; raise ``ApiError(status, message)``. Modules are named rather than imported here so that
they can import this module's keys without an import cycle.
"""

from __future__ import annotations

import hmac
import importlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from aiohttp import web

from engine.clock import Clock
from engine.config import ModelConfig
from engine.runtime.base import Backend
from stream.sessions import AtCapacity, ManagerClosed, SessionLimits, SessionManager, SessionNotFound
from stream.stamps import check_geometry, stamp_frame

log = logging.getLogger(__name__)

Setup = Callable[[web.Application], None]
# Route modules, each with ``setup(app)``.
ROUTE_MODULES: Final[tuple[str, ...]] = (
    "stream.api",
    "stream.sources_api",
    "stream.audio_ws",
    "stream.webrtc",
    "stream.rtmp_api",
    "stream.demo",
)

SESSION_PATH: Final = "/v1/sessions/{id}"
AUDIO_PATH: Final = "/v1/sessions/{id}/audio"  # WebSocket, stream/audio_ws.py
WHEP_PATH: Final = "/v1/sessions/{id}/whep"  # POST an SDP offer (the WebRTC module serves it)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    sessions: SessionLimits = field(default_factory=SessionLimits)
    token: str | None = None  # bearer token every call must carry (env LIVEHUMAN_TOKEN)
    max_upload_bytes: int = 16 * 1024 * 1024  # one portrait (or video) upload
    max_message_bytes: int = 64 * 1024  # one WebSocket message: 2 s of 16 kHz PCM16
    max_audio_ahead_s: float = 120.0  # how far pushed speech may run ahead of playback
    # ICE: host candidates are offered, and remote ones accepted, only on these addresses;
    # STUN/TURN servers only when configured (aiortc's default would contact a public one).
    ice_hosts: tuple[str, ...] = ("127.0.0.1",)
    ice_servers: tuple[str, ...] = ()
    # Draw each frame's index in a corner and mark the audio, so a client can tie every frame to
    # the audio that drove it (the latency benchmarks).
    bench_stamp: bool = False
    # What ``--preset`` named (the shipped model, a preset or a directory): what /v1/health reports,
    # since the model's own config only knows its architecture ("tiny" for every shipped model).
    model: str = "default"

    @property
    def max_json_bytes(self) -> int:
        """A JSON create carries the portrait or video in base64: 4/3 of the upload, plus the rest."""
        return self.max_upload_bytes * 4 // 3 + 64 * 1024


MANAGER_KEY: Final = web.AppKey("manager", SessionManager)
CONFIG_KEY: Final = web.AppKey("config", ServerConfig)


class ApiError(Exception):
    """An error the client caused or must act on, answered as ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def json_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def build_app(
    config: ServerConfig,
    backend: Backend,
    *,
    routes: Sequence[str | Setup] = ROUTE_MODULES,
    idle_clock: Clock | None = None,
    model_config: ModelConfig | None = None,
) -> web.Application:
    """The whole server for one loaded model. ``idle_clock`` measures session idle time only
    (tests pass a virtual one); sessions always run on the monotonic clock. ``model_config``
    replaces the backend's config for new sessions (scheduler options given on the command line)."""
    app = web.Application(
        middlewares=[_cors, _errors, _auth_middleware(config.token)], client_max_size=config.max_json_bytes
    )
    manager = SessionManager(backend, config.sessions, clock=idle_clock, config=model_config)
    if config.bench_stamp:
        check_geometry(backend.config.height, backend.config.width)
        manager.frame_hooks.append(stamp_frame)
    app[CONFIG_KEY] = config
    app[MANAGER_KEY] = manager

    async def start_manager(_: web.Application) -> None:
        await manager.start()

    async def close_manager(_: web.Application) -> None:
        # On shutdown, before open WebSockets are waited for: closing the sessions ends them.
        await manager.aclose()

    app.on_startup.append(start_manager)
    app.on_shutdown.append(close_manager)
    app.on_cleanup.append(close_manager)
    for route in routes:
        setup = importlib.import_module(route).setup if isinstance(route, str) else route
        setup(app)
    return app


# --- middlewares ---------------------------------------------------------------------------------------
_CORS_HEADERS: Final = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Location, Retry-After, ETag, Link",
}


@web.middleware
async def _cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Any origin may call (auth is a bearer token, never a cookie); preflights never need auth."""
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        return web.Response(
            status=204,
            headers={
                **_CORS_HEADERS,
                "Access-Control-Allow-Methods": "GET, POST, PATCH, DELETE, OPTIONS",
                "Access-Control-Allow-Headers": request.headers.get(
                    "Access-Control-Request-Headers", "Authorization, Content-Type"
                ),
                "Access-Control-Max-Age": "600",
            },
        )
    response = await handler(request)
    if not response.prepared:  # a WebSocket has sent its headers already
        response.headers.update(_CORS_HEADERS)
    return response


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes ``{"error": "..."}``; an unexpected one is logged and is a 500."""
    try:
        return await handler(request)
    except ApiError as exc:
        return json_error(exc.status, exc.message, exc.headers)
    except SessionNotFound as exc:
        return json_error(404, str(exc))
    except AtCapacity as exc:
        return json_error(503, str(exc), {"Retry-After": str(exc.retry_after_s)})
    except ManagerClosed as exc:
        return json_error(503, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # aiohttp's own texts are "404: Not Found" for routing, a sentence for body limits.
        default = not exc.text or exc.text.startswith(f"{exc.status}:")
        message = f"{exc.reason}: {request.method} {request.path}" if default else exc.text
        return json_error(exc.status, message, {k: v for k, v in exc.headers.items() if k == "Allow"})
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return json_error(500, "internal server error")


def _auth_middleware(token: str | None) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token is not None and not _authorized(request, token):
            raise ApiError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return auth


def _authorized(request: web.Request, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        # Browsers cannot set headers on a WebSocket; a query token stays off every other route,
        # where it would end up in logs and histories.
        websocket = request.headers.get("Upgrade", "").lower() == "websocket"
        given = request.query.get("token", "") if websocket else ""
    return hmac.compare_digest(given.strip().encode(), token.encode())
