"""safetensors + config.json round trip, strict loading, and loading a model dir from the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.config import get_preset
from engine.models.livehuman import LiveHumanModel
from engine.weights import (
    DEFAULT_MODEL_DIR,
    SHIPPED_MODELS,
    WEIGHTS_NAME,
    WeightsError,
    load_model,
    resolve_model_dir,
    save_model,
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple:  # noqa: ANN001
    directory = tmp_path_factory.mktemp("model")
    model = LiveHumanModel.random(get_preset("tiny"), seed=3)
    save_model(model, directory)
    return model, directory


def test_round_trip_is_exact(saved) -> None:  # noqa: ANN001
    model, directory = saved
    loaded = load_model(directory)
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert json.loads((directory / "config.json").read_text())["name"] == "tiny"


def test_strict_loading_lists_missing_and_unexpected_keys(saved, tmp_path) -> None:  # noqa: ANN001
    _, directory = saved
    state = load_file(str(directory / WEIGHTS_NAME))
    state.pop("dit.head.head.weight")
    state["dit.extra.weight"] = torch.zeros(1)
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    save_file(state, str(tmp_path / WEIGHTS_NAME))
    with pytest.raises(WeightsError, match="missing dit.head.head.weight; unexpected dit.extra.weight"):
        load_model(tmp_path)


def test_truncated_weights_name_the_file(saved, tmp_path) -> None:  # noqa: ANN001
    _, directory = saved
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    (tmp_path / WEIGHTS_NAME).write_bytes((directory / WEIGHTS_NAME).read_bytes()[:1000])
    with pytest.raises(WeightsError, match=WEIGHTS_NAME):
        load_model(tmp_path)


def test_both_shipped_models_resolve_by_name_and_anything_else_is_one_line() -> None:
    assert resolve_model_dir("default") == DEFAULT_MODEL_DIR
    assert resolve_model_dir("default-prompt") == SHIPPED_MODELS["default-prompt"]
    assert load_model(resolve_model_dir("default-prompt")).config.capabilities.prompt
    with pytest.raises(WeightsError, match="^model 'nowhere': no model.safetensors there .*default-prompt"):
        resolve_model_dir("nowhere")


def test_weights_from_before_the_audio_positions_load_as_the_model_they_were(saved, tmp_path) -> None:  # noqa: ANN001
    model, directory = saved
    state = load_file(str(directory / WEIGHTS_NAME))
    assert not state.pop("dit.audio_position").any()  # a fresh model's positions start at zero
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    save_file(state, str(tmp_path / WEIGHTS_NAME))
    loaded = load_model(tmp_path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_weights_from_before_the_decoder_adapters_load_with_adapters_that_hear_nothing(
    saved, tmp_path
) -> None:  # noqa: ANN001
    model, directory = saved
    state = load_file(str(directory / WEIGHTS_NAME))
    dropped = [k for k in state if k.startswith("vae.decoder.audio_adapters.")]
    for key in dropped:
        state.pop(key)
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    save_file(state, str(tmp_path / WEIGHTS_NAME))
    loaded = load_model(tmp_path)
    assert dropped and all(not loaded.state_dict()[k].any() for k in dropped)
    for key in set(model.state_dict()) - set(dropped):
        assert torch.equal(loaded.state_dict()[key], model.state_dict()[key]), key
    c = model.config
    latents = torch.randn(1, c.vae.latent_channels, 2, c.latent_height, c.latent_width)
    with torch.no_grad():
        heard = loaded.vae.decode(latents, torch.randn(1, 8, c.audio.dim))
        assert torch.equal(heard, loaded.vae.decode(latents))
