"""Re-dubbing a video, engine side: the mirror loop, the streamed encoder the source goes
through, the source as every window reads it, the compositing, and the refusals."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from engine.config import FPS, Capabilities, ConfigError, get_preset
from engine.generator import Conditioning, WindowGenerator
from engine.models.camera import parse_camera
from engine.models.livehuman import LiveHumanModel
from engine.redub import (
    MASK_BLUR,
    MAX_SECONDS,
    WARMUP_LATENTS,
    check_source_length,
    check_video,
    mirror_loop,
    to_model_input,
)
from engine.render import render_frames
from engine.runtime.base import Backend
from engine.runtime.torch_backend import TorchBackend

TINY = dataclasses.replace(get_preset("tiny"), capabilities=Capabilities(video=True))


@pytest.fixture(scope="module")
def backend() -> TorchBackend:
    return TorchBackend(LiveHumanModel.random(TINY, seed=3).eval())


@pytest.fixture(scope="module")
def conditioning(backend: TorchBackend) -> Conditioning:
    """One second of source (a 48-frame loop, 12 latents): encoded once for the module."""
    return Conditioning.from_video(backend, moving_video(FPS))


def moving_video(frames: int, size: int = 128) -> np.ndarray:
    """A bright square sliding right over a gradient: motion whose direction a wrong loop would flip
    abruptly."""
    y, x = np.mgrid[:size, :size]
    video = np.empty((frames, size, size, 3), np.uint8)
    for i in range(frames):
        picture = np.stack([x, y, (x + y) // 2], axis=-1).astype(np.float64) * 255 / size
        left = 10 + 2 * i
        picture[40:80, left : left + 30] = (250, 240, 30)
        video[i] = picture.astype(np.uint8)
    return video


@pytest.mark.parametrize("frames", [25, 26, 37])
def test_the_mirror_loop_has_no_jump_and_a_length_of_whole_latents(frames: int) -> None:
    video = moving_video(frames)
    loop = mirror_loop(video)
    assert len(loop) % 4 == 0
    steps = np.abs(np.diff(np.concatenate([loop, loop[:1]]).astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
    # Every step of the loop, the wrap-around included, is one frame of the source's own motion.
    one_frame = np.abs(np.diff(video[:2].astype(np.int16), axis=0)).mean()
    assert steps.max() <= one_frame * 1.01
    assert np.array_equal(loop[: len(video) - (frames % 2 == 0)], video[: len(video) - (frames % 2 == 0)])


def test_source_length_is_bounded_with_one_line_errors() -> None:
    for frames, fragment in ((10, "too short"), (int(MAX_SECONDS * FPS) + 5, "longer than")):
        with pytest.raises(ConfigError, match=fragment) as caught:
            check_source_length(frames)
        assert "\n" not in str(caught.value)
    check_source_length(FPS)


def test_a_model_without_the_capability_refuses_a_video() -> None:
    with pytest.raises(ConfigError, match="capabilities.video") as caught:
        check_video(get_preset("tiny"))
    assert "\n" not in str(caught.value)
    check_video(TINY)


def test_the_streamed_encoder_gives_the_whole_clip_latents(backend: TorchBackend) -> None:
    """Graph backends encode through ``vae_encoder_step`` only (``Backend.vae_encoder``); it must
    give what the torch model's one-call encode gives, or a portrait would encode differently per
    backend."""
    frames = to_model_input(moving_video(1 + 4 * 5))
    stepped = Backend.vae_encoder(backend, frames)
    assert torch.allclose(stepped, backend.vae_encoder(frames), atol=1e-5)


def test_the_source_is_periodic_and_seamless_at_the_loop_point(
    backend: TorchBackend, conditioning: Conditioning
) -> None:
    source = conditioning.source
    count = source.num_latents
    assert count == len(mirror_loop(moving_video(FPS))) // 4
    assert torch.equal(source.window_latents(count - 1, 3), source.window_latents(2 * count - 1, 3))
    # The loop's latent 0 has the context of the loop's end, as on a continuous stream of the loop.
    cache, stream = backend.vae_encoder_cache(1), []
    loop = np.concatenate([source.frames] * 2)
    for j in range(0, len(loop), 4):
        latent, cache = backend.vae_encoder_step(to_model_input(loop[j : j + 4]), cache)
        stream.append(latent)
    second_pass = torch.cat(stream[count:], dim=2)
    assert count > WARMUP_LATENTS
    assert torch.allclose(source.latents, second_pass, atol=1e-4)


def test_compositing_keeps_the_source_where_the_model_copies_it(conditioning: Conditioning) -> None:
    source = dataclasses.replace(conditioning.source, region=np.full_like(conditioning.source.region, 255))
    index = np.arange(len(source.frames) - 4, len(source.frames) + 4) % len(source.frames)
    frames = source.round_trip[index].copy()
    frames[4:, 90:120, 40:90] = 0  # a "mouth" the model changed in the last four frames
    out = source.composite(frames, len(source.frames) - 4)  # across the loop point
    assert np.array_equal(out[:4], source.frames[index[:4]])  # unchanged: the source, sharp
    pad = MASK_BLUR
    assert np.array_equal(
        out[4:, 90 + pad : 120 - pad, 40 + pad : 90 - pad],
        frames[4:, 90 + pad : 120 - pad, 40 + pad : 90 - pad],
    )
    assert np.array_equal(out[4:, :60], source.frames[index[4:], :60])  # far from the change


def test_compositing_takes_a_change_only_inside_the_speech_region(conditioning: Conditioning) -> None:
    """The DiT's departures from the source away from the mouth (eyes, hair a little off) are not
    a re-dub: outside each frame's speech region the source stays, however the frame changed."""
    region = np.zeros_like(conditioning.source.region)
    region[:, 90:120, 40:65] = 255
    source = dataclasses.replace(conditioning.source, region=region)
    index = np.arange(8, 16)
    frames = source.round_trip[index].copy()
    frames[:, 90:120, 40:90] = 0
    frames[:, 10:30, 10:30] = 255  # a change far from any mouth
    out = source.composite(frames, 8)
    pad = MASK_BLUR
    assert np.array_equal(
        out[:, 90 + pad : 120 - pad, 40 + pad : 65], frames[:, 90 + pad : 120 - pad, 40 + pad : 65]
    )
    assert np.array_equal(out[:, :, 65:], source.frames[index, :, 65:])
    assert np.array_equal(out[:, :90], source.frames[index, :90])


