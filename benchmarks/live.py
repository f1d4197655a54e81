"""The client side of the live benchmarks: a bench server in a child process, and sessions driven
the way an agent drives them (speech over the WebSocket in 20 ms packets, video over WHEP).

The server runs in its own process so the client's RTP handling and decoding never share a GIL
with the scheduler it measures; both read the same system-wide monotonic clock. Everything is on
127.0.0.1, and the WHEP client never contacts a STUN server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from benchmarks.harness import PACKET, RATE, REPO, BenchOptions
from stream.whep_client import WhepClient

log = logging.getLogger("bench.live")

HOST = "127.0.0.1"
READY_TIMEOUT_S = 120.0


class BenchServer:
    """``async with BenchServer(...) as server``: ``benchmarks.server`` on 127.0.0.1 in a child
    process; ``server.base`` is its URL, ``server.info`` its backend and config."""

    def __init__(
        self,
        preset: str = "tiny",
        backend: str = "torch",
        *,
        threads: int | None = None,
        playout_delay_ms: int | None = None,
        compute_budget_ms: int | None = None,
        fallback_steps: tuple[int, ...] = (),
        max_sessions: int = 4,
    ) -> None:
        self.args = ["--preset", preset, "--backend", backend, "--max-sessions", str(max_sessions)]
        if threads is not None:
            self.args += ["--threads", str(threads)]
        if playout_delay_ms is not None:
            self.args += ["--playout-delay-ms", str(playout_delay_ms)]
        if compute_budget_ms is not None:
            self.args += ["--compute-budget-ms", str(compute_budget_ms)]
        self.args += ["--fallback-steps", *map(str, fallback_steps)]
        self.process: subprocess.Popen[str] | None = None
        self.keep_log = False  # set when something went wrong: the log stays for reading
        self.base = ""
        self.info: dict[str, Any] = {}
        # The server's log outlives the run, so a failure can be read after it (the path is reported).
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            "w+", prefix="bench-server-", suffix=".log", delete=False
        )

    @classmethod
    def for_bench(cls, options: BenchOptions, max_sessions: int) -> BenchServer:
        """The server a live suite measures: its model, backend and threads, and the latency
        settings given on its command line (``extra``; absent ones are the model's)."""
        return cls(
            options.preset,
            options.backend,
            threads=options.threads,
            playout_delay_ms=options.extra.get("playout_delay_ms"),
            compute_budget_ms=options.extra.get("compute_budget_ms"),
            fallback_steps=tuple(options.extra.get("fallback_steps") or ()),
            max_sessions=max_sessions,
        )

    @property
    def log_path(self) -> str:
        return self._log.name

    async def __aenter__(self) -> BenchServer:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.server", *self.args],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        try:
            line = await asyncio.wait_for(asyncio.to_thread(self.process.stdout.readline), READY_TIMEOUT_S)
        except TimeoutError:
            self.keep_log = True
            await self.stop()
            raise RuntimeError(
                f"bench server not ready in {READY_TIMEOUT_S:.0f} s; log: {self.log_path}"
            ) from None
        if not line:
            self.keep_log = True
            await self.stop()
            raise RuntimeError(f"bench server exited ({self.log_path}): {self.tail_log()}")
        self.info = json.loads(line)
        self.base = f"http://{HOST}:{self.info['port']}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Close its stdin (it shuts down cleanly), then terminate, then kill: ours only, by pid."""
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(OSError):
            process.stdin.close()
        for action in (None, process.terminate, process.kill):
            if action is not None:
                action()
            try:
                await asyncio.to_thread(process.wait, 10.0)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(OSError):
            process.stdout.close()
        self._log.close()
        if process.returncode not in (0, -signal.SIGTERM) or self.keep_log:
            log.warning("bench server log kept: %s", self.log_path)
        else:
            Path(self.log_path).unlink(missing_ok=True)

    def tail_log(self, lines: int = 20) -> str:
        with contextlib.suppress(ValueError):  # already closed
            self._log.flush()
        return "\n".join(Path(self.log_path).read_text().splitlines()[-lines:])

    async def probe(self, http: aiohttp.ClientSession, session_id: str | None = None) -> dict[str, Any]:
        params = {"session": session_id} if session_id else {}
        async with http.get(f"{self.base}/bench/probe", params=params) as response:
            response.raise_for_status()
            return await response.json()

    async def set_scheduler(self, http: aiohttp.ClientSession, **changes: Any) -> dict[str, Any]:
        """Change the scheduler config of sessions created from now on."""
        async with http.post(f"{self.base}/bench/config", json=changes) as response:
            if response.status != 200:
                raise RuntimeError(f"bench config refused: {response.status} {await response.text()}")
            return await response.json()


@dataclass
class Utterance:
    kind: str  # "realtime", "burst" or "interrupt"
    speed: float  # 1.0 = real time
    pushed_at: list[float] = field(default_factory=list)  # client send time of each packet
    interrupted_at: float | None = None

    @property
    def seconds(self) -> float:
        return len(self.pushed_at) * PACKET / RATE


@dataclass
class Open:
    """How long opening a session took, in stages (monotonic times)."""

    started: float
    created: float
    answered: float
    first_frame: float | None

    def record(self) -> dict[str, float | None]:
        ms = lambda a, b: None if a is None or b is None else (a - b) * 1000.0  # noqa: E731
        return {
            "create_ms": ms(self.created, self.started),
            "whep_ms": ms(self.answered, self.created),
            "first_frame_after_whep_ms": ms(self.first_frame, self.answered),
            "ttff_ms": ms(self.first_frame, self.started),
        }


class LiveSession:
    """One session driven as an agent drives it, with one recording viewer (more on request)."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.base = base
        self.id = ""
        self.viewer = WhepClient(ice_hosts=(HOST,), keep_images=True)
        self.viewers: list[WhepClient] = [self.viewer]
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.events: list[dict[str, Any]] = []
        self.utterances: list[Utterance] = []
        self.opened: Open | None = None
        self._reader: asyncio.Task[None] | None = None
        self._urls: dict[str, str] = {}

    async def open(self, first_frame_timeout_s: float = 30.0) -> Open:
        """Create the session, connect the viewer, wait for its first decoded frame."""
        started = time.monotonic()
        portrait = (REPO / "engine" / "assets" / "portrait.png").read_bytes()
        form = aiohttp.FormData()
        form.add_field("image", portrait, filename="portrait.png", content_type="image/png")
        async with self.http.post(f"{self.base}/v1/sessions", data=form) as response:
            if response.status != 201:
                raise RuntimeError(f"create refused: {response.status} {await response.text()}")
            self._urls = await response.json()
        self.id = self._urls["id"]
        created = time.monotonic()
        await self.viewer.connect(self.http, f"{self.base}{self._urls['whep_url']}")
        answered = time.monotonic()
        deadline = answered + first_frame_timeout_s
        while not self.viewer.video and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        first = self.viewer.video[0].received_at if self.viewer.video else None
        self.opened = Open(started, created, answered, first)
        return self.opened

    async def add_viewer(self) -> WhepClient:
        viewer = WhepClient(ice_hosts=(HOST,), keep_images=False)
        self.viewers.append(viewer)
        await viewer.connect(self.http, f"{self.base}{self._urls['whep_url']}")
        return viewer

    async def connect_audio(self) -> None:
        self.ws = await self.http.ws_connect(f"{self.base}{self._urls['audio_url']}")
        self._reader = asyncio.create_task(self._read_events(), name=f"bench-events-{self.id}")

    async def _read_events(self) -> None:
        assert self.ws is not None
        async for message in self.ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                self.events.append({**message.json(), "received_at": time.monotonic()})

    def finished(self) -> int:
        return sum(1 for e in self.events if e.get("type") == "playback_finished")

    async def speak(
        self,
        samples: np.ndarray,
        *,
        speed: float = 1.0,
        kind: str = "realtime",
        stop: asyncio.Event | None = None,
        progress: Any = None,
    ) -> Utterance:
        """Push one utterance in 20 ms PCM16 packets, paced at ``speed`` x real time from one start
        time (so sleep overshoot never accumulates), recording when each packet went out."""
        assert self.ws is not None, "connect_audio() first"
        utterance = Utterance(kind, speed)
        self.utterances.append(utterance)
        pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
        loop = asyncio.get_running_loop()
        start = loop.time()
        interval = PACKET / RATE / speed
        for k, offset in enumerate(range(0, len(pcm), PACKET)):
            await asyncio.sleep(max(start + k * interval - loop.time(), 0.0))
            if stop is not None and stop.is_set():
                break
            utterance.pushed_at.append(time.monotonic())
            await self.ws.send_bytes(pcm[offset : offset + PACKET].tobytes())
            if progress is not None and k % 50 == 49:
                progress.update(1.0)
        return utterance

    async def end_utterance(self) -> None:
        """Close the utterance without waiting for it to play."""
        assert self.ws is not None
        await self.ws.send_json({"type": "end_of_speech"})

    async def end_of_speech(self, timeout_s: float) -> bool:
        """Close the utterance and wait for its ``playback_finished``; False on timeout."""
        assert self.ws is not None
        expected = self.finished() + 1
        await self.ws.send_json({"type": "end_of_speech"})
        deadline = time.monotonic() + timeout_s
        while self.finished() < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.finished() >= expected

    async def interrupt(self) -> float:
        assert self.ws is not None
        at = time.monotonic()
        await self.ws.send_json({"type": "interrupt"})
        if self.utterances:
            self.utterances[-1].interrupted_at = at
        return at

    async def close(self) -> None:
        """Viewers, audio socket, then the session itself; safe to call twice."""
        for viewer in self.viewers:
            with contextlib.suppress(Exception):
                await viewer.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
            self.ws = None
        if self.id:
            with contextlib.suppress(aiohttp.ClientError):
                async with self.http.delete(f"{self.base}/v1/sessions/{self.id}"):
                    pass
