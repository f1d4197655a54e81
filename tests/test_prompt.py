"""Prompt control: the prompt language, its estimators, the live path, the stage's pieces."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from engine.config import Capabilities, ConfigError, get_preset
from engine.models.livehuman import LiveHumanModel
from engine.prompt import EASE_LATENTS, PromptPath, check_prompt
from engine.training.attribute_estimates import validate_attribute_estimators
from engine.training.avatar import Attributes
from engine.training.prompt_stage import freeze_all_but_text, prompt_parameters, widen_text_encoder
from engine.training.prompts import ATTRIBUTES, LEVELS, blend_attributes, sample_start, sample_target


def _text(value: float) -> torch.Tensor:
    return torch.full((1, 4, 2), value)


def test_a_prompt_change_eases_in_over_about_a_second_from_the_next_latent() -> None:
    path = PromptPath(_text(0.0))
    path.change(_text(1.0), from_latent=10)
    values = [float(path.at(n)[0, 0, 0]) for n in range(8, 10 + EASE_LATENTS + 2)]
    assert values[:2] == [0.0, 0.0], "windows before the change keep the old prompt"
    ramp = values[2 : 2 + EASE_LATENTS]
    assert 0.0 < ramp[0] < 0.2 and all(b > a for a, b in zip(ramp, ramp[1:], strict=False))
    assert torch.equal(path.at(10 + EASE_LATENTS), _text(1.0)), "it ends exactly on the new prompt"
    steps = np.diff([0.0, *ramp])
    assert steps.max() < 0.35, f"no window jumps most of the way: {steps}"


def test_a_change_during_a_change_starts_from_the_context_on_screen_and_rollback_sees_the_same() -> None:
    path = PromptPath(_text(0.0))
    path.change(_text(1.0), from_latent=0)
    on_screen, earlier = path.at(2).clone(), path.at(1).clone()
    path.change(_text(-1.0), from_latent=2)
    assert torch.equal(path.at(1), earlier), "windows before the change see what they saw"
    first = float(path.at(2)[0, 0, 0])
    assert -1.0 < first < float(on_screen[0, 0, 0]), "eases from where it was, towards the new one"
    path.change(_text(3.0), from_latent=1)  # a rollback to latent 1 replaces the change at 2
    assert torch.equal(path.at(1 + EASE_LATENTS), _text(3.0))


def test_a_prompt_needs_prompt_control_and_must_fit_the_encoder() -> None:
    tiny = get_preset("tiny")
    check_prompt(tiny, "")  # no prompt is always fine
    with pytest.raises(ConfigError, match="^prompt: model 'tiny' has no prompt control"):
        check_prompt(tiny, "smiling")
    capable = dataclasses.replace(tiny, capabilities=Capabilities(prompt=True))
    check_prompt(capable, "smiling")
    with pytest.raises(
        ConfigError, match=f"^prompt: 40 bytes, but this model reads at most {tiny.text.max_tokens}$"
    ):
        check_prompt(capable, "s" * 40)


def test_a_live_prompt_reaches_the_dit_from_the_next_window_and_eases() -> None:
    from tests.live_change import around_a_change

    prompts = {}

    def change(scheduler, backend) -> None:  # noqa: ANN001
        prompts.update(old=backend.encode_text(""), new=backend.encode_text("smiling"))
        scheduler.set_prompt(prompts["new"])

    texts, before, config, _, _ = around_a_change(4, change)
    old, new = prompts["old"], prompts["new"]
    steps = config.scheduler.steps
    assert all(torch.equal(t, old) for t in texts[:before]), "the old prompt until the change"
    share = [float((t - old).norm() / (new - old).norm()) for t in texts[before::steps]]
    assert 0.0 < share[0] < 0.2, "the next window moves a little"
    assert share[EASE_LATENTS - 1] == pytest.approx(1.0) and share[-1] == pytest.approx(1.0)
    assert all(b >= a for a, b in zip(share, share[1:], strict=False))


def test_the_prompt_language_names_each_attribute_at_opposite_levels() -> None:
    rng = np.random.default_rng(0)
    for attribute in ATTRIBUTES:
        levels = [level for level in LEVELS if level.attribute == attribute]
        assert max(lv.low for lv in levels) - min(lv.high for lv in levels) >= 0.69, attribute
    targets = [sample_target(rng) for _ in range(200)]
    assert 0.1 < np.mean([not t.levels for t in targets]) < 0.3, "some empty prompts hold the base"
    portrait = Attributes(smile=0.2, gaze_x=0.1, brow=0.3, mood=0.4)
    for target in targets[:50]:
        wanted, text = target.apply(portrait), target.phrase(rng)
        for level, value in zip(target.levels, target.values, strict=True):
            assert level.low <= getattr(wanted, level.attribute) == value <= level.high
            assert any(p in text for p in level.phrases), (text, level)
        unnamed = set(ATTRIBUTES) - {level.attribute for level in target.levels}
        assert all(getattr(wanted, a) == getattr(portrait, a) for a in unnamed | {"brow"})
        assert (target.phrase(rng) == "") == (not target.levels)


def test_a_blend_runs_from_what_the_start_prompt_shows_to_what_the_target_asks() -> None:
    rng = np.random.default_rng(1)
    portrait = Attributes(smile=0.2, gaze_x=0.1, brow=0.3, mood=0.4)
    for _ in range(50):
        target = sample_target(rng, empty_fraction=0.0)
        start = sample_start(rng, target)
        assert {lv.attribute for lv in start.levels} <= {lv.attribute for lv in target.levels}
        shown, asked = start.apply(portrait), target.apply(portrait)
        ends = [blend_attributes(portrait, start, target, u).to_dict() for u in (0.0, 1.0)]
        assert ends == [pytest.approx(shown.to_dict()), pytest.approx(asked.to_dict())]
        half = blend_attributes(portrait, start, target, 0.5)
        for level in target.levels:
            a, b = getattr(shown, level.attribute), getattr(asked, level.attribute)
            assert getattr(half, level.attribute) == pytest.approx(0.5 * (a + b))


def test_widening_the_text_encoder_keeps_the_empty_prompt_and_only_the_text_path_trains() -> None:
    model = LiveHumanModel.random(get_preset("tiny"))
    short = model.text.encode([""])
    widen_text_encoder(model, 64)
    wide = model.text.encode([""])
    assert model.config.text.max_tokens == 64 and wide.shape[1] == 64
    assert torch.allclose(wide[:, : short.shape[1]], short, atol=1e-6) and not wide[:, short.shape[1] :].any()
    assert model.text.encode(["x" * 60]).shape == (1, 64, model.config.text.dim)
    params = freeze_all_but_text(model)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in params} == {id(p) for p in prompt_parameters(model)}
    assert all(not p.requires_grad for p in model.dit.blocks[0].self_attn.parameters())
    assert all(not p.requires_grad for p in model.dit.camera_projections.parameters())


def test_each_prompt_attribute_estimator_is_validated_on_ground_truth_renders() -> None:
    scores = validate_attribute_estimators(seed=1, pairs=10, frames=9)
    assert set(scores) == {f"{a}_corr" for a in ATTRIBUTES}
    assert all(v >= 0.95 for v in scores.values()), scores


def test_the_cells_a_prompt_moves_weigh_the_boost_in_the_loss_mask_and_nothing_else_does() -> None:
    from engine.training import data
    from engine.training.prompt_stage import CHANGE_THRESHOLD, prompt_clip
    from engine.training.prompts import PromptTarget, levels_of

    model = LiveHumanModel.random(get_preset("tiny"), seed=4).eval()
    clip = data.make_clip("train", 0, seed=5)
    clip = dataclasses.replace(clip, attributes=dataclasses.replace(clip.attributes, smile=0.0))
    smiling = PromptTarget((levels_of("smile")[0],), (1.0,))
    for target, boost in ((smiling, 4.0), (PromptTarget((), ()), 4.0), (smiling, 1.0)):
        made = prompt_clip(model, clip, target, 21, np.random.default_rng(0), change_boost=boost)
        moved = (made.after.latents - made.before.latents).abs().mean(dim=0) > CHANGE_THRESHOLD
        assert moved.any() == bool(target.levels)
        assert torch.all(made.after.mouth_mask[moved] == boost)
        assert made.after.mouth_mask[~moved].max() <= 1.0  # the mouth alone, as in every stage
