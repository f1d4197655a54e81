"""The chunked scheduler's mechanisms, proved with closed-form fake backends in virtual time."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.blend import blend_weights
from engine.clock import VirtualClock
from engine.config import FPS, MODEL_SAMPLE_RATE, SAMPLES_PER_FRAME
from engine.generator import Conditioning, noise_seed
from engine.sampler import FlowSampler
from engine.scheduler import Scheduler
from tests.fakes import FakeBackend, fake_config

RATE = MODEL_SAMPLE_RATE


def make_scheduler(backend, config, clock=None, seed=0) -> Scheduler:  # noqa: ANN001
    portrait = np.zeros((config.height, config.width, 3), np.uint8)
    return Scheduler(backend, Conditioning.from_portrait(backend, portrait), config, seed=seed, clock=clock)


def render_offline(sched: Scheduler, audio: np.ndarray, rate: int = RATE, chunk: int | None = None) -> list:
    chunk = chunk or len(audio)
    for i in range(0, len(audio), chunk):
        sched.push_audio(audio[i : i + chunk], rate)
    sched.end_input()
    frames = []
    while not sched.done:
        worked = sched.work()
        released = sched.release()
        assert worked or released, "offline scheduler stalled"
        frames += released
    return frames


def run_live(  # noqa: ANN201
    sched: Scheduler,
    clock: VirtualClock,
    until: float,
    pushes=(),
    tick=0.02,
    actions=None,
    rate=RATE,  # noqa: ANN001
):
    """Advance virtual time in ticks: push what is due, let the worker catch up, release frames."""
    pushes = pushes if isinstance(pushes, list) else list(pushes)  # a test may clear it mid-run
    actions = dict(actions or {})
    frames = []
    while clock.now() < until - 1e-9:
        while pushes and pushes[0][0] <= clock.now() + 1e-9:
            sched.push_audio(pushes.pop(0)[1], rate)
        for at in [t for t in actions if t <= clock.now() + 1e-9]:
            actions.pop(at)()
        while sched.work():
            pass
        frames += sched.release()
        clock.advance(tick)
    return frames


def paced(audio: np.ndarray, start: float = 0.0, chunk_s: float = 0.02):
    """Real-time pacing: each 20 ms chunk is pushed as it would arrive from a live source."""
    n = int(chunk_s * RATE)
    return [(start + i / RATE, audio[i : i + n]) for i in range(0, len(audio), n)]


def tone(seconds: float, amplitude: float = 0.5, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def energy(frame) -> float:  # noqa: ANN001
    return float(frame.rgb.mean())


@pytest.mark.parametrize("seconds,rate", [(1.0, 16000), (1.37, 16000), (0.5, 44100), (2.01, 48000)])
def test_frame_count_is_round_seconds_times_fps(seconds: float, rate: int) -> None:
    config = fake_config()
    frames = render_offline(
        make_scheduler(FakeBackend(config), config), np.zeros(int(seconds * rate), np.float32), rate
    )
    assert len(frames) == round(seconds * FPS)
    assert [f.index for f in frames] == list(range(len(frames)))
    assert all(f.audio.shape == (1920,) for f in frames)


@pytest.mark.parametrize("mode", ["linear", "cosine", "none"])
def test_overlap_latents_are_the_interpolation_blend(mode: str) -> None:
    config = fake_config(window=5, overlap=2, blend=mode)
    backend = FakeBackend(config, target="window")
    render_offline(make_scheduler(backend, config), np.zeros(RATE * 2, np.float32))
    a = blend_weights(mode, 2)
    decoded = [float(latent.mean()) for latent in backend.decoded[1:]]  # [0] is the reference primer
    # Window 0 emits S - O = 1 latent; window k >= 1 emits [blend j=0, blend j=1, k].
    assert decoded[0] == pytest.approx(0.0, abs=1e-6)
    windows = (len(decoded) - 1 - 2) // 3  # the last 2 are the flushed tail
    assert windows >= 3
    for k in range(1, windows + 1):
        got = decoded[1 + 3 * (k - 1) : 1 + 3 * k]
        want = [
            (1 - float(a[0])) * (k - 1) + float(a[0]) * k,
            (1 - float(a[1])) * (k - 1) + float(a[1]) * k,
            k,
        ]
        assert got == pytest.approx(want, abs=1e-5), f"window {k}"


def test_blend_modes_give_different_output() -> None:
    outputs = []
    for mode in ("linear", "cosine", "none"):
        config = fake_config(window=5, overlap=2, blend=mode)
        backend = FakeBackend(config, target="window")
        render_offline(make_scheduler(backend, config), np.zeros(RATE, np.float32))
        outputs.append(torch.stack([latent.mean() for latent in backend.decoded]))
    assert not torch.allclose(outputs[0], outputs[1])
    assert not torch.allclose(outputs[0], outputs[2])
    assert not torch.allclose(outputs[1], outputs[2])


def test_noisy_overlap_is_the_tail_renoised_at_every_step_but_the_last() -> None:
    config = fake_config(window=4, overlap=2)
    backend = FakeBackend(config, target="window")
    render_offline(make_scheduler(backend, config, seed=7), np.zeros(RATE, np.float32))
    sigmas = FlowSampler(config.sampler).sigmas(config.scheduler.steps)
    steps, O, S = len(sigmas), 2, 2
    for k in range(1, backend.calls // steps):
        start = k * S - O
        for j, sigma in enumerate(sigmas[:-1]):
            x = backend.dit_inputs[k * steps + j]
            for i in range(O):
                noise = torch.randn(
                    4, 2, 2, generator=torch.Generator().manual_seed(noise_seed(7, start + i, j))
                )
                want = (1 - sigma) * (k - 1) + sigma * noise
                torch.testing.assert_close(x[0, :, i], want, atol=1e-5, rtol=0)
        last = backend.dit_inputs[k * steps + steps - 1][0, :, :O]
        renoised = (1 - sigmas[-1]) * (k - 1)
        assert not torch.allclose(last, torch.full_like(last, renoised), atol=1e-3)


def test_live_idle_for_ten_seconds_yields_250_frames() -> None:
    config = fake_config()
    clock = VirtualClock()
    sched = make_scheduler(FakeBackend(config), config, clock=clock)
    delay = config.scheduler.playout_delay_ms / 1000
    frames = run_live(sched, clock, until=delay + 10.0)
    assert len(frames) == 250
    assert [f.index for f in frames] == list(range(250))
    assert not any(f.repeated for f in frames), "idle frames must be generated in time"
    assert all(energy(f) == 0 for f in frames)


def _speech_then_loud(quiet_s: float, loud_s: float) -> np.ndarray:
    return np.concatenate([tone(quiet_s, 0.1), tone(loud_s, 0.9)])


@pytest.mark.parametrize("during_window", [False, True], ids=["between-windows", "while-a-window-computes"])
def test_interrupt_drops_audio_and_video_after_the_cut(during_window: bool) -> None:
    config = fake_config()
    audio = _speech_then_loud(1.5, 2.0)  # loud audio after 1.5 s is what the interrupt drops
    delay = config.scheduler.playout_delay_ms / 1000
    interrupt_at = delay + 1.0  # the play head is 1.0 s into the speech: quiet audio

    clock = VirtualClock()
    sched = make_scheduler(FakeBackend(config), config, clock=clock)
    baseline = run_live(sched, clock, until=delay + 4.0, pushes=paced(audio))

    clock = VirtualClock()
    backend = FakeBackend(config)
    sched = make_scheduler(backend, config, clock=clock)
    actions, fired = {}, []

    def interrupt_inside_model_call() -> bool:
        if clock.now() < interrupt_at - 1e-9:
            return False
        fired.append(clock.now())
        sched.interrupt()
        return True

    if during_window:  # the interrupt lands inside the first model call at or after its time
        backend.on_dit = interrupt_inside_model_call
    else:
        actions = {interrupt_at: sched.interrupt}
    # The client stops pushing when it interrupts; 0.1 s of loud audio is queued by then.
    pushes = [(t, chunk) for t, chunk in paced(audio) if t < interrupt_at]
    frames = run_live(sched, clock, until=delay + 4.0, pushes=pushes, actions=actions)
    if during_window:
        assert fired, "the interrupt never fired inside a model call"
        interrupt_at = fired[0]
    play_head = int(round((interrupt_at - delay) * FPS))
    cut = math.floor(play_head / 4) * 4 + 4  # first latent boundary after the play head
    # Frames before the cut are the ones the uninterrupted run showed.
    for a, b in zip(frames[:cut], baseline[:cut], strict=True):
        assert np.array_equal(a.rgb, b.rgb)
    # No frame after the cut shows energy from the dropped audio: the quiet speech's frames are
    # about 18/255, the dropped loud audio's about 162/255; the first new latent blends towards 0.
    quiet = max(energy(f) for f in baseline[:cut])
    assert quiet < 30
    assert all(energy(f) <= quiet for f in frames[cut:])
    assert all(energy(f) == 0 for f in frames[cut + 4 :])
    # Audio: nothing more than 200 ms past the play head carries speech.
    for f in frames:
        if f.pts > (play_head / FPS) + 0.2:
            assert np.abs(f.audio).max() == 0.0, f"frame {f.index} still has audio"
    events = sched.drain_events()
    finished = [e for e in events if e.kind == "playback_finished"]
    assert len(finished) == 1 and finished[0].interrupted
    assert finished[0].playback_position == pytest.approx(interrupt_at - delay, abs=0.021)


def test_speech_after_idle_starts_within_one_latent_of_arrival() -> None:
    config = fake_config()
    clock = VirtualClock()
    sched = make_scheduler(FakeBackend(config), config, clock=clock)
    arrival = 2.013
    frames = run_live(sched, clock, until=5.0, pushes=paced(tone(1.0, 0.5), start=arrival))
    speech_frames = [f for f in frames if f.segment_id is not None]
    assert speech_frames, "speech never played"
    first = speech_frames[0]
    # Media position of arrival: audio arriving at t plays playout_delay later.
    arrival_media = arrival
    assert arrival_media - 1 / FPS <= first.pts <= arrival_media + 0.16
    assert energy(first) > 0 or energy(frames[first.index + 1]) > 0
    assert not any(f.repeated for f in frames)
    started = [e for e in sched.drain_events() if e.kind == "playback_started"]
    assert len(started) == 1


def test_offline_playback_events_report_segment_duration() -> None:
    config = fake_config()
    sched = make_scheduler(FakeBackend(config), config)
    render_offline(sched, tone(1.2))
    events = sched.drain_events()
    assert [e.kind for e in events] == ["playback_started", "playback_finished"]
    assert events[1].playback_position == pytest.approx(1.2, abs=1e-3)
    assert not events[1].interrupted


def test_state_stays_bounded_over_a_long_live_run() -> None:
    config = fake_config()
    clock = VirtualClock()
    sched = make_scheduler(FakeBackend(config), config, clock=clock)
    run_live(sched, clock, until=20.0, pushes=paced(tone(15.0, 0.3), start=1.0), tick=0.1)
    assert len(sched._snapshots) <= 4
    assert len(sched.timeline.model.data) < 2 * RATE
    assert len(sched._pending) <= 8


def test_jitter_within_the_deadline_is_not_silence() -> None:
    config = fake_config()
    audio = tone(2.0, 0.4)
    offline = render_offline(make_scheduler(FakeBackend(config), config), audio, chunk=320)
    clock = VirtualClock()
    sched = make_scheduler(FakeBackend(config), config, clock=clock)
    # Packets arrive up to 20 ms late (the first one on time, as it anchors the utterance); the
    # defaults leave playout_delay - audio wait - compute budget = 35 ms of slack.
    # A WebSocket never reorders packets, so arrival times are made non-decreasing.
    pushes, latest = [], 0.0
    for i, (t, chunk) in enumerate(paced(audio)):
        latest = max(latest, t + (0.01 * (i % 3) if i else 0.0))
        pushes.append((latest, chunk))
    delay = config.scheduler.playout_delay_ms / 1000
    live = run_live(sched, clock, until=delay + 2.0, pushes=pushes, tick=0.01)
    speech = round(2.0 * FPS) - 4
    assert [energy(f) for f in live[:speech]] == [energy(f) for f in offline[:speech]]
    assert not any(f.repeated for f in live)


def test_audio_that_misses_its_deadline_goes_after_inserted_silence() -> None:
    config = fake_config()
    audio = tone(2.0, 0.4)
    pushes = [(t if t < 1.0 else t + 1.0, chunk) for t, chunk in paced(audio)]  # a 1 s stall at 1.0 s
    clock = VirtualClock()
    sched = make_scheduler(FakeBackend(config), config, clock=clock)
    frames = run_live(sched, clock, until=4.5, pushes=pushes, actions={4.2: sched.end_segment})
    assert sched.stats.silence_inserted_s > 0.5
    loud = [f.index for f in frames if energy(f) > 0]
    gaps = [b - a for a, b in zip(loud, loud[1:], strict=False) if b - a > 1]
    assert len(gaps) == 1 and gaps[0] >= 0.5 * FPS, "one silent gap where the stall was"
    assert abs(len(loud) - 2.0 * FPS) <= 4, "no speech is lost: it plays after the gap"
    assert all(f.segment_id == 1 for f in frames if energy(f) > 0)
    finished = [e for e in sched.drain_events() if e.kind == "playback_finished"]
    assert len(finished) == 1 and finished[0].playback_position == pytest.approx(2.0, abs=1e-3), (
        "gap excluded"
    )


def test_an_interrupt_while_a_slow_window_computes_still_cuts_its_frames() -> None:
    """The model is slow: the play head reaches the window being computed, the user interrupts,
    and that window's frames past the cut must never be shown."""
    config = fake_config(window=5, overlap=2)  # a window emits 3 latents
    clock = VirtualClock()
    backend = FakeBackend(config)
    sched = make_scheduler(backend, config, clock=clock)
    t = np.arange(4 * RATE) / RATE
    rising = (0.05 + 0.2 * t) * np.sin(2 * np.pi * 220 * t)  # later audio is always louder
    pushes = paced(rising.astype(np.float32))
    cut = []

    def slow_model_then_interrupt() -> bool:
        start = sched._state.start  # the window being computed
        if start < 6:
            return False
        clock.set(sched._present(4 * (start + 1)) + 0.01)  # the play head is inside latent start+1
        pushes.clear()
        sched.interrupt()
        cut.append(start + 2)
        return True

    backend.on_dit = slow_model_then_interrupt
    frames = run_live(sched, clock, until=8.0, pushes=pushes)
    assert cut, "the interrupt never fired"
    first_cut_frame = 4 * cut[0]
    watched = energy(frames[first_cut_frame - 1])
    assert watched > 10
    assert all(energy(f) <= watched for f in frames[first_cut_frame:])
    assert all(energy(f) == 0 for f in frames[first_cut_frame + 4 * 2 :])


