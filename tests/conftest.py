"""Fixtures more than one test module needs, built once per run: an ONNX export costs ~30 s of
the suite's 10-minute budget, so the export, backend and model tests share one."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.models.livehuman import LiveHumanModel
from engine.runtime.base import Backend
from engine.weights import resolve_model
from export.cache import ensure_exported
from livehuman.backends import load_backend


@pytest.fixture(scope="session")
def livehuman_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private ``$LIVEHUMAN_CACHE`` for the run: its ``engines/`` is the engine cache."""
    return tmp_path_factory.mktemp("livehuman-cache")


@pytest.fixture(scope="session")
def default_model() -> LiveHumanModel:
    """The shipped default model (the ``tiny`` preset, trained): the export and backend tests
    work on the weights users run, and share one export with the model tests."""
    return resolve_model("default")


@pytest.fixture(scope="session")
def default_export(default_model: LiveHumanModel, livehuman_cache: Path) -> Path:
    """The default model built through the engine cache, as a server start would: the CPU
    default (int8 DiT, everything else float32, default opset). Tests that damage it work on a
    copy or put it back."""
    return ensure_exported(default_model, precision="int8", cache_dir=livehuman_cache / "engines")


@pytest.fixture(scope="session")
def default_backend(default_model: LiveHumanModel, default_export: Path, livehuman_cache: Path) -> Backend:
    """The shipped default model on the CPU's default backend (onnx, int8 DiT), as `make run`
    serves it, from the run's one export (``default_export``): it renders about 40% faster than torch."""
    return load_backend("onnx", default_model, threads=2, cache_dir=livehuman_cache / "engines")
