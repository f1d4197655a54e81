"""``/v1/sources``: give a host video ahead of the sessions that re-dub it, and follow its encoding.

Encoding a source takes about as long as the video plays on two CPU cores, so a create with the
video in it answers only when that is done; here the upload answers at once (``202`` and a
``Location``), ``GET`` shows the latents done of the total, and a session created with
``"source": id`` starts without waiting. The same video twice is one source.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from engine.config import ConfigError
from engine.media import MediaError
from engine.redub import check_video
from stream.api import read_limited
from stream.app import CONFIG_KEY, MANAGER_KEY, ApiError
from stream.sources import SourceNotFound

SOURCES_PATH: Final = "/v1/sources"
SOURCE_PATH: Final = "/v1/sources/{id}"


def setup(app: web.Application) -> None:
    app.router.add_post(SOURCES_PATH, create_source)
    app.router.add_get(SOURCE_PATH, get_source)


async def create_source(request: web.Request) -> web.Response:
    """The body is the video file itself (any ``video/*`` or ``application/octet-stream``)."""
    manager = request.app[MANAGER_KEY]
    try:
        check_video(manager.config)  # before the upload is read
    except ConfigError as exc:
        raise ApiError(422, str(exc)) from exc
    if not (request.content_type.startswith("video/") or request.content_type == "application/octet-stream"):
        raise ApiError(
            415, f"body: Content-Type must be video/* or application/octet-stream, not {request.content_type}"
        )
    limit = request.app[CONFIG_KEY].max_upload_bytes
    data = await read_limited(request.content.read, "video", limit)
    if not data:
        raise ApiError(400, "video: empty body")
    try:
        frames = await manager.decode_video(data)
    except MediaError as exc:
        raise ApiError(400, f"video: {exc}") from exc
    except ConfigError as exc:
        raise ApiError(422, str(exc)) from exc
    job = await manager.sources.submit(frames)
    status = 200 if job.state == "ready" else 202
    return web.json_response(job.view(), status=status, headers={"Location": SOURCE_PATH.format(id=job.id)})


async def get_source(request: web.Request) -> web.Response:
    source_id = request.match_info["id"]
    try:
        job = request.app[MANAGER_KEY].sources.get(source_id)
    except SourceNotFound as exc:
        raise ApiError(
            404, f"source {source_id!r}: not found (never given, or dropped for newer ones)"
        ) from exc
    return web.json_response(job.view())
