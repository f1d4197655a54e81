"""Blend weights and Lab colour matching."""

from __future__ import annotations

import torch

from engine.blend import blend_weights, color_match, lab_stats, lab_to_rgb, rgb_to_lab


def test_blend_weights_rise_and_none_takes_the_new_window() -> None:
    linear, cosine = blend_weights("linear", 3), blend_weights("cosine", 3)
    torch.testing.assert_close(linear, torch.tensor([0.25, 0.5, 0.75]))
    assert torch.all(cosine[1:] > cosine[:-1]) and abs(float(cosine[1]) - 0.5) < 1e-6
    assert not torch.allclose(linear, cosine)
    torch.testing.assert_close(blend_weights("none", 3), torch.ones(3))


def test_lab_round_trip() -> None:
    rgb = torch.rand(4, 8, 8, 3)
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=2e-4, rtol=0)


def test_colour_match_pulls_a_drifted_window_back_to_the_reference() -> None:
    reference = torch.rand(16, 16, 3) * 0.6 + 0.2
    drifted = (reference.expand(4, -1, -1, -1) * 0.7 + torch.tensor([0.2, 0.05, 0.0])).clamp(0, 1)
    ref_stats = lab_stats(reference)
    before = (lab_stats(drifted)[0] - ref_stats[0]).abs().max()
    after = (lab_stats(color_match(drifted, ref_stats))[0] - ref_stats[0]).abs().max()
    assert before > 5.0 and after < 0.5
