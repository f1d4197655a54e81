"""Held-out evaluation end to end on the random tiny preset and ~3 s clips.

The random model scores badly, which is the point: the schema, the frame accounting and the noise
and idle bookkeeping are checked here, while ``score`` on the clips' own ground-truth renders checks
that the scoring pipeline can see lip sync when there is some.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math

import numpy as np
import pytest
import torch

from engine.config import Capabilities, ConfigError, get_preset
from engine.models.livehuman import LiveHumanModel
from engine.runtime.torch_backend import TorchBackend
from engine.training import evaluate as ev
from engine.training.prompts import ATTRIBUTES
from livehuman.backends import load_backend
from livehuman.cli import main

MAX_FRAMES = 75  # 3 s


@pytest.fixture(scope="module", autouse=True)
def one_thread():  # noqa: ANN201
    """Two small CPU cores: more torch threads only contend (a 3 s clip takes 4x longer)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def clip() -> ev.Clip:
    return ev.heldout_clips(1, max_frames=MAX_FRAMES)[0]


@pytest.fixture(scope="module")
def backend():  # noqa: ANN201
    return load_backend("torch", "tiny")


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def test_heldout_clips_are_trimmed_val_clips(clip) -> None:  # noqa: ANN001
    assert clip.meta["split"] == "val"
    assert clip.num_frames == MAX_FRAMES
    assert len(clip.audio) == MAX_FRAMES * ev.SAMPLES_PER_FRAME and len(clip.speech_mask) == MAX_FRAMES


def test_a_trimmed_clip_is_generated_hearing_the_speech_after_its_cut(monkeypatch, backend) -> None:  # noqa: ANN001
    """Its truth was drawn from the whole sentence, so its last frames anticipate the speech that
    follows; generation hears that speech too, and only the clip's own frames come back."""
    whole = ev.heldout_clips(1)[0]
    short = ev.trim(whole, 13)
    heard = []
    render = ev.render_frames

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        heard.append(args[2])
        return render(*args, **kwargs)

    monkeypatch.setattr(ev, "render_frames", spy)
    frames = ev.generate(backend, short, 1)
    cut = 13 * ev.SAMPLES_PER_FRAME
    assert len(frames) == short.num_frames == 13
    assert len(heard[0]) == cut + ev.AUDIO_AFTER_FRAMES * ev.SAMPLES_PER_FRAME
    assert np.array_equal(heard[0], whole.audio[: len(heard[0])])
    noise = ev.generate(backend, short, 1, audio=short.audio)  # audio given: exactly that is heard
    assert len(noise) == 13 and np.array_equal(heard[1], short.audio)


def test_score_on_ground_truth_renders_follows_the_mouth(clip) -> None:  # noqa: ANN001
    scores = ev.score(clip.frames(), clip)
    figures = ev.lipsync([scores])
    assert figures["lipsync_corr"] >= 0.95, figures
    assert figures["lipsync_corr_speech"] >= 0.9, figures
    assert ev.idle_closed_frac([scores], ev.closed_threshold()) == 1.0
    assert scores["identity"].mean() < 5.0


def test_idle_mask_keeps_away_from_speech(clip) -> None:  # noqa: ANN001
    idle = ev.idle_mask(clip.speech_mask, clip.track.mouth_open)
    assert idle.any() and not (idle & clip.speech_mask).any()
    speech_at = np.flatnonzero(clip.speech_mask)
    for frame in np.flatnonzero(idle):
        assert np.abs(speech_at - frame).min() >= ev.IDLE_MARGIN
    assert (clip.track.mouth_open[idle] < ev.IDLE_TRUTH_MAX).all()
    mask = np.array([0, 0, 0, 0, 1, 0, 0, 0, 0, 0], bool)
    assert ev.idle_mask(mask, np.zeros(10)).tolist() == [1, 1, 0, 0, 0, 0, 0, 1, 1, 1]


def test_gap_noise_spares_speech_and_has_the_stated_level(clip) -> None:  # noqa: ANN001
    noisy = ev.with_gap_noise(clip, np.random.default_rng(0), db_below=20.0)
    voiced = ev.speech_samples(clip)
    assert noisy.dtype == np.float32 and noisy.shape == clip.audio.shape
    np.testing.assert_array_equal(noisy[voiced], clip.audio[voiced])
    added = noisy[~voiced].astype(np.float64) - clip.audio[~voiced]
    level_db = 20 * np.log10(ev._rms(clip.audio[voiced]) / ev._rms(added))
    assert level_db == pytest.approx(20.0, abs=0.1)
    idle_samples = np.repeat(ev.idle_mask(clip.speech_mask, clip.track.mouth_open), ev.SAMPLES_PER_FRAME)
    assert (noisy != clip.audio)[idle_samples].mean() > 0.9  # idle frames do get the noise


def test_generate_yields_one_frame_per_clip_frame(backend, clip) -> None:  # noqa: ANN001
    frames = ev.generate(backend, clip, steps=1)
    assert frames.shape == (clip.num_frames, 128, 128, 3) and frames.dtype == np.uint8


