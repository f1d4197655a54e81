"""The demo page at ``/``: static files only, no build step."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).resolve().parent / "static"
PORTRAIT = Path(__file__).resolve().parents[1] / "engine" / "assets" / "portrait.png"


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def _portrait(request: web.Request) -> web.FileResponse:
    return web.FileResponse(PORTRAIT)


def setup(app: web.Application) -> None:
    """Route-module entry point (see stream/app.py)."""
    app.router.add_get("/", _index)
    app.router.add_get("/demo/portrait.png", _portrait)
    app.router.add_static("/demo/", STATIC)
