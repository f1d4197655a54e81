"""The live server the e2e and scale suites measure, in a process of its own.

    python -m benchmarks.server --preset tiny --backend torch [--playout-delay-ms MS] [--compute-budget-ms MS]

It is the real app (``stream.app.build_app`` with ``bench_stamp=True``) on 127.0.0.1, plus a probe
that records, per session, what only the server knows, all on the system-wide monotonic clock the
client also reads:

- every audio push: when it arrived and where on the session timeline it was placed (new speech
  is placed at its arrival, so this is what ties a frame back to the packet that drove it);
- every frame leaving the scheduler (its presentation time) and whether it was a repeat;
- the scheduler's window records (compute per stage) and its counters;
- interrupts as they arrive; the process's CPU time (``os.times``).

``GET /bench/probe[?session=ID]`` returns them, ``POST /bench/config`` changes the scheduler
config that later sessions get (the playout delay for the calibration run). The server prints one
JSON line ``{"port": ...}`` once it listens and stops when its stdin closes or on SIGTERM.
Degradation (``fallback_steps``) is off unless asked for, so nothing absorbs a change in delay.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiohttp import web  # noqa: E402

log = logging.getLogger("bench.server")


@dataclass
class SessionTrace:
    """What the server saw of one session; times are ``time.monotonic()``."""

    created_at: float
    # (arrived_at, timeline_start, samples, segment_id) per push, in model samples (16 kHz)
    pushes: list[tuple[float, int, int, int]] = field(default_factory=list)
    # (index, presented_at, repeated, segment_id) per frame leaving the scheduler
    frames: list[tuple[int, float, bool, int | None]] = field(default_factory=list)
    interrupts: list[float] = field(default_factory=list)
    # The scheduler keeps its last 1000 window records only: they are copied here as they appear.
    windows: list[tuple[Any, ...]] = field(default_factory=list)
    last_record: Any = None


class Probe:
    def __init__(self) -> None:
        self.traces: dict[str, SessionTrace] = {}
        self.sessions: dict[str, Any] = {}

    def attach(self, session: Any) -> None:
        """Wrap a new session's push and interrupt, and hook its frames (the last hook, so it sees
        the frame as it goes out)."""
        trace = SessionTrace(created_at=time.monotonic())
        self.traces[session.id] = trace
        self.sessions[session.id] = session
        scheduler = session.scheduler
        push, interrupt = session.push_audio, session.interrupt
        # The scheduler's own lock, so the placement read is the one this push got, never one
        # moved by the worker inserting silence in between.
        lock = getattr(scheduler, "_lock", None) or contextlib.nullcontext()

        def push_audio(samples: Any, sample_rate: int) -> int:
            arrived = time.monotonic()
            with lock:
                segment = push(samples, sample_rate)
                end = scheduler.timeline.end
            n = len(samples) if sample_rate == 16_000 else -1
            trace.pushes.append((arrived, end - max(n, 0), n, segment))
            return segment

        def interrupt_now() -> None:
            trace.interrupts.append(time.monotonic())
            interrupt()

        def on_frame(frame: Any) -> Any:
            trace.frames.append((frame.index, time.monotonic(), bool(frame.repeated), frame.segment_id))
            records = scheduler.records
            if records and records[-1] is not trace.last_record:
                self._copy_records(trace, scheduler, lock)
            return frame

        session.push_audio = push_audio
        session.interrupt = interrupt_now
        session.frame_hooks.append(on_frame)

    @staticmethod
    def _copy_records(trace: SessionTrace, scheduler: Any, lock: Any) -> None:
        with lock:
            records = list(scheduler.records)
        new = []
        for record in reversed(records):
            if record is trace.last_record:
                break
            new.append(record)
        trace.windows += [
            (r.start, r.steps, r.frames, dict(r.timings_ms), r.began, r.ended) for r in reversed(new)
        ]
        trace.last_record = records[-1] if records else trace.last_record

    def report(self, session_id: str | None) -> dict[str, Any]:
        ids = [session_id] if session_id else list(self.traces)
        sessions = {}
        for sid in ids:
            trace = self.traces.get(sid)
            if trace is None:
                continue
            session = self.sessions.get(sid)
            stats = None
            if session is not None:
                scheduler = session.scheduler
                self._copy_records(
                    trace, scheduler, getattr(scheduler, "_lock", None) or contextlib.nullcontext()
                )
                stats = session.stats()
            sessions[sid] = {
                "created_at": trace.created_at,
                "pushes": trace.pushes,
                "frames": trace.frames,
                "interrupts": trace.interrupts,
                "windows": trace.windows,
                "stats": stats,
            }
        return {"pid": os.getpid(), "now": time.monotonic(), "cpu": cpu_times(), "sessions": sessions}

    def forget(self, session_id: str) -> None:
        self.sessions.pop(session_id, None)


PROBE_KEY = web.AppKey("bench_probe", Probe)


def cpu_times() -> dict[str, float]:
    """Process CPU time (``os.times``), and the part spent on scheduler worker threads (model
    compute), read per thread from /proc; the rest is delivery: event loop, encoder, network."""
    t = os.times()
    workers = 0.0
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for thread in threading.enumerate():
        if not thread.name.endswith("-worker") or thread.native_id is None:
            continue
        try:
            fields = Path(f"/proc/self/task/{thread.native_id}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        workers += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return {"user": t.user, "system": t.system, "elapsed": t.elapsed, "scheduler_workers": workers}


def probe_routes(app: web.Application) -> None:
    """A route module (see ``stream.app``): the probe and the config switch."""
    app.router.add_get("/bench/probe", _probe)
    app.router.add_post("/bench/config", _config)


async def _probe(request: web.Request) -> web.Response:
    return web.json_response(request.app[PROBE_KEY].report(request.query.get("session")))


async def _config(request: web.Request) -> web.Response:
    from engine.render import with_overrides
    from stream.app import MANAGER_KEY

    manager = request.app[MANAGER_KEY]
    changes = await request.json()
    manager.config = with_overrides(manager.config, **_scheduler_changes(changes))
    return web.json_response({"scheduler": dataclasses.asdict(manager.config.scheduler)})


def _scheduler_changes(changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(changes)
    if "fallback_steps" in out:
        out["fallback_steps"] = tuple(out["fallback_steps"])
    return out


def build(args: argparse.Namespace) -> tuple[web.Application, dict[str, Any]]:
    from benchmarks.harness import load_backend
    from engine.render import with_overrides
    from stream.app import MANAGER_KEY, ROUTE_MODULES, ServerConfig, build_app
    from stream.sessions import SessionLimits

    backend, backend_info = load_backend(args.backend, args.preset, args.threads)
    config = with_overrides(
        backend.config,
        fallback_steps=tuple(args.fallback_steps),
        playout_delay_ms=args.playout_delay_ms,
        compute_budget_ms=args.compute_budget_ms,
    )
    server_config = ServerConfig(
        host="127.0.0.1",
        port=0,
        sessions=SessionLimits(max_sessions=args.max_sessions, idle_timeout_s=3600.0),
        ice_hosts=("127.0.0.1",),
        bench_stamp=True,
    )
    app = build_app(server_config, backend, routes=(*ROUTE_MODULES, probe_routes), model_config=config)
    manager = app[MANAGER_KEY]
    probe = Probe()
    app[PROBE_KEY] = probe
    create = manager.create

    async def create_and_attach(*a: Any, **k: Any) -> Any:
        session = await create(*a, **k)
        probe.attach(session)
        return session

    manager.create = create_and_attach
    import torch

    info = {
        "backend": backend_info,
        "config": config.to_dict(),
        "torch_threads": torch.get_num_threads(),
        "pid": os.getpid(),
    }
    return app, info


async def serve(args: argparse.Namespace) -> None:
    app, info = build(args)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def watch_stdin() -> None:
        sys.stdin.read()  # returns at EOF: the client is gone or done
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, name="bench-server-stdin", daemon=True).start()
    print(json.dumps({"port": port, **info}), flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--playout-delay-ms", type=int)
    parser.add_argument("--compute-budget-ms", type=int)
    parser.add_argument("--fallback-steps", type=int, nargs="*", default=[])
    parser.add_argument("--max-sessions", type=int, default=4)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