def test_a_decoder_that_draws_no_speech_leaves_the_mask_unlimited() -> None:
    """A model whose decoder does not hear audio (a plain VAE) has no speech region to find: the
    region is everywhere, so the compositing works as the frame-difference mask alone."""
    model = LiveHumanModel.random(TINY, seed=3).eval()
    for adapter in model.vae.decoder.audio_adapters:
        torch.nn.init.zeros_(adapter.out.conv.weight)
        torch.nn.init.zeros_(adapter.out.conv.bias)
    source = Conditioning.from_video(TorchBackend(model), moving_video(FPS)).source
    assert source.region.shape == source.frames.shape[:3] and (source.region == 255).all()


def test_each_window_reads_the_source_at_its_time(backend: TorchBackend, conditioning: Conditioning) -> None:
    source = conditioning.source
    generator = WindowGenerator(backend, conditioning, TINY)
    for start in (0, 5, source.num_latents - 1):
        expected = source.window_latents(start, 2) - conditioning.reference
        assert torch.allclose(generator.camera_window(start), expected)
    # A camera move on top moves the decoded frames (the tiny preset's camera_warp), leaving the
    # source's latents as they are, or moves the latents where the model renders it.
    generator.camera.change(parse_camera("pan_left"), 0)
    assert torch.allclose(generator.camera_window(30), source.window_latents(30, 2) - conditioning.reference)
    latents = dataclasses.replace(TINY, scheduler=dataclasses.replace(TINY.scheduler, camera_warp="latents"))
    rendered = WindowGenerator(backend, conditioning, latents)
    rendered.camera.change(parse_camera("pan_left"), 0)
    assert not torch.allclose(
        rendered.camera_window(30), source.window_latents(30, 2) - conditioning.reference
    )
    portrait = WindowGenerator(backend, Conditioning.from_portrait(backend, moving_video(1)[0]), TINY)
    assert not portrait.camera_window(3).any()


def test_a_render_re_dubs_the_video_for_as_long_as_the_audio(backend: TorchBackend) -> None:
    video = moving_video(25)
    audio = np.random.default_rng(0).normal(0, 0.1, 2 * 16_000).astype(np.float32)  # 2 s > the 1 s video
    frames, report = render_frames(backend, video[0], audio, TINY, video=video)
    assert frames.shape == (2 * FPS, 128, 128, 3) and report["frames"] == 2 * FPS
    with pytest.raises(ConfigError, match="capabilities.video"):
        render_frames(backend, video[0], audio, get_preset("tiny"), video=video)