def test_the_decoder_hears_the_audio_of_the_frames_it_decodes() -> None:
    """The fake DiT puts frame j's audio energy in channel j of its latent, so a decoder handed
    the right features hears, frame by frame, what the latent it decodes carries."""
    config = fake_config()
    backend = FakeBackend(config)
    levels = np.repeat(np.linspace(0.05, 0.8, 50), SAMPLES_PER_FRAME).astype(np.float32)  # 2 s
    render_offline(make_scheduler(backend, config), levels * np.sign(tone(2.0)))
    assert backend.heard[0] is not None and not backend.heard[0].any()  # the reference primer: silence
    checked = 0
    for latent, heard in zip(backend.decoded[2:], backend.heard[2:], strict=True):  # [1] blends the portrait
        carried = latent[0, :4, 0].mean(dim=(-1, -2))  # (4,) energies of the latent's own frames
        assert heard is not None and heard.shape == (1, 4, config.audio.dim)
        torch.testing.assert_close(heard[0, :, 0], carried, atol=1e-5, rtol=1e-5)
        checked += 1
    assert checked >= 10


class Staircase(FakeBackend):
    """Each latent decodes to 4 identical flat frames whose level rises by a fixed step per latent."""

    def vae_decoder_step(self, latent, cache, audio=None):  # noqa: ANN001, ANN201
        super().vae_decoder_step(latent, cache, audio)
        level = 0.2 * float(latent.mean()) - 0.9
        return torch.full((1, 3, 4, self.config.height, self.config.width), level), cache


@pytest.mark.parametrize("ease", [0.0, 10.0, 255.0])
def test_boundary_ease_fades_the_capped_jump_over_the_next_latent(ease: float) -> None:
    config = fake_config(boundary_ease=ease)
    frames = render_offline(
        make_scheduler(Staircase(config, target="window"), config), np.zeros(RATE, np.float32)
    )
    levels = np.array([energy(f) for f in frames])
    steps = np.diff(levels)[4:-4]  # whole latents after the first, before the flushed tail
    jump = 0.2 * 127.5  # each emitted latent is one window-index higher: 0.2 in [-1, 1]
    eased = min(jump, ease)
    at_boundary = steps[3::4]  # frame 4k+7 -> 4k+8
    inside = np.delete(steps, np.s_[3::4])
    assert np.allclose(at_boundary, jump - 0.75 * eased, atol=1.0)
    assert np.allclose(inside, 0.25 * eased, atol=1.0)
