"""Fixtures more than one test module needs, built once per run: an ONNX export costs ~30 s of
the suite's 10-minute budget, so the backend and export tests share one."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import get_preset
from engine.models.livehuman import LiveHumanModel
from engine.runtime.base import Backend
from export.cache import ensure_exported
from livehuman.backends import load_backend


@pytest.fixture(scope="session")
def tiny_model() -> LiveHumanModel:
    return LiveHumanModel.random(get_preset("tiny"))


@pytest.fixture(scope="session")
def tiny_export(tiny_model: LiveHumanModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model built through the engine cache, as a server start would: the CPU default
    (int8 DiT, everything else float32, default opset). Tests that damage it work on a copy or
    put it back."""
    return ensure_exported(tiny_model, precision="int8", cache_dir=tmp_path_factory.mktemp("engines"))


@pytest.fixture(scope="session")
def livehuman_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private ``$LIVEHUMAN_CACHE`` for the run: its ``engines/`` is the engine cache."""
    return tmp_path_factory.mktemp("livehuman-cache")


@pytest.fixture(scope="session")
def default_backend(livehuman_cache: Path) -> Backend:
    """The shipped default model on the CPU's default backend (onnx, int8 DiT), as `make run`
    serves it, exported once for the run: the model tests and the 2-minute stream share the
    export, and it renders about 40% faster than torch."""
    return load_backend("onnx", "default", threads=2, cache_dir=livehuman_cache / "engines")
