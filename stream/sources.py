"""Re-dub sources, encoded once and shared: a host video takes seconds of CPU to encode (about as
long as it plays on two cores), so a server keeps it by content and reports how far it has got.

A client can hand the video over ahead of time (``POST /v1/sources``), follow the encoding
(``GET /v1/sources/{id}``: done and total latents) and then start any number of sessions from it
at once; a session created straight from a video upload goes through the same store, waits for
its encoding and reuses it next time.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np

from engine.config import FPS
from engine.redub import SourceVideo
from engine.runtime.base import Backend

log = logging.getLogger(__name__)

SOURCE_CACHE: Final = 2  # encoded re-dub sources kept for reuse, ~75 MB each at 30 s
ID_CHARS: Final = 16  # hex digits of the content hash a source is known by

SourceState = Literal["preparing", "ready", "failed"]


class SourceNotFound(LookupError):
    pass


@dataclass
class SourceJob:
    """One video's encoding: its progress while it runs, then the source (or why it failed)."""

    id: str
    seconds: float  # the video's length
    done: int = 0  # latents encoded so far (written by the encoding thread)
    total: int = 0
    source: SourceVideo | None = None
    error: str | None = None
    started: float = field(default_factory=time.monotonic)
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def state(self) -> SourceState:
        if self.source is not None:
            return "ready"
        return "failed" if self.error is not None else "preparing"

    def view(self) -> dict[str, Any]:
        """What the API shows of it."""
        view: dict[str, Any] = {
            "id": self.id,
            "state": self.state,
            "seconds": round(self.seconds, 2),
            "progress": {"done": self.done, "total": self.total},
        }
        if self.error is not None:
            view["error"] = self.error
        return view


class SourceStore:
    """Sources by content hash, at most ``capacity`` kept once ready (the oldest used go first);
    one running encoding per video however many ask for it."""

    def __init__(self, backend: Backend, capacity: int = SOURCE_CACHE) -> None:
        self.backend = backend
        self.capacity = capacity
        self._jobs: OrderedDict[str, SourceJob] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    def get(self, source_id: str) -> SourceJob:
        """The job, counted as a use: the sources asked for last are the ones kept."""
        job = self._jobs.get(source_id)
        if job is None:
            raise SourceNotFound(source_id)
        self._jobs.move_to_end(source_id)
        return job

    async def submit(self, frames: np.ndarray) -> SourceJob:
        """The job for ``frames`` ((F, H, W, 3) uint8, checked by the caller): the existing one when
        the same video came before, else a new encoding started in a worker thread."""
        # Hashing 30 s of frames takes tens of ms: off the loop, like the encoding.
        digest = await asyncio.to_thread(lambda: hashlib.sha256(frames.tobytes()).hexdigest())
        source_id = f"{digest[:ID_CHARS]}{frames.shape[0]:x}"
        job = self._jobs.get(source_id)
        if job is not None and job.state != "failed":
            self._jobs.move_to_end(source_id)
            return job
        job = SourceJob(source_id, seconds=len(frames) / FPS)
        self._jobs[source_id] = job
        task = asyncio.create_task(self._prepare(job, frames), name=f"source-{source_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def ready(self, frames: np.ndarray) -> SourceVideo:
        """The encoded source of ``frames``, waiting for its encoding; a failed one raises again."""
        job = await self.submit(frames)
        await job.finished.wait()
        if job.source is None:
            raise RuntimeError(f"video: encoding failed: {job.error}")
        return job.source

    async def _prepare(self, job: SourceJob, frames: np.ndarray) -> None:
        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total

        try:
            job.source = await asyncio.to_thread(SourceVideo.prepare, self.backend, frames, progress)
        except Exception as exc:  # a backend failure is the job's, shown to whoever asks for it
            log.exception("source %s: encoding failed", job.id)
            job.error = f"{type(exc).__name__}: {exc}"
        else:
            took = time.monotonic() - job.started
            log.info("source %s: %.1f s of video encoded in %.1f s", job.id, job.seconds, took)
        finally:
            job.finished.set()
        self._evict()

    def _evict(self) -> None:
        finished = [key for key, job in self._jobs.items() if job.state != "preparing"]
        for key in finished[: max(0, len(finished) - self.capacity)]:
            del self._jobs[key]
