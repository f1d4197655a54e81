"""The JSON session API: every endpoint's happy path, its bad input and its limits.

One server per module on a loop of its own (tests drive it with ``run``); its sessions use the
fake backend, so creating one costs milliseconds. Idle time is measured on a virtual clock, so
reaping is tested without waiting for it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import io
import re
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from aiohttp import FormData, web
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from engine.clock import VirtualClock
from engine.config import Capabilities
from engine.media import read_video
from engine.redub import MAX_SECONDS, SourceVideo, mirror_loop
from engine.runtime.base import Backend
from stream.app import MANAGER_KEY, ServerConfig, build_app
from stream.session import Session, SessionOptions
from stream.sessions import ManagerClosed, SessionLimits, SessionManager
from stream.sources import SourceNotFound, SourceStore
from tests.fakes import FakeBackend, fake_config
from tests.test_cli import write_video
from tests.test_scheduler import tone

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONFIG = fake_config(playout_delay_ms=520, compute_budget_ms=100)
LIMITS = SessionLimits(max_sessions=3, idle_timeout_s=30.0, sweep_interval_s=0.01, retry_after_s=7)
MAX_UPLOAD = 64 * 1024
JSON = {"Content-Type": "application/json"}


def png_bytes(size: int = 24, colour: tuple[int, int, int] = (200, 120, 90)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


class Harness:
    """A live server on 127.0.0.1 and a client that sends the token unless told otherwise."""

    def __init__(self, backend: Backend, **server: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.idle_clock = VirtualClock()
        config = ServerConfig(sessions=LIMITS, token=TOKEN, max_upload_bytes=MAX_UPLOAD, **server)
        self.app = build_app(config, backend, idle_clock=self.idle_clock)
        self.client = TestClient(TestServer(self.app, host="127.0.0.1"), loop=self.loop, headers=AUTH)
        self.run(self.client.start_server())

    @property
    def manager(self) -> SessionManager:
        return self.app[MANAGER_KEY]

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(coro)

    async def create(self, **fields: str) -> str:
        form = FormData()
        form.add_field("image", png_bytes(), filename="portrait.png", content_type="image/png")
        for name, value in fields.items():
            form.add_field(name, value)
        response = await self.client.post("/v1/sessions", data=form)
        assert response.status == 201, await response.text()
        return (await response.json())["id"]

    def close(self) -> None:
        self.run(self.client.close())
        self.loop.close()


@pytest.fixture(scope="module")
def server() -> Harness:
    harness = Harness(FakeBackend(CONFIG), model="some/model-dir")
    yield harness
    harness.close()


@pytest.fixture(autouse=True)
def no_sessions_left(server: Harness) -> None:
    yield
    left = len(server.manager)
    server.run(server.manager.close_all())  # so that one failure does not cascade
    assert left == 0, "a test left a session open"


async def _error(response: Any, status: int) -> str:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    return (await response.json())["error"]


# --- happy paths ---------------------------------------------------------------------------------------
def test_health_and_the_openapi_document_cover_every_route(server: Harness) -> None:
    async def main() -> tuple[dict, dict]:
        health = await (await server.client.get("/v1/health")).json()
        document = await (await server.client.get("/v1/openapi.json")).json()
        return health, document

    health, document = server.run(main())
    assert health["status"] == "ok" and health["sessions"] == 0 and health["max_sessions"] == 3
    assert health["capabilities"] == {"camera": False, "prompt": False, "video": False}
    assert health["model"] == "some/model-dir" and health["architecture"] == CONFIG.name  # served, built
    assert document["openapi"].startswith("3.")
    documented = {re.sub(r"{\w+}", "{}", path): methods for path, methods in document["paths"].items()}
    for route in server.app.router.routes():
        canonical = route.resource.canonical
        if route.method in ("HEAD", "OPTIONS") or not canonical.startswith(("/v1/", "/metrics")):
            continue  # the API only: a demo page is not part of it
        path = re.sub(r"{\w+}", "{}", canonical)  # parameter names may differ
        assert route.method.lower() in documented.get(path, {}), f"{route.method} {path} undocumented"


def test_session_lifecycle_create_get_patch_interrupt_delete(server: Harness) -> None:
    async def main() -> None:
        session_id = await server.create(seed="5")
        response = await server.client.get(f"/v1/sessions/{session_id}")
        view = await response.json()
        assert view["id"] == session_id and view["seed"] == 5 and view["source"] == "portrait"
        assert view["audio_url"] == f"/v1/sessions/{session_id}/audio"
        assert view["whep_url"] == f"/v1/sessions/{session_id}/whep"
        assert (view["width"], view["height"]) == (CONFIG.width, CONFIG.height)
        for body in ({}, {"prompt": ""}, {"camera": None}):
            response = await server.client.patch(f"/v1/sessions/{session_id}", json=body)
            assert response.status == 200 and (await response.json())["id"] == session_id
        assert (await server.client.post(f"/v1/sessions/{session_id}/interrupt")).status == 204
        assert (await server.client.delete(f"/v1/sessions/{session_id}")).status == 204
        assert session_id not in server.manager
        await _error(await server.client.get(f"/v1/sessions/{session_id}"), 404)
        await _error(await server.client.delete(f"/v1/sessions/{session_id}"), 404)  # twice: 404, no harm

    server.run(main())


def test_create_answers_201_with_location_and_urls(server: Harness) -> None:
    async def main() -> None:
        image = base64.b64encode(png_bytes()).decode()
        response = await server.client.post("/v1/sessions", json={"image_b64": image, "seed": 11})
        assert response.status == 201
        body = await response.json()
        assert set(body) >= {"id", "whep_url", "audio_url"}
        assert response.headers["Location"] == f"/v1/sessions/{body['id']}"
        assert server.manager.get(body["id"]).options == SessionOptions(prompt="", seed=11)
        await server.manager.close(body["id"])

    server.run(main())


# --- bad input -----------------------------------------------------------------------------------------
def _form(image: bytes | None = b"", **fields: str | bytes) -> FormData:
    form = FormData(default_to_multipart=True)
    if image is not None:
        form.add_field("image", image or png_bytes(), filename="p.png", content_type="image/png")
    for name, value in fields.items():
        form.add_field(name, value, filename="f.bin" if isinstance(value, bytes) else None)
    return form


BAD_CREATES = [
    # (body kwargs for client.post, status, the error starts with)
    ({"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "body: malformed JSON"),
    ({"json": ["image_b64"]}, 400, "body: expected a JSON object"),
    ({"json": {}}, 400, "image_b64: required"),
    ({"json": {"image_b64": "***"}}, 400, "image_b64: not valid base64"),
    ({"json": {"image_b64": base64.b64encode(b"GIF89a-nope").decode()}}, 400, "image: image file"),
    ({"json": {"image_b64": "aGk=", "colour": "red"}}, 400, "colour: unknown field"),
    ({"json": {"image_b64": "aGk=", "seed": "1"}}, 400, "seed: expected an integer"),
    ({"json": {"image_b64": "aGk=", "seed": True}}, 400, "seed: expected an integer"),
    ({"json": {"image_b64": "aGk=", "seed": -1}}, 400, "seed: must be in"),
    ({"data": _form(image=b"this is not an image")}, 400, "image: image file"),
    ({"data": _form(image=None, prompt="")}, 400, "image: required"),
    ({"data": _form(seed="twelve")}, 400, "seed: expected an integer"),
    ({"data": _form(mood="happy")}, 400, "mood: unknown form field"),
    ({"data": b"image", "headers": {"Content-Type": "text/plain"}}, 415, "body: Content-Type"),
    ({"data": _form(image=b"\x89PNG" + bytes(MAX_UPLOAD))}, 413, "image: larger than"),
    ({"json": {"image_b64": "A" * (MAX_UPLOAD * 3)}}, 413, "body: larger than"),
    ({"json": {"image_b64": base64.b64encode(bytes(MAX_UPLOAD + 3)).decode()}}, 413, "image_b64: larger"),
    # Options the fake model does not declare: 422, and a refused video is never read.
    ({"data": _form(camera="orbit")}, 422, "camera: not supported by this model"),
    ({"data": _form(prompt="smile")}, 422, "prompt: not supported by this model"),
    ({"data": _form(video=b"\x00" * 100)}, 422, "video: not supported by this model"),
    ({"data": _form(image=None, video=b"\x00" * 100)}, 422, "video: not supported by this model"),
    ({"json": {"image_b64": "aGk=", "camera": {"preset": "orbit"}}}, 422, "camera: not supported"),
    ({"json": {"image_b64": "aGk=", "video_b64": "aGk="}}, 422, "video: not supported"),
    ({"json": {"video_b64": "aGk="}}, 422, "video: not supported by this model"),
]


@pytest.mark.parametrize("request_kwargs,status,message", BAD_CREATES)
def test_bad_creates_get_a_clear_4xx_and_create_nothing(
    server: Harness, request_kwargs: dict, status: int, message: str
) -> None:
    async def main() -> str:
        return await _error(await server.client.post("/v1/sessions", **request_kwargs), status)

    assert server.run(main()).startswith(message)
    assert len(server.manager) == 0


def test_bad_updates_and_unknown_sessions(server: Harness) -> None:
    async def main() -> None:
        session_id = await server.create()
        url = f"/v1/sessions/{session_id}"
        client = server.client
        for kwargs, status, message in [
            ({"data": b"{", "headers": JSON}, 400, "body: malformed JSON"),
            ({"json": [1]}, 400, "body: expected a JSON object"),
            ({"json": {"mood": 1}}, 400, "mood: unknown field"),
            ({"json": {"prompt": 3}}, 400, "prompt: expected a string"),
            ({"json": {"prompt": "hi"}}, 422, "prompt: not supported by this model"),
            ({"json": {"camera": "pan"}}, 422, "camera: not supported by this model"),
        ]:
            assert (await _error(await client.patch(url, **kwargs), status)).startswith(message)
        for method, path in [
            ("GET", "/v1/sessions/nope"),
            ("PATCH", "/v1/sessions/nope"),
            ("DELETE", "/v1/sessions/nope"),
            ("POST", "/v1/sessions/nope/interrupt"),
        ]:
            response = await client.request(method, path, json={})
            assert (await _error(response, 404)) == "no session 'nope'"
        assert "Not Found" in await _error(await client.get("/v1/nothing-here"), 404)
        assert (await _error(await client.put(url), 405)).startswith("Method Not Allowed")
        # The session lived through all of it.
        assert (await client.get(url)).status == 200
        await client.delete(url)

    server.run(main())


def test_the_cap_answers_503_with_retry_after(server: Harness) -> None:
    async def main() -> None:
        ids = [await server.create() for _ in range(LIMITS.max_sessions)]
        response = await server.client.post("/v1/sessions", data=_form())
        assert "slots are in use" in await _error(response, 503)
        assert response.headers["Retry-After"] == "7"
        await server.client.delete(f"/v1/sessions/{ids.pop()}")
        ids.append(await server.create())  # a freed slot is usable at once
        for session_id in ids:
            await server.client.delete(f"/v1/sessions/{session_id}")

    server.run(main())


def test_the_cap_holds_under_concurrent_creates(server: Harness) -> None:
    async def main() -> list[int]:
        posts = [server.client.post("/v1/sessions", data=_form()) for _ in range(6)]
        responses = await asyncio.gather(*posts)
        for response in responses:
            if response.status == 201:
                await server.client.delete(f"/v1/sessions/{(await response.json())['id']}")
        return sorted(r.status for r in responses)

    assert server.run(main()) == [201] * 3 + [503] * 3


def test_bearer_token_is_required_on_every_call(server: Harness) -> None:
    async def main() -> None:
        client = server.client
        for path in ("/v1/health", "/v1/openapi.json", "/metrics", "/v1/sessions/x"):
            response = await client.get(path, headers={"Authorization": ""})
            assert (await _error(response, 401)) == "missing or wrong bearer token"
            assert response.headers["WWW-Authenticate"] == "Bearer"
        for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            await _error(await client.post("/v1/sessions", data=_form(), headers=headers), 401)
        # A query token is for WebSocket upgrades only (test_audio_ws uses it).
        await _error(await client.get(f"/v1/health?token={TOKEN}", headers={"Authorization": ""}), 401)
        assert (await client.get("/v1/health")).status == 200

    server.run(main())


def test_cors_preflight_and_exposed_headers(server: Harness) -> None:
    async def main() -> None:
        client = server.client
        preflight = await client.options(
            "/v1/sessions",
            headers={
                "Authorization": "",  # browsers send no credentials on a preflight
                "Origin": "https://player.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == "*"
        assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
        assert preflight.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
        response = await client.post(
            "/v1/sessions", data=_form(), headers={"Origin": "https://player.example"}
        )
        assert response.status == 201
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "Location" in response.headers["Access-Control-Expose-Headers"]
        denied = await client.get("/v1/health", headers={"Authorization": "", "Origin": "https://x.example"})
        assert denied.status == 401 and denied.headers["Access-Control-Allow-Origin"] == "*"
        await client.delete(response.headers["Location"])

    server.run(main())


# --- metrics -------------------------------------------------------------------------------------------
def _samples(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_metrics_export_fps_queue_depth_viewers_late_frames_and_stage_histograms(server: Harness) -> None:
    async def main() -> tuple[str, str, int]:
        session_id = await server.create()
        session = server.manager.get(session_id)
        subscription = session.subscribe()
        session.push_audio(tone(1.0), 16000)
        frames = 0
        async for _ in subscription:  # 1.2 s of media time
            frames += 1
            if frames == 20:
                break
        response = await server.client.get("/metrics")
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
        await server.client.delete(f"/v1/sessions/{session_id}")
        return text, session_id, frames

    text, session_id, frames = server.run(main())
    values = _samples(text)
    label = f'{{session="{session_id}"}}'
    assert values[f"livehuman_session_frames_total{label}"] >= frames
    assert 5.0 <= values[f"livehuman_session_fps{label}"] <= 26.0  # frames over a 2 s window
    assert values[f"livehuman_session_viewers{label}"] == 1
    assert f"livehuman_session_queue_depth{label}" in values
    assert f"livehuman_session_late_frames_total{label}" in values
    assert f"livehuman_session_repeated_frames_total{label}" in values
    assert values["livehuman_sessions"] == 1
    stages = set(re.findall(r'livehuman_stage_latency_seconds_count\{stage="(\w+)"\}', text))
    assert {"dit", "decode"} <= stages, stages
    for stage in stages:
        count = values[f'livehuman_stage_latency_seconds_count{{stage="{stage}"}}']
        assert values[f'livehuman_stage_latency_seconds_bucket{{stage="{stage}",le="+Inf"}}'] == count > 0


# --- idle timeout and the manager ----------------------------------------------------------------------
def test_idle_sessions_are_reaped_unless_watched(server: Harness) -> None:
    async def wait_gone(session_id: str) -> bool:
        for _ in range(200):
            if session_id not in server.manager:
                return True
            await asyncio.sleep(0.01)
        return False

    async def main() -> None:
        idle, watched = await server.create(), await server.create()
        subscription = server.manager.get(watched).subscribe()
        server.idle_clock.advance(LIMITS.idle_timeout_s - 1)
        await asyncio.sleep(0.05)  # several sweeps
        assert idle in server.manager
        server.manager.touch(idle)  # audio arrived: the countdown restarts
        server.idle_clock.advance(2)
        await asyncio.sleep(0.05)
        assert idle in server.manager
        server.idle_clock.advance(LIMITS.idle_timeout_s)
        assert await wait_gone(idle)
        assert watched in server.manager  # a viewer keeps it alive
        server.manager.get(watched).unsubscribe(subscription)
        server.idle_clock.advance(LIMITS.idle_timeout_s)
        assert await wait_gone(watched)
        await _error(await server.client.get(f"/v1/sessions/{idle}"), 404)

    server.run(main())


def test_manager_close_is_idempotent_and_closing_it_closes_everything(server: Harness) -> None:
    async def main() -> None:
        manager = SessionManager(FakeBackend(CONFIG), SessionLimits(max_sessions=2))
        await manager.start()
        portrait = np.zeros((CONFIG.height, CONFIG.width, 3), np.uint8)
        a = await manager.create(portrait)
        b = await manager.create(png_bytes())
        assert await manager.close(a.id) and not await manager.close(a.id)
        assert await manager.wait_closed(a.id) == "session closed"
        subscription = b.subscribe()
        await manager.aclose()
        await manager.aclose()
        assert len(manager) == 0
        await asyncio.wait_for(_drain(subscription), 1.0)  # ended by the close
        assert subscription.closed
        with pytest.raises(ManagerClosed):
            await manager.create(portrait)
        with pytest.raises(ValueError, match="portrait must be uint8"):
            await SessionManager(FakeBackend(CONFIG)).create(np.zeros((2, 2, 3), np.uint8))

    server.run(main())


async def _drain(subscription: Any) -> None:
    async for _ in subscription:
        pass


# --- the real tiny model -------------------------------------------------------------------------------
def test_the_tiny_model_serves_a_session_end_to_end() -> None:
    """The shipped default preset behind the real torch backend: portrait in, frames out, stage
    timings in the metrics. Random weights: the picture is not checked, the plumbing is."""
    from engine.config import get_preset
    from engine.models.livehuman import LiveHumanModel
    from engine.runtime.torch_backend import TorchBackend

    config = get_preset("tiny")
    harness = Harness(TorchBackend(LiveHumanModel.random(config)))
    portrait = Path("engine/assets/portrait.png").read_bytes()

    async def main() -> tuple[dict, str]:
        form = FormData()
        form.add_field("image", portrait, filename="portrait.png", content_type="image/png")
        response = await harness.client.post("/v1/sessions", data=form)
        assert response.status == 201, await response.text()
        view = await response.json()
        session = harness.manager.get(view["id"])
        subscription = session.subscribe()
        session.push_audio(tone(0.5), 16000)
        frames = []
        async for frame in subscription:
            frames.append(frame)
            if len(frames) == 12:
                break
        assert all(f.rgb.shape == (128, 128, 3) for f in frames)
        metrics = await (await harness.client.get("/metrics")).text()
        assert (await harness.client.delete(f"/v1/sessions/{view['id']}")).status == 204
        return view, metrics

    try:
        view, metrics = harness.run(main())
    finally:
        harness.close()
    assert (view["width"], view["height"]) == (128, 128)
    assert 'livehuman_stage_latency_seconds_count{stage="dit"}' in metrics


def test_a_camera_and_prompt_model_takes_both_at_create_and_live_and_refuses_bad_ones() -> None:
    """Camera: 422 naming the valid presets when malformed, set at create, changed live by PATCH
    (it reaches the session's scheduler). Prompt: set at create, changed live (the scheduler's
    prompt path ends at the new prompt's encoding), 422 when longer than the model reads."""
    config = dataclasses.replace(CONFIG, capabilities=Capabilities(camera=True, prompt=True))
    backend = FakeBackend(config)
    harness = Harness(backend)

    async def main() -> tuple[str, str, dict, dict, dict, str, torch.Tensor]:
        bad = await _error(await harness.client.post("/v1/sessions", data=_form(camera="orbit")), 422)
        session_id = await harness.create(camera="push_in:50", prompt="a calm presenter")
        created = await (await harness.client.get(f"/v1/sessions/{session_id}")).json()
        url = f"/v1/sessions/{session_id}"
        bad_live = await _error(await harness.client.patch(url, json={"camera": "pan_left:300"}), 422)
        changed = await (await harness.client.patch(url, json={"camera": "pan_left"})).json()
        generator = harness.manager.get(session_id).scheduler.generator
        moved = float(generator.camera.poses([10_000])[0][1])
        prompted = await (await harness.client.patch(url, json={"prompt": "smiling"})).json()
        too_long = await _error(await harness.client.patch(url, json={"prompt": "x" * 100}), 422)
        text = generator.prompt.at(10**6)  # long after the change has eased in
        await harness.client.delete(url)
        assert moved > 0.1, "the live change reached the scheduler: the scene ends moved right"
        return bad, bad_live, created, changed, prompted, too_long, text

    try:
        bad, bad_live, created, changed, prompted, too_long, text = harness.run(main())
    finally:
        harness.close()
    assert "unknown preset 'orbit'" in bad and "push_in" in bad and "\n" not in bad
    assert "outside 0-100" in bad_live
    assert created["camera"] == "push_in:50" and changed["camera"] == "pan_left:100"
    assert created["prompt"] == "a calm presenter" and prompted["prompt"] == "smiling"
    assert torch.equal(text, backend.encode_text("smiling")), "the live prompt reached the scheduler"
    assert too_long == f"prompt: 100 bytes, but this model reads at most {config.text.max_tokens}"


# --- re-dubbing a video ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def redub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Harness, bytes]]:
    """A server whose model re-dubs videos (and takes a camera), and a 1.24 s clip to give it."""
    config = dataclasses.replace(CONFIG, capabilities=Capabilities(camera=True, video=True))
    harness = Harness(FakeBackend(config))
    video = write_video(tmp_path_factory.mktemp("redub") / "host.mp4", frames=31).read_bytes()
    yield harness, video
    harness.close()


def test_a_session_from_a_video_upload_or_base64_redubs_it(redub: tuple[Harness, bytes]) -> None:
    harness, video = redub
    decoded = read_video(video, CONFIG.height, CONFIG.width, MAX_SECONDS)

    async def create(**kwargs: Any) -> tuple[dict, dict, Session]:
        response = await harness.client.post("/v1/sessions", **kwargs)
        assert response.status == 201, await response.text()
        created = await response.json()
        fetched = await (await harness.client.get(response.headers["Location"])).json()
        session = harness.manager.get(created["id"])
        await harness.manager.close(created["id"])
        return created, fetched, session

    async def main() -> list[tuple[dict, dict, Session]]:
        form = _form(image=None)
        form.add_field("video", video, filename="host.mp4", content_type="video/mp4")
        form.add_field("camera", "push_in:50")
        as_json = {"video_b64": base64.b64encode(video).decode(), "seed": 3}
        portrait = await create(data=_form())  # the same server still animates portraits
        return [await create(data=form), await create(json=as_json), portrait]

    (form, form_view, form_session), (json_, json_view, json_session), portrait = harness.run(main())
    assert form["source"] == form_view["source"] == json_["source"] == json_view["source"] == "video"
    assert form["camera"] == "push_in:50" and json_["seed"] == 3
    for session in (form_session, json_session):
        source = session.scheduler.generator.cond.source
        assert source is not None, "the session is conditioned on the video"
        assert np.array_equal(source.frames, mirror_loop(decoded))
        assert np.array_equal(session.portrait, decoded[0])
    assert portrait[0]["source"] == "portrait" and portrait[2].scheduler.generator.cond.source is None
    sources = [s.scheduler.generator.cond.source for s in (form_session, json_session)]
    assert sources[0] is sources[1], "the same video twice is encoded once"


def test_bad_videos_get_a_400_or_422_naming_the_field(redub: tuple[Harness, bytes], tmp_path: Path) -> None:
    harness, video = redub
    short = write_video(tmp_path / "short.mp4", frames=10).read_bytes()

    def form(data: bytes, image: bytes | None = None) -> FormData:
        built = _form(image=image)
        built.add_field("video", data, filename="host.mp4", content_type="video/mp4")
        return built

    cases = [
        (
            {"json": {"image_b64": base64.b64encode(png_bytes()).decode(), "video_b64": "aGk="}},
            400,
            "image_b64, video_b64: give one",
        ),
        ({"data": form(video, image=png_bytes())}, 400, "image, video: give one"),
        ({"data": form(b"this is not a video")}, 400, "video: video file '<upload of 19 bytes>': cannot be"),
        ({"json": {"video_b64": base64.b64encode(b"not a video").decode()}}, 400, "video: video file"),
        ({"json": {"video_b64": ""}}, 400, "video_b64: empty"),
        ({"data": form(bytes(MAX_UPLOAD + 1))}, 413, "video: larger than"),  # the upload limit holds
        ({"json": {"video_b64": base64.b64encode(bytes(MAX_UPLOAD + 3)).decode()}}, 413, "video_b64: larger"),
        ({"data": form(short)}, 422, "video: 0.40 s is too short to loop"),
        ({"json": {"video_b64": base64.b64encode(short).decode()}}, 422, "video: 0.40 s is too short"),
    ]

    async def main() -> list[str]:
        return [
            await _error(await harness.client.post("/v1/sessions", **kwargs), status)
            for kwargs, status, _ in cases
        ]

    created = harness.manager.created_total
    for error, (_, _, message) in zip(harness.run(main()), cases, strict=True):
        assert error.startswith(message) and "\n" not in error, error
    assert len(harness.manager) == 0 and harness.manager.created_total == created


def test_a_source_given_ahead_shows_its_progress_and_starts_sessions_without_waiting(
    redub: tuple[Harness, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """POST /v1/sources answers at once; GET follows the encoding, a session asking for the
    source before it is ready is refused saying how far it got, and once ready any number of
    sessions start from the one encoding."""
    harness, _ = redub
    video = write_video(tmp_path / "host.mp4", frames=35).read_bytes()
    gate = threading.Event()
    real_prepare = SourceVideo.prepare

    def held_prepare(backend: Backend, frames: np.ndarray, progress: Any) -> SourceVideo:
        progress(1, 4)  # as if one latent were encoded, then held there until the test lets go
        gate.wait(10)
        return real_prepare(backend, frames, progress)

    monkeypatch.setattr(SourceVideo, "prepare", held_prepare)
    upload = {"data": video, "headers": {"Content-Type": "video/mp4"}}

    async def main() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        response = await harness.client.post("/v1/sources", **upload)
        seen["first"] = (response.status, await response.json(), response.headers["Location"])
        location = seen["first"][2]
        async with asyncio.timeout(5):
            while (view := await (await harness.client.get(location)).json())["progress"]["done"] < 1:
                await asyncio.sleep(0.01)
        seen["preparing"] = view
        source_id = view["id"]
        early = await harness.client.post("/v1/sessions", json={"source": source_id})
        seen["early"] = await _error(early, 422)
        gate.set()
        async with asyncio.timeout(5):
            while (view := await (await harness.client.get(location)).json())["state"] != "ready":
                await asyncio.sleep(0.01)
        seen["ready"] = view
        again = await harness.client.post("/v1/sources", **upload)
        seen["again"] = (again.status, (await again.json())["id"])
        sessions = []
        for kwargs in (
            {"json": {"source": source_id, "seed": 2}},
            {"data": _form(image=None, source=source_id)},
        ):
            created = await harness.client.post("/v1/sessions", **kwargs)
            assert created.status == 201, await created.text()
            sessions.append(harness.manager.get((await created.json())["id"]))
        seen["sources"] = [s.scheduler.generator.cond.source for s in sessions]
        seen["job"] = harness.manager.sources.get(source_id).source
        for session in sessions:
            await harness.manager.close(session.id)
        return seen

    seen = harness.run(main())
    status, first, location = seen["first"]
    assert status == 202 and first["state"] == "preparing" and location == f"/v1/sources/{first['id']}"
    assert first["seconds"] == pytest.approx(35 / 25)
    assert seen["preparing"]["state"] == "preparing" and seen["preparing"]["progress"] == {
        "done": 1,
        "total": 4,
    }
    assert (
        seen["early"].startswith("source: ") and "not ready (still encoding, 1 of 4 latents)" in seen["early"]
    )
    ready = seen["ready"]
    assert ready["progress"]["done"] == ready["progress"]["total"] > 4  # the loop, forward and back
    assert seen["again"] == (200, first["id"]), "the same video is the same source"
    assert all(source is seen["job"] for source in seen["sources"]), "sessions share the one encoding"


def test_bad_sources_get_a_4xx_naming_the_field(
    redub: tuple[Harness, bytes], server: Harness, tmp_path: Path
) -> None:
    harness, _ = redub
    short = write_video(tmp_path / "short.mp4", frames=10).read_bytes()
    video = {"Content-Type": "video/mp4"}
    cases = [
        (
            harness,
            "post",
            "/v1/sources",
            {"data": b"abc", "headers": JSON},
            415,
            "body: Content-Type must be video/*",
        ),
        (harness, "post", "/v1/sources", {"data": b"", "headers": video}, 400, "video: empty body"),
        (
            harness,
            "post",
            "/v1/sources",
            {"data": b"not a video", "headers": video},
            400,
            "video: video file",
        ),
        (
            harness,
            "post",
            "/v1/sources",
            {"data": bytes(MAX_UPLOAD + 1), "headers": video},
            413,
            "video: larger",
        ),
        (
            harness,
            "post",
            "/v1/sources",
            {"data": short, "headers": video},
            422,
            "video: 0.40 s is too short",
        ),
        (server, "post", "/v1/sources", {"data": short, "headers": video}, 422, "video: model 'tiny' cannot"),
        (harness, "get", "/v1/sources/nope", {}, 404, "source 'nope': not found"),
        (harness, "post", "/v1/sessions", {"json": {"source": "nope"}}, 422, "source: no source 'nope' here"),
        (server, "post", "/v1/sessions", {"json": {"source": "nope"}}, 422, "video: not supported"),
        (
            harness,
            "post",
            "/v1/sessions",
            {"json": {"source": "nope", "image_b64": base64.b64encode(png_bytes()).decode()}},
            400,
            "image_b64, source: give one",
        ),
    ]

    async def call(on: Harness, method: str, path: str, kwargs: dict, status: int) -> str:
        return await _error(await getattr(on.client, method)(path, **kwargs), status)

    for on, method, path, kwargs, status, message in cases:
        error = on.run(call(on, method, path, kwargs, status))
        assert error.startswith(message) and "\n" not in error, error
    assert len(harness.manager) == 0


def test_the_store_keeps_the_sources_used_last_and_encodes_a_video_once() -> None:
    async def main() -> tuple[list[str], bool, list[str]]:
        store = SourceStore(FakeBackend(CONFIG), capacity=2)
        videos = [np.full((30, CONFIG.height, CONFIG.width, 3), level, np.uint8) for level in (10, 20, 30)]
        first = await store.ready(videos[0])
        again = await store.ready(videos[0])
        ids = [(await store.submit(video)).id for video in videos[:2]]
        await store.ready(videos[1])
        store.get(ids[0])  # a session asked for the first: it is the one used last now
        ids.append((await store.submit(videos[2])).id)
        await store.ready(videos[2])
        kept = []
        for source_id in ids:
            with contextlib.suppress(SourceNotFound):
                kept.append(store.get(source_id).id)
        return ids, again is first, kept

    ids, reused, kept = asyncio.run(main())
    assert reused, "the same video is encoded once"
    assert kept == [ids[0], ids[2]], "the second source, used least recently, made room"


def test_build_app_takes_extra_route_modules() -> None:
    """How the WebRTC and RTMP modules plug in: a ``setup(app)`` that finds the manager."""
    seen: list[SessionManager] = []

    def setup(app: web.Application) -> None:
        seen.append(app[MANAGER_KEY])

        async def count(request: web.Request) -> web.Response:
            return web.json_response({"sessions": len(request.app[MANAGER_KEY])})

        app.router.add_get("/v1/extra", count)

    app = build_app(ServerConfig(), FakeBackend(CONFIG), routes=("stream.api", setup))
    assert seen == [app[MANAGER_KEY]]
    assert {r.resource.canonical for r in app.router.routes()} >= {"/v1/extra", "/v1/sessions"}
