"""The shipped default model, on held-out identities, voices and sentences, at 4 steps, through
the real streaming scheduler.

What these tests guard is what the shipped model does today (measured in
benchmarks/results/quality-default-*.json): a face of the held-out identity that keeps its colours,
a mouth that stays closed in pauses (with digital silence and with noise 20 dB below the speech),
a mouth that follows the speech well beyond a loudness-driven one (about 0.69 / 0.40) and meets
the issue's lip-sync bars (corr 0.9, and 0.85 on speech frames alone), and seams within the
issue's bar (1.15) with the picture moving.
"""

from __future__ import annotations

import pytest

from engine.runtime.base import Backend
from engine.training.evaluate import evaluate, failed_bars, heldout_clips, passing_steps
from engine.weights import DEFAULT_MODEL_DIR, load_model

CLIPS = 2


@pytest.fixture(scope="module")
def report(default_backend: Backend) -> dict:
    clips = heldout_clips(CLIPS, seed=1, max_frames=150)
    # The prompt's and the re-dub's effects are their own test modules', on clips of their own.
    validation = {"clips": 2, "frames": 100}
    return evaluate(
        default_backend, clips, steps_list=(4, 2, 1), validation=validation, prompt_clips=0, redub_clips=0
    )


def test_the_default_model_ships_with_a_load_shedding_ladder_of_step_counts_that_pass(report):
    """The live scheduler sheds to these counts when a window would be late, so each must pass every
    bar; ``livehuman eval --clips 8 --steps 4,2,1 --write-fallback`` wrote them
    (benchmarks/results/quality-default-8clips-steps-20261127T020123Z.json: 2 and 1 steps pass
    there too, 0.940 / 0.875 and 0.939 / 0.873)."""
    model = load_model(DEFAULT_MODEL_DIR)
    assert model.config.name == "tiny"
    ladder = model.config.scheduler.fallback_steps
    assert ladder and all(n < model.config.scheduler.steps for n in ladder)
    assert set(ladder) <= set(passing_steps(report)), {k: failed_bars(v) for k, v in report["steps"].items()}


def test_the_mouth_follows_held_out_speech_far_better_than_chance(report):
    figures = report["steps"]["4"]
    # Random weights score about 0; the shipped model 0.952 / 0.886 on these clips on onnx int8 (as
    # here), 0.951 / 0.886 on torch (0.921 / 0.808 on onnx before its second hearing stage: 6
    # audio blocks trained on 1800 clips, the lip-sync and decoder stages redone after it). On
    # torch it scored 0.58 overall before its lip-sync stage taught the DiT where each audio token
    # sits, 0.76 before its decoder learned to hear, 0.88 / 0.71 before the first hearing stage,
    # 0.90 / 0.73 before the on-policy lip-sync phase and the decoder trained on the DiT's own
    # latents, 0.922 / 0.805 before those two stages were redone on 360 clips instead of 140.
    assert figures["lipsync_corr"] >= 0.9, figures  # the bars: over all frames,
    assert figures["lipsync_corr_speech"] >= 0.85, figures  # and on speech frames alone
    assert figures["speech_open_frac"] >= 0.2, figures  # it opens on speech, not only stays shut


def test_the_mouth_stays_closed_in_pauses_even_with_background_noise(report):
    figures = report["steps"]["4"]
    assert figures["idle_frames"] > 0
    assert figures["idle_closed_frac"] >= 0.95, figures
    assert figures["idle_closed_frac_noise"] >= 0.95, figures


def test_windows_hand_over_without_a_visible_seam(report):
    figures = report["steps"]["4"]
    # 0.98 on these clips (onnx int8, as here and on torch); 2.4 (standard report) before the
    # scheduler eased latent boundaries.
    assert figures["seam_ratio"] <= 1.15, figures
    assert figures["motion_above_floor"], figures  # a still picture would make any ratio moot


def test_the_face_keeps_the_reference_identity_and_colours(report):
    figures = report["steps"]["4"]
    assert figures["identity_distance"] < 3.0, figures  # mean CIEDE2000 to the portrait
    assert figures["drift_final"] < 3.0, figures
    assert figures["motion_above_floor"], figures