@pytest.fixture(scope="module")
def report_and_calls(backend, clip):  # noqa: ANN001, ANN201
    calls: list[tuple[int, int]] = []
    report = ev.evaluate(
        backend, [clip], steps_list=(2, 1), progress=lambda d, t: calls.append((d, t)),
        validation={"clips": 2, "frames": 40},
    )  # fmt: skip
    return report, calls


def test_report_schema_and_values(report_and_calls, clip) -> None:  # noqa: ANN001
    report, calls = report_and_calls
    json.dumps(report, allow_nan=False)
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert "NOT comparable" in report["note"] and "SyncNet" in report["note"]
    assert report["model"] == "tiny" and report["backend"] == "torch"
    assert report["durations_s"] == pytest.approx(3.0)
    assert set(report["clips"][0]) >= {"identity", "text", "voice", "duration_s"}
    assert all(_finite(v) for v in report["estimators"].values())
    assert all(_finite(v) for v in report["baseline"].values())
    assert report["oracle"]["lipsync_corr"] >= 0.95
    assert set(report["steps"]) == {"2", "1"}
    for figures in report["steps"].values():
        for key in (
            "lipsync_corr", "lipsync_corr_speech", "seam_ratio", "motion", "idle_closed_frac",
            "idle_closed_frac_noise", "drift_slope", "drift_final",
        ):  # fmt: skip
            assert _finite(figures[key]), (key, figures[key])
        assert -1.0 <= figures["lipsync_corr"] <= 1.0
        assert 0.0 <= figures["idle_closed_frac"] <= 1.0
        assert figures["motion_above_floor"] == (figures["motion"] > ev.MOTION_FLOOR)
        assert figures["drift_frames"] == clip.num_frames
        assert len(figures["lipsync_corr_speech_per_clip"]) == 1 and _finite(figures["mouth_gain"])
    assert report["oracle"]["mouth_gain"] > 0, "on the renders the estimate grows with the mouth"


def test_mouth_gain_reads_how_wide_the_mouth_opens() -> None:
    """Half the opening at the same timing: the same correlation, half the gain."""
    truth = np.array([0.0, 0.1, 0.4, 0.2, 0.5, 0.3, 0.0, 0.6])
    spoken = truth > 0
    full = {"estimate": 3.0 * truth + 1.0, "truth": truth, "speech": spoken}
    half = {**full, "estimate": 1.5 * truth + 1.0}
    assert ev.mouth_gain([full]) == pytest.approx(3.0) and ev.mouth_gain([half]) == pytest.approx(1.5)
    assert ev.per_clip_speech_corr([full, half]) == pytest.approx([1.0, 1.0])
    assert ev.lipsync([full, half])["lipsync_corr_speech"] < 0.99  # gains that differ cost the pool


def test_drift_is_a_slope_per_minute() -> None:
    minutes = np.arange(1500) / 25 / 60
    figures = ev.drift(3.0 + 2.0 * minutes)
    assert figures["drift_slope"] == pytest.approx(2.0)
    assert figures["drift_final"] == pytest.approx(3.0 + 2.0 * minutes[-150:].mean())


def test_pearson_edge_cases() -> None:
    assert ev.pearson(np.zeros(10), np.arange(10)) == 0.0
    assert ev.pearson(np.arange(10), np.zeros(10)) is None
    assert ev.pearson(np.arange(10), 2 * np.arange(10)) == pytest.approx(1.0)


def test_bad_values_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        ev.heldout_clips(0)


