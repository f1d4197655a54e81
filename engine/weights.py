"""Weights on disk: ``config.json`` + ``model.safetensors`` in one directory.

Loading is strict: a checkpoint that does not match the model exactly is an error that lists
the missing and unexpected keys, because a silently half-loaded model renders plausible garbage.
The one exception is ``ADDED_LATER``: zero-initialised parameters whose zero is the old model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from engine.config import ModelConfig, get_preset
from engine.models.livehuman import LiveHumanModel

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# The name every command defaults to: the trained model shipped in the package.
DEFAULT_MODEL = "default"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "default_model"
# The default model plus prompt control. Shipped beside it, not instead of it: the prompt fine-tune
# moves the unprompted output too (lip-sync and identity measured slightly worse), so the default
# stays the model for plain speech and this one is the opt-in for prompts.
PROMPT_MODEL = "default-prompt"
# Parameters (by name prefix) added after models were trained and shipped, whose zero leaves the
# model exactly as trained (WanDiT.init_weights, DecoderAudioAdapter's zero output): a weights file
# without them loads them as zeros.
ADDED_LATER = ("dit.audio_position", "vae.decoder.audio_adapters.")
SHIPPED_MODELS = {DEFAULT_MODEL: DEFAULT_MODEL_DIR, PROMPT_MODEL: DEFAULT_MODEL_DIR.parent / "prompt_model"}


class WeightsError(ValueError):
    """A checkpoint that cannot be loaded; the message is one line naming the file."""


def save_model(model: LiveHumanModel, directory: str | Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save(directory / CONFIG_NAME)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_NAME))


def load_model(directory: str | Path) -> LiveHumanModel:
    directory = Path(directory)
    config = ModelConfig.load(directory / CONFIG_NAME)
    model = LiveHumanModel(config)
    path = directory / WEIGHTS_NAME
    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise WeightsError(f"weights file '{path}': cannot be read ({exc})") from exc
    expected = model.state_dict()
    for key in expected:  # weights saved before these existed: their zero start, the old model
        if key not in state and key.startswith(ADDED_LATER):
            state[key] = torch.zeros_like(expected[key])
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise WeightsError(
            f"weights file '{path}' does not match config '{config.name}': "
            f"missing {_short(missing)}; unexpected {_short(unexpected)}"
        )
    bad = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
    if bad:
        raise WeightsError(f"weights file '{path}': wrong shapes for {_short(bad)}")
    model.load_state_dict(state, strict=True)
    return model.eval()


def resolve_model_dir(name: str) -> Path:
    """The directory of a trained model: a shipped one (``default``, ``default-prompt``) or a
    directory holding weights; anything else is one WeightsError line."""
    path = SHIPPED_MODELS.get(name, Path(name))
    if not (path / WEIGHTS_NAME).is_file():
        raise WeightsError(
            f"model '{name}': no {WEIGHTS_NAME} there (give 'default', 'default-prompt' or a trained "
            "model directory)"
        )
    return path


def resolve_model(preset: str) -> LiveHumanModel:
    """``preset`` is a shipped trained model (``default``, ``default-prompt``), a directory with
    weights, or a preset name (deterministic random weights)."""
    path = SHIPPED_MODELS.get(preset, Path(preset))
    if path.is_dir():
        return load_model(path)
    config = get_preset(preset)
    log.info("preset %s: deterministic random weights (no checkpoint given)", preset)
    return LiveHumanModel.random(config)


def _short(keys: list[str], limit: int = 6) -> str:
    if not keys:
        return "none"
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more
