"""The JSON session API under ``/v1`` (described in ``openapi.json``) and ``/metrics``.

Requests are checked field by field before anything runs, so a bad one gets a 4xx naming the
field and never reaches a session. Options the loaded model does not declare in
``config.capabilities`` are refused with 422 rather than silently ignored: a client asking for a
camera move must learn it will not get one.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import math
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from aiohttp import BodyPartReader, web

from engine.config import FPS, Capabilities, ConfigError, ModelConfig
from engine.media import MediaError
from engine.models.camera import CameraMove, parse_camera
from engine.prompt import check_prompt
from stream.app import AUDIO_PATH, CONFIG_KEY, MANAGER_KEY, SESSION_PATH, WHEP_PATH, ApiError
from stream.session import Session, SessionOptions
from stream.sessions import SessionManager, SessionNotFound

log = logging.getLogger(__name__)

OPENAPI_PATH: Final = Path(__file__).with_name("openapi.json")
MAX_TEXT_FIELD_BYTES: Final = 16 * 1024
MAX_SEED: Final = 2**63 - 1
FILE_FIELDS: Final = ("image", "video")
TEXT_FIELDS: Final = ("prompt", "camera", "seed", "source")
# Options a session can be given when the model supports them; the rest are refused until wired.
CREATE_WIRED: Final = frozenset({"prompt", "camera", "video"})
UPDATE_WIRED: Final = frozenset({"prompt", "camera"})


def setup(app: web.Application) -> None:
    openapi = json.loads(OPENAPI_PATH.read_text())

    async def openapi_document(_: web.Request) -> web.Response:
        return web.json_response(openapi)

    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/openapi.json", openapi_document)
    app.router.add_post("/v1/sessions", create_session)
    app.router.add_get(SESSION_PATH, get_session)
    app.router.add_patch(SESSION_PATH, update_session)
    app.router.add_delete(SESSION_PATH, delete_session)
    app.router.add_post(SESSION_PATH + "/interrupt", interrupt_session)
    app.router.add_get("/metrics", metrics)


# --- handlers ------------------------------------------------------------------------------------------
async def health(request: web.Request) -> web.Response:
    manager = request.app[MANAGER_KEY]
    config = manager.config
    return web.json_response(
        {
            "status": "ok",
            "model": request.app[CONFIG_KEY].model,
            "architecture": config.name,
            "width": config.width,
            "height": config.height,
            "fps": FPS,
            "capabilities": dataclasses.asdict(config.capabilities),
            "sessions": len(manager),
            "max_sessions": manager.limits.max_sessions,
        }
    )


@dataclass(frozen=True)
class CreateRequest:
    """A parsed create: exactly one of ``image`` (a portrait), ``video`` (to re-dub) and ``source``
    (a video given to ``/v1/sources`` before) is set."""

    image: bytes | None
    video: bytes | None = None
    source: str | None = None
    prompt: str = ""
    camera: object | None = None
    seed: int = 0


async def create_session(request: web.Request) -> web.Response:
    manager = request.app[MANAGER_KEY]
    content_type = request.content_type
    if content_type == "multipart/form-data":
        body = await _read_form(request, manager.config.capabilities)
    elif content_type == "application/json":
        body = _parse_create_json(
            await _read_json(request), manager.config.capabilities, request.app[CONFIG_KEY].max_upload_bytes
        )
    else:
        raise ApiError(
            415, f"body: Content-Type must be multipart/form-data or application/json, not {content_type}"
        )
    asked = {"prompt": bool(body.prompt), "camera": body.camera is not None}
    _require_supported(manager.config.capabilities, asked, CREATE_WIRED)
    _check_prompt(manager.config, body.prompt)
    options = SessionOptions(prompt=body.prompt, seed=body.seed, camera=_camera(body.camera))
    try:
        session = await manager.create(body.image, options, video=body.video, source=body.source)
    except MediaError as exc:
        raise ApiError(400, f"{'image' if body.video is None else 'video'}: {exc}") from exc
    except ConfigError as exc:  # a video the model cannot re-dub or the loop cannot hold; names ``video``
        raise ApiError(422, str(exc)) from exc
    path = SESSION_PATH.format(id=session.id)
    return web.json_response(_view(manager, session), status=201, headers={"Location": path})


async def get_session(request: web.Request) -> web.Response:
    manager = request.app[MANAGER_KEY]
    return web.json_response(_view(manager, manager.get(request.match_info["id"])))


async def update_session(request: web.Request) -> web.Response:
    manager = request.app[MANAGER_KEY]
    session = manager.get(request.match_info["id"])
    data = await _read_json(request)
    _reject_unknown(data, ("prompt", "camera"))
    prompt = _optional_str(data, "prompt")
    asked = {
        "prompt": prompt is not None and prompt != session.options.prompt,
        "camera": data.get("camera") is not None,
    }
    _require_supported(manager.config.capabilities, asked, UPDATE_WIRED)
    if asked["prompt"]:
        _check_prompt(manager.config, prompt)
    camera = _camera(data["camera"]) if asked["camera"] else None  # validated before anything changes
    if asked["prompt"]:
        await session.set_prompt(prompt)
    if camera is not None:
        session.set_camera(camera)
    manager.touch(session.id)
    return web.json_response(_view(manager, session))


async def delete_session(request: web.Request) -> web.Response:
    session_id = request.match_info["id"]
    if not await request.app[MANAGER_KEY].close(session_id):
        raise SessionNotFound(session_id)
    return web.Response(status=204)


async def interrupt_session(request: web.Request) -> web.Response:
    manager = request.app[MANAGER_KEY]
    session = manager.get(request.match_info["id"])
    session.interrupt()
    manager.touch(session.id)
    return web.Response(status=204)


def _view(manager: SessionManager, session: Session) -> dict[str, Any]:
    return {
        "id": session.id,
        "whep_url": WHEP_PATH.format(id=session.id),
        "audio_url": AUDIO_PATH.format(id=session.id),
        "width": session.width,
        "height": session.height,
        "fps": FPS,
        "prompt": session.options.prompt,
        "camera": str(session.options.camera),
        "source": session.source,
        "seed": session.options.seed,
        "idle_s": round(manager.idle_seconds(session.id), 3),
        "stats": session.stats(),
    }


# --- request parsing -----------------------------------------------------------------------------------
async def _read_json(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object; over the app's ``client_max_size`` it is a 413."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise ApiError(413, f"body: larger than the {request.client_max_size}-byte limit") from exc
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"body: malformed JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ApiError(400, "body: expected a JSON object")
    return data


def _parse_create_json(data: dict[str, Any], capabilities: Capabilities, max_upload: int) -> CreateRequest:
    _reject_unknown(data, ("image_b64", "video_b64", "source", "prompt", "camera", "seed"))
    _require_supported(capabilities, {"video": "video_b64" in data or "source" in data}, CREATE_WIRED)
    _one_picture(("image_b64", "video_b64", "source"), data)
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ApiError(400, "seed: expected an integer")
    return CreateRequest(
        image=_base64_field(data, "image_b64", max_upload) if "image_b64" in data else None,
        video=_base64_field(data, "video_b64", max_upload) if "video_b64" in data else None,
        source=_optional_str(data, "source"),
        prompt=_optional_str(data, "prompt") or "",
        camera=data.get("camera"),
        seed=_check_seed(seed),
    )


async def _read_form(request: web.Request, capabilities: Capabilities) -> CreateRequest:
    """Stream the multipart parts, counting bytes per field so that the error names the field and
    an oversize upload is cut off instead of buffered whole."""
    max_upload = request.app[CONFIG_KEY].max_upload_bytes
    fields: dict[str, bytes] = {}
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise ApiError(400, "body: nested multipart is not accepted")
            name = part.name or ""
            if name not in FILE_FIELDS + TEXT_FIELDS:
                raise ApiError(400, f"{name or 'unnamed part'}: unknown form field")
            _require_supported(capabilities, {"video": name in ("video", "source")}, CREATE_WIRED)
            limit = max_upload if name in FILE_FIELDS else MAX_TEXT_FIELD_BYTES
            fields[name] = await read_limited(part.read_chunk, name, limit)
    except ValueError as exc:  # aiohttp's multipart parser reports a malformed body so
        raise ApiError(400, f"body: malformed multipart ({exc})") from exc
    text = {name: _decode_text(fields[name], name) for name in TEXT_FIELDS if name in fields}
    _one_picture(("image", "video", "source"), {k: v for k, v in fields.items() if v})
    seed = text.get("seed", "").strip()
    try:
        seed_value = int(seed) if seed else 0
    except ValueError as exc:
        raise ApiError(400, f"seed: expected an integer, got {seed[:32]!r}") from exc
    return CreateRequest(
        image=fields.get("image"),
        video=fields.get("video"),
        source=text.get("source"),
        prompt=text.get("prompt", ""),
        camera=text.get("camera") or None,
        seed=_check_seed(seed_value),
    )


async def read_limited(read: Callable[[int], Awaitable[bytes]], name: str, limit: int) -> bytes:
    """Read an upload in chunks (``read(n)`` gives b"" at its end), cut off past ``limit`` bytes
    with a 413 naming ``name`` rather than buffered whole."""
    data = bytearray()
    while chunk := await read(64 * 1024):
        data += chunk
        if len(data) > limit:
            raise ApiError(413, f"{name}: larger than the {limit}-byte limit")
    return bytes(data)


def _decode_text(raw: bytes, name: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"{name}: not UTF-8 text") from exc


def _base64_field(data: dict[str, Any], name: str, limit: int) -> bytes:
    value = data[name]
    if not isinstance(value, str):
        raise ApiError(400, f"{name}: expected a base64 string")
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, f"{name}: not valid base64") from exc
    if not decoded:
        raise ApiError(400, f"{name}: empty")
    if len(decoded) > limit:
        raise ApiError(413, f"{name}: larger than the {limit}-byte limit")
    return decoded


def _one_picture(names: tuple[str, str, str], fields: dict[str, Any]) -> None:
    """What the avatar shows: a portrait, a video to re-dub, or a source made from one earlier
    (``names`` says what the request format calls those three)."""
    given = [name for name in names if name in fields]
    if len(given) > 1:
        raise ApiError(400, f"{', '.join(given)}: give one, a portrait or a video to re-dub, not both")
    if not given:
        raise ApiError(400, f"{names[0]}: required (a portrait; to re-dub a video, {names[1]} or {names[2]})")


def _optional_str(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise ApiError(400, f"{name}: expected a string")
    if value is not None and len(value.encode()) > MAX_TEXT_FIELD_BYTES:
        raise ApiError(413, f"{name}: longer than {MAX_TEXT_FIELD_BYTES} bytes")
    return value


def _check_seed(seed: int) -> int:
    if not 0 <= seed <= MAX_SEED:
        raise ApiError(400, f"seed: must be in [0, 2**63 - 1], got {seed}")
    return seed


def _reject_unknown(data: dict[str, Any], known: tuple[str, ...]) -> None:
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ApiError(400, f"{unknown[0]}: unknown field (expected one of {', '.join(known)})")


def _camera(value: object) -> CameraMove:
    """``PRESET[:INTENSITY][+PRESET:INTENSITY]``; anything else is a 422 naming the valid presets."""
    if value is None:
        return CameraMove()
    if not isinstance(value, str):
        raise ApiError(
            422, f"camera: expected a string such as 'push_in:50+handheld:20', got {type(value).__name__}"
        )
    try:
        return parse_camera(value)
    except ConfigError as exc:
        raise ApiError(422, str(exc)) from exc


def _check_prompt(config: ModelConfig, prompt: str) -> None:
    try:
        check_prompt(config, prompt)
    except ConfigError as exc:
        raise ApiError(422, str(exc)) from exc


# Where a refused option is available instead, said in the refusal.
_ALTERNATIVES: Final = {"prompt": " (the shipped model with prompt control is --preset default-prompt)"}


def _require_supported(capabilities: Capabilities, asked: dict[str, bool], wired: frozenset[str]) -> None:
    for name, requested in asked.items():
        if not requested:
            continue
        if not getattr(capabilities, name):
            raise ApiError(422, f"{name}: not supported by this model{_ALTERNATIVES.get(name, '')}")
        if name not in wired:
            raise ApiError(422, f"{name}: supported by the model but not by this server yet")


# --- metrics -----------------------------------------------------------------------------------------
async def metrics(request: web.Request) -> web.Response:
    manager = request.app[MANAGER_KEY]
    manager.collect()
    body = "".join(line + "\n" for line in _metric_lines(manager))
    return web.Response(body=body.encode(), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})


PROMETHEUS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
# name, type, help, key in Session.stats() (None: the fps meter)
_SESSION_METRICS: Final = (
    ("livehuman_session_fps", "gauge", "Fresh (not repeated) frames per second over the last 2 s.", None),
    ("livehuman_session_frames_total", "counter", "Frames released to outputs.", "frames"),
    ("livehuman_session_repeated_frames_total", "counter", "Frames repeated: the next was late.", "repeated"),
    ("livehuman_session_late_frames_total", "counter", "Frames generated too late to be shown.", "dropped"),
    ("livehuman_session_windows_total", "counter", "Windows generated.", "windows"),
    (
        "livehuman_session_silence_inserted_seconds_total",
        "counter",
        "Silence inserted at missed audio deadlines.",
        "silence_inserted_s",
    ),
    ("livehuman_session_queue_depth", "gauge", "Frames waiting in the fullest output queue.", "queue_depth"),
    ("livehuman_session_viewers", "gauge", "Subscribed outputs (WebRTC viewers, RTMP).", "subscribers"),
)


def _metric_lines(manager: SessionManager) -> Iterator[str]:
    yield from _header("livehuman_sessions", "gauge", "Live sessions.")
    yield f"livehuman_sessions {len(manager)}"
    yield from _header("livehuman_sessions_max", "gauge", "The session cap.")
    yield f"livehuman_sessions_max {manager.limits.max_sessions}"
    yield from _header("livehuman_sessions_created_total", "counter", "Sessions created.")
    yield f"livehuman_sessions_created_total {manager.created_total}"
    yield from _header("livehuman_sessions_rejected_total", "counter", "Creates refused at capacity.")
    yield f"livehuman_sessions_rejected_total {manager.rejected_total}"
    stats = {session.id: session.stats() for session in manager.sessions}
    for name, kind, text, key in _SESSION_METRICS:
        yield from _header(name, kind, text)
        for session_id, values in stats.items():
            value = manager.fps(session_id) if key is None else values[key]
            yield f'{name}{{session="{_escape(session_id)}"}} {_number(value)}'
    name = "livehuman_stage_latency_seconds"
    yield from _header(name, "histogram", "Compute per window and stage (audio, dit, decode, ...).")
    for stage, histogram in sorted(manager.stage_latency.items()):
        label = f'stage="{_escape(stage)}"'
        for bound, count in histogram.cumulative():
            yield f'{name}_bucket{{{label},le="{_number(bound)}"}} {count}'
        yield f"{name}_sum{{{label}}} {_number(histogram.sum)}"
        yield f"{name}_count{{{label}}} {histogram.count}"


def _header(name: str, kind: str, text: str) -> Iterator[str]:
    yield f"# HELP {name} {text}"
    yield f"# TYPE {name} {kind}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)
