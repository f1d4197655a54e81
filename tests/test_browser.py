"""A real headless Chromium opens the demo page, talks through its fake microphone and decodes video.

Runs only inside a network namespace whose only interface is loopback (``make test`` sets one
up): outside one, Chromium lists the machine's other interfaces and starts an mDNS responder.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.browser import Browser, chromium_available, loopback_only

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.skipif(not loopback_only(), reason="needs a loopback-only network namespace (make test)"),
    pytest.mark.skipif(
        not chromium_available(), reason="Chromium is not installed (apt-get install chromium)"
    ),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def speech_wav(path: Path, seconds: float = 6.0, rate: int = 48000) -> Path:
    """Syllable-like bursts of a voiced tone: clearly speech energy for the avatar to follow."""
    t = np.arange(int(seconds * rate)) / rate
    syllables = (np.sin(2 * np.pi * 3.0 * t) > 0).astype(np.float64)
    voice = 0.4 * syllables * (np.sin(2 * np.pi * 140 * t) + 0.5 * np.sin(2 * np.pi * 280 * t))
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes((np.clip(voice, -1, 1) * 32767).astype("<i2").tobytes())
    return path


@pytest.fixture()
def server():  # noqa: ANN201
    port = free_port()
    process = subprocess.Popen(
        # torch: the page is under test, not the backend, and a first onnx start exports (~40 s).
        [sys.executable, str(ROOT / "server.py"), "--port", str(port), "--ice-hosts", "127.0.0.1",
         "--backend", "torch"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail("server did not start")
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    try:
        process.wait(timeout=10)  # a stop (docker, systemd) is SIGTERM: the server must exit
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("the server did not exit within 10 s of SIGTERM")


def test_demo_page_drives_the_avatar_with_the_microphone_and_decodes_video(server, tmp_path) -> None:  # noqa: ANN001
    async def main() -> dict:
        browser = Browser(tmp_path / "profile", speech_wav(tmp_path / "mic.wav"))
        try:
            await browser.connect()
            await browser.call("Page.navigate", url=f"{server}/?autostart")
            deadline = time.monotonic() + 90
            state: dict = {}
            while time.monotonic() < deadline:
                state = await browser.evaluate(
                    "JSON.stringify({state: window.livehumanDemo && livehumanDemo.state,"
                    " stats: window.livehumanDemo && livehumanDemo.stats,"
                    " events: window.livehumanDemo && livehumanDemo.events})"
                )
                state = __import__("json").loads(state or "{}")
                stats = state.get("stats") or {}
                started = any(e.get("type") == "playback_started" for e in state.get("events") or [])
                if stats.get("framesDecoded", 0) >= 50 and started:
                    break
                await asyncio.sleep(0.5)
            return state
        finally:
            await browser.close()

    state = asyncio.run(main())
    assert state.get("state") == "live", state
    assert state["stats"]["framesDecoded"] >= 50, state
    assert any(e.get("type") == "playback_started" for e in state["events"]), "the microphone never drove it"
