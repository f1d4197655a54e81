"""``livehuman serve`` / ``server.py`` options: the backend choice and the scheduler overrides reach
the sessions, and an impossible latency setting is one line naming the field, before any serving."""

from __future__ import annotations

import argparse

import pytest

from engine.config import ConfigError
from stream.app import MANAGER_KEY, build_app
from stream.cli import _server, add_serve_arguments


def serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(["--preset", "tiny", "--backend", "torch", *argv])


def test_the_default_backend_is_the_fastest_that_loads() -> None:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    assert parser.parse_args([]).backend == "auto"


def test_scheduler_overrides_reach_every_new_session() -> None:
    config, backend, model_config = _server(
        serve_args("--compute-budget-ms", "110", "--playout-delay-ms", "560")
    )
    assert backend.name == "torch"
    assert (model_config.scheduler.compute_budget_ms, model_config.scheduler.playout_delay_ms) == (110, 560)
    assert backend.config.scheduler.playout_delay_ms != 560, "the backend's own config is left alone"
    manager = build_app(config, backend, model_config=model_config)[MANAGER_KEY]
    assert manager.config is model_config


def test_a_playout_delay_below_the_audio_wait_is_one_line_naming_the_field() -> None:
    with pytest.raises(ConfigError, match="playout_delay_ms") as caught:
        _server(serve_args("--playout-delay-ms", "200"))
    assert "\n" not in str(caught.value)
