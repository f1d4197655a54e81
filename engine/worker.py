"""Runs one session's scheduler on its own thread and serves its frames to an event loop.

No backend call ever runs on the event loop: the thread does ``work()``, the loop only takes
finished frames under a short lock. A failure on the thread is logged and re-raised to the
consumer instead of vanishing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator

from engine.scheduler import OutputFrame, Scheduler

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.05  # upper bound on a worker's sleep, so stop() is noticed promptly


class SchedulerWorker:
    def __init__(self, scheduler: Scheduler, name: str = "scheduler") -> None:
        self.scheduler = scheduler
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{name}-worker", daemon=True)
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._progress: asyncio.Event | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._progress = asyncio.Event()
        self._thread.start()

    def _run(self) -> None:
        scheduler = self.scheduler
        try:
            while not self._stop.is_set():
                if scheduler.work():
                    self._signal()
                    continue
                if not scheduler.live and scheduler.done:
                    break
                timeout = IDLE_POLL_S
                deadline = scheduler.next_deadline()
                if deadline is not None and scheduler.clock is not None:
                    timeout = min(max(deadline - scheduler.clock.now(), 0.0), IDLE_POLL_S)
                scheduler.wait_for_work(timeout)
        except Exception as exc:  # surfaced to the consumer by frames()
            log.exception("scheduler worker failed")
            self._error = exc
        finally:
            self._signal()

    def _signal(self) -> None:
        if self._loop is not None and self._progress is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._progress.set)

    async def frames(self) -> AsyncIterator[OutputFrame]:
        """Frames in order: offline as soon as they exist, live when the session clock is there."""
        assert self._progress is not None, "start() first"
        scheduler = self.scheduler
        while True:
            for frame in scheduler.release():
                yield frame
            if self._error is not None:
                raise RuntimeError("scheduler worker failed") from self._error
            if not scheduler.live and scheduler.done:
                return
            if self._stop.is_set():
                return
            if scheduler.live and scheduler.clock is not None:
                await asyncio.sleep(max(scheduler.next_release_time() - scheduler.clock.now(), 0.0))
            else:
                await self._progress.wait()
                self._progress.clear()

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread; safe to call twice."""
        self._stop.set()
        self.scheduler.notify()
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, timeout)
            if self._thread.is_alive():
                log.error("scheduler worker did not stop within %.1f s", timeout)