@pytest.mark.parametrize(
    "args",
    [
        ["--steps", "4,x"],
        ["--steps", "5"],
        ["--clips", "0"],
        ["--drift-minutes", "-1"],
        ["--clips", "2", "--prompt-clips", "3"],
    ],
)
def test_eval_cli_rejects_bad_values_in_one_line(tmp_path, capsys, args) -> None:  # noqa: ANN001
    code = main(["eval", "--preset", "tiny", "--report", str(tmp_path / "r.json"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("livehuman: error:") and "\n" not in err


def test_a_prompt_model_is_also_judged_on_opposite_prompts(clip) -> None:  # noqa: ANN001
    """Schema and wiring only (random weights follow no prompt): per attribute of the language,
    the estimate's change on generated video and on the renderer's own frames, and the prompt
    estimators' validation."""
    config = dataclasses.replace(get_preset("tiny"), capabilities=Capabilities(prompt=True))
    backend = TorchBackend(LiveHumanModel.random(config))
    calls: list[tuple[int, int]] = []
    short = ev.trim(clip, 13)
    report = ev.evaluate(
        backend, [short], steps_list=(1,), progress=lambda d, t: calls.append((d, t)),
        validation={"clips": 1, "frames": 20},
    )  # fmt: skip
    json.dumps(report, allow_nan=False)
    prompt = report["prompt"]
    assert set(prompt["effects"]) == set(ATTRIBUTES) and prompt["frames"] == ev.PROMPT_FRAMES
    assert set(prompt["estimators"]) == {f"{a}_corr" for a in ATTRIBUTES}
    for effect in prompt["effects"].values():
        assert len(effect["change_generated"]) == len(effect["change_truth"]) == 1
        assert effect["change_truth"][0] > 0, "the high prompt's level reads higher on the renders"
    total = 2 + 2 * len(ATTRIBUTES)
    assert calls == [(i, total) for i in range(1, total + 1)]


def test_a_re_dub_model_is_also_judged_on_re_dubs(monkeypatch, clip) -> None:  # noqa: ANN001
    """Wiring: a model that re-dubs gets a ``redub`` section from its first clips, cut to 4 s."""
    config = dataclasses.replace(get_preset("tiny"), capabilities=Capabilities(video=True))
    seen = []
    monkeypatch.setattr(ev, "redub_effects", lambda backend, clips, **kw: seen.append(clips) or {"ok": 1})
    short = ev.trim(clip, 13)
    report = ev.evaluate(
        TorchBackend(LiveHumanModel.random(config)), [short, short], steps_list=(1,),
        validation={"clips": 1, "frames": 20},
    )  # fmt: skip
    assert report["redub"] == {"ok": 1} and len(seen[0]) == 2


def test_eval_cli_writes_the_report(tmp_path, monkeypatch, caplog, report_and_calls, clip) -> None:  # noqa: ANN001
    """The CLI's wiring: arguments reach ``evaluate`` and the report lands on disk (the evaluation
    itself is the fixture's, run once)."""
    seen = {}

    def fake_evaluate(backend, clips, steps_list, **kwargs):  # noqa: ANN001, ANN202
        seen.update(kwargs, clips=clips, steps=steps_list, model=kwargs["model"])
        kwargs["progress"](1, 1)
        return report_and_calls[0]

    monkeypatch.setattr(ev, "heldout_clips", lambda count, seed=0: [clip] * count)
    monkeypatch.setattr(ev, "evaluate", fake_evaluate)
    out = tmp_path / "eval" / "report.json"
    args = ["--clips", "2", "--steps", "2,1", "--drift-minutes", "0.5", "--seed", "3", "--prompt-clips", "1"]
    with caplog.at_level(logging.INFO, logger="livehuman"):
        assert main(["eval", "--preset", "tiny", "--report", str(out), *args]) == 0
    assert json.loads(out.read_text())["steps"].keys() == {"2", "1"}
    assert seen["steps"] == (2, 1) and len(seen["clips"]) == 2 and seen["model"] == "tiny"
    assert seen["drift_seconds"] == 30.0 and seen["seed"] == 3 and seen["machine"]["cpu"]
    assert seen["prompt_clips"] == 1
    assert sum("eval steps" in r.message for r in caplog.records) == 2


def test_long_drift_run_scores_every_frame_in_blocks(backend, clip, monkeypatch) -> None:  # noqa: ANN001
    audio = ev.drift_audio([clip], 4.0)  # longer than the 3 s clip: it loops
    assert len(audio) == 100 * ev.SAMPLES_PER_FRAME
    np.testing.assert_array_equal(audio[len(clip.audio) :], clip.audio[: len(audio) - len(clip.audio)])
    monkeypatch.setattr(ev, "DRIFT_BLOCK", 16)
    config = ev.with_overrides(backend.config, steps=1)
    distance = ev.long_run_distance(backend, clip, audio[: 50 * ev.SAMPLES_PER_FRAME], config, seed=0)
    assert distance.shape == (50,) and np.isfinite(distance).all()


def test_only_step_counts_that_pass_every_bar_join_the_fallback_ladder():
    good = {
        "lipsync_corr": 0.93,
        "lipsync_corr_speech": 0.88,
        "seam_ratio": 1.05,
        "idle_closed_frac": 0.99,
        "idle_closed_frac_noise": 0.97,
        "motion_above_floor": True,
    }
    report = {
        "steps": {
            "4": good,
            "2": {**good, "lipsync_corr_speech": 0.8},
            "1": {**good, "seam_ratio": None},
        }
    }
    assert ev.failed_bars(report["steps"]["2"]) == ["lipsync_corr_speech"]
    assert ev.failed_bars(report["steps"]["1"]) == ["seam_ratio"]
    assert ev.failed_bars({**good, "motion_above_floor": False}) == ["motion_above_floor"]
    assert ev.passing_steps(report) == [4]


def test_write_fallback_sets_the_ladder_below_the_models_own_steps(tmp_path):
    from engine.config import ModelConfig, get_preset
    from livehuman.cli import _write_fallback

    get_preset("tiny").save(tmp_path / "config.json")
    _write_fallback(tmp_path, [4, 2])
    assert ModelConfig.load(tmp_path / "config.json").scheduler.fallback_steps == (2,)
    with pytest.raises(ConfigError, match="model directory"):
        _write_fallback(tmp_path / "missing", [4])
