"""Routes for RTMP push: ``POST``/``GET``/``DELETE /v1/sessions/{id}/rtmp``.

``POST`` takes ``{"url": "rtmp://...", "profile": {...}}`` (profile optional, keys of
``stream.rtmp.OutputProfile``) and answers ``201`` with the push's status; ``GET`` gives the status
(connected, reconnects, frames sent and dropped); ``DELETE`` stops the push, ``204``. One push per
session. A push outlives nothing: it ends with its session, and every push is stopped when the app
shuts down. Status replies never echo the stream key.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web

from stream.api import _read_json
from stream.app import MANAGER_KEY, SESSION_PATH, ApiError
from stream.rtmp import OutputProfile, RtmpPush, validate_url
from stream.session import Session

log = logging.getLogger(__name__)

RTMP_PATH: Final = SESSION_PATH + "/rtmp"
PUSHES_KEY: Final = web.AppKey("rtmp_pushes", dict[str, RtmpPush])  # by session id

SessionLookup = Callable[[str], Session | None]


def setup(app: web.Application) -> None:
    """The route-module hook of ``stream.app``: sessions come from the app's manager."""
    setup_rtmp(app, app[MANAGER_KEY].find)


def setup_rtmp(app: web.Application, get_session: SessionLookup) -> None:
    """Add the RTMP routes; ``get_session(id)`` returns the live session or None."""
    pushes: dict[str, RtmpPush] = {}
    app[PUSHES_KEY] = pushes

    def session_or_404(session_id: str) -> Session:
        session = get_session(session_id)
        if session is None:
            raise ApiError(404, f"no session {session_id!r}")
        return session

    def push_or_404(session_id: str) -> RtmpPush:
        push = pushes.get(session_id)
        if push is None:
            session_or_404(session_id)
            raise ApiError(404, f"session {session_id!r} has no rtmp push")
        return push

    async def start_push(request: web.Request) -> web.Response:
        session_id = request.match_info["id"]
        session = session_or_404(session_id)
        url, profile = _parse_push(await _read_json(request))
        previous = pushes.get(session_id)
        if previous is not None:
            if previous.status().running:
                raise ApiError(409, f"session {session_id!r} is already pushing; DELETE it first")
            await previous.stop()  # its session's frames ended it; make room for the new one
        push = RtmpPush(session, url, profile)
        pushes[session_id] = push  # before the first await: a concurrent POST now gets 409
        try:
            await push.start()
        except Exception:
            del pushes[session_id]
            await push.stop()
            raise
        headers = {"Location": RTMP_PATH.format(id=session_id)}
        return web.json_response(_view(push), status=201, headers=headers)

    async def get_push(request: web.Request) -> web.Response:
        return web.json_response(_view(push_or_404(request.match_info["id"])))

    async def stop_push(request: web.Request) -> web.Response:
        session_id = request.match_info["id"]
        push = push_or_404(session_id)
        del pushes[session_id]
        await push.stop()
        return web.Response(status=204)

    async def stop_all(_: web.Application) -> None:
        while pushes:
            _, push = pushes.popitem()
            try:
                await push.stop()
            except Exception:
                log.exception("%s: stop failed at shutdown", push.name)

    app.router.add_post(RTMP_PATH, start_push)
    app.router.add_get(RTMP_PATH, get_push)
    app.router.add_delete(RTMP_PATH, stop_push)
    app.on_shutdown.append(stop_all)


def _parse_push(data: dict[str, Any]) -> tuple[str, OutputProfile]:
    unknown = sorted(set(data) - {"url", "profile"})
    if unknown:
        raise ApiError(400, f"{unknown[0]}: unknown field (expected url, profile)")
    if "url" not in data:
        raise ApiError(400, "url: required (rtmp://host/app/key)")
    try:
        url = validate_url(data["url"])
    except ValueError as exc:
        raise ApiError(400, f"url: {exc}") from exc
    raw_profile = data.get("profile") or {}
    if not isinstance(raw_profile, dict):
        raise ApiError(400, "profile: expected a JSON object")
    try:
        profile = OutputProfile.from_dict(raw_profile)
    except (TypeError, ValueError) as exc:
        raise ApiError(400, f"profile: {exc}") from exc
    return url, profile


def _view(push: RtmpPush) -> dict[str, Any]:
    return {**push.status().as_dict(), "profile": dataclasses.asdict(push.profile)}
