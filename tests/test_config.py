"""Configs are data: presets round-trip through JSON, and unknown keys or bad geometry are errors."""

from __future__ import annotations

import json

import pytest

from engine.config import PRESETS, ConfigError, ModelConfig, get_preset


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_round_trip_through_json(tmp_path, name: str) -> None:  # noqa: ANN001
    config = get_preset(name)
    config.save(tmp_path / "config.json")
    assert ModelConfig.load(tmp_path / "config.json") == config


def test_unknown_keys_are_an_error_naming_the_key() -> None:
    data = get_preset("tiny").to_dict()
    data["scheduler"]["windwo"] = 3
    with pytest.raises(ConfigError, match="scheduler.windwo"):
        ModelConfig.from_dict(data)


@pytest.mark.parametrize(
    "section,key,value,message",
    [
        ("scheduler", "overlap", 2, "window must be >= 2\\*overlap"),
        ("scheduler", "blend", "zigzag", "blend"),
        ("scheduler", "playout_delay_ms", 300, "playout_delay_ms"),
        ("dit", "latent_channels", 16, "latent_channels"),
    ],
)
def test_invalid_geometry_is_rejected(section: str, key: str, value: object, message: str) -> None:
    data = get_preset("tiny").to_dict()
    data[section][key] = value
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict(data)


def test_unreadable_config_file_is_a_config_error(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="config.json"):
        ModelConfig.load(path)
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(ConfigError):
        ModelConfig.load(path)


def test_unknown_preset_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match="tiny, small, wan-1.3b, wan-14b"):
        get_preset("huge")
