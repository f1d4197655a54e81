"""The shipped prompt model's (``--preset default-prompt``) prompt control, read back from its
video with the validated attribute estimators: opposite prompts move each attribute of the
language the named way on held-out portraits, and a prompt changed live eases in from the next
window without a jump."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.config import FPS, MODEL_SAMPLE_RATE
from engine.media import read_audio, read_image
from engine.resample import StreamResampler
from engine.runtime.torch_backend import TorchBackend
from engine.training.attribute_estimates import mood_estimate
from engine.training.evaluate import PROMPT_FRAMES, heldout_clips
from engine.training.prompt_eval import prompt_effects
from engine.training.prompts import ATTRIBUTES
from engine.weights import DEFAULT_MODEL_DIR, PROMPT_MODEL, resolve_model

BRIGHT, DARK = "a bright warm background", "a dark moody background"


@pytest.fixture(scope="module")
def backend() -> TorchBackend:
    torch.set_num_threads(2)
    return TorchBackend(resolve_model(PROMPT_MODEL))


def test_the_prompt_model_declares_prompt_control_with_room_for_two_phrases_and_the_default_does_not(
    backend,  # noqa: ANN001
) -> None:
    assert backend.config.capabilities.prompt and not resolve_model("default").config.capabilities.prompt
    assert backend.config.text.max_tokens >= len(f"{BRIGHT} and a slight smile")


@pytest.fixture(scope="module")
def effects(backend) -> dict:  # noqa: ANN001
    return prompt_effects(backend, heldout_clips(2, seed=0, max_frames=PROMPT_FRAMES))


@pytest.mark.parametrize("attribute", ATTRIBUTES)
def test_opposite_prompts_move_each_attribute_the_named_way_on_held_out_portraits(effects, attribute) -> None:  # noqa: ANN001
    effect = effects[attribute]
    assert effect["moved_right_way"] == 1.0, effect
    assert effect["fraction_of_truth"] >= 0.2, effect  # a visible share of what was asked, not noise


def _frames(backend: TorchBackend, prompt: str, change_to: str | None) -> list[np.ndarray]:
    """5 s of the shipped portrait speaking; the prompt changed to ``change_to`` after 1 s."""
    from engine.generator import Conditioning
    from engine.scheduler import Scheduler

    c = backend.config
    portrait = read_image(DEFAULT_MODEL_DIR.parent / "portrait.png", c.height, c.width)
    decoded = read_audio(DEFAULT_MODEL_DIR.parent / "hello.wav")
    resampler = StreamResampler(decoded.sample_rate, MODEL_SAMPLE_RATE)
    speech = np.concatenate([resampler.process(decoded.mono()), resampler.flush()])
    scheduler = Scheduler(
        backend, Conditioning.from_portrait(backend, portrait, prompt), c, portrait=portrait
    )
    scheduler.push_audio(np.resize(speech, 5 * MODEL_SAMPLE_RATE).astype(np.float32), MODEL_SAMPLE_RATE)
    scheduler.end_input()
    frames: list[np.ndarray] = []
    while len(frames) < FPS:
        scheduler.work()
        frames += [f.rgb for f in scheduler.release()]
    if change_to is not None:
        scheduler.set_prompt(backend.encode_text(change_to))
    while not scheduler.done:
        scheduler.work()
        frames += [f.rgb for f in scheduler.release()]
    return frames


def test_a_live_prompt_change_applies_from_the_next_window_and_eases_in(backend) -> None:  # noqa: ANN001
    portrait = read_image(DEFAULT_MODEL_DIR.parent / "portrait.png", 128, 128)
    steady = _frames(backend, BRIGHT, None)
    changed = _frames(backend, BRIGHT, DARK)
    first = next(i for i, (a, b) in enumerate(zip(changed, steady, strict=True)) if not np.array_equal(a, b))
    assert first >= FPS, "frames already generated keep their prompt"
    mood = mood_estimate(np.stack(changed), portrait)
    before, after = mood[first - 4 : first].mean(), mood[-10:].mean()
    assert after < before, (before, after)  # darker, as asked
    steps = np.abs(np.diff(mood[first - 1 :]))
    assert steps.max() < 0.35 * (before - after), (steps.max(), before - after)  # no jump
