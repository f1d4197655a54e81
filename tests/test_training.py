"""Training: data recipes, losses that go down, exact resume, exact latent rescaling, a whole smoke run."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch

from engine.config import get_preset
from engine.models.livehuman import LiveHumanModel
from engine.models.vae import colour_to_latent, latent_to_colour
from engine.training import data
from engine.training.device import seeded_noise
from engine.training.distill_stage import STUDENT_STEPS
from engine.training.dit_stage import MouthProbe, aux_loss, flow_matching_loss
from engine.training.pipeline import ADDONS, PLANS, _encoded, train
from engine.training.stage import RunState, cosine_lr, run_stage, step_rng
from engine.training.vae_stage import vae_batch, vae_loss
from engine.training.windows import audio_tokens, encode_clips, sample_items, window_batch
from engine.weights import load_model


@pytest.fixture(scope="module")
def clips() -> list[data.Clip]:
    return [data.make_clip("train", i, seed=7) for i in range(2)]


@pytest.fixture(scope="module")
def model() -> LiveHumanModel:
    torch.manual_seed(0)
    return LiveHumanModel(get_preset("tiny"))


def test_clip_is_a_pure_function_of_its_index_and_round_trips(tmp_path, clips):
    again = data.make_clip("train", 0, seed=7)
    assert np.array_equal(again.audio, clips[0].audio)
    assert np.array_equal(again.track.mouth_open, clips[0].track.mouth_open)
    assert data.make_clip("val", 0, seed=7).meta["voice"] != "" and clips[0].identity != clips[1].identity
    clips[0].save(tmp_path / "c.npz")
    loaded = data.Clip.load(tmp_path / "c.npz")
    assert np.abs(loaded.audio - clips[0].audio).max() < 1e-4  # int16 storage
    assert np.array_equal(loaded.frames(0, 5), clips[0].frames(0, 5))
    assert loaded.meta["text"] == clips[0].meta["text"] and len(loaded.audio) == 640 * loaded.num_frames


def test_splits_hold_out_voices(clips):
    val = [data.make_clip("val", i, seed=7) for i in range(3)]
    assert {c.meta["voice"] for c in val}.isdisjoint({c.meta["voice"] for c in clips})


def _losses_fall(fn, params, steps: int = 12, lr: float = 2e-3) -> tuple[float, float]:
    opt = torch.optim.Adam(params, lr=lr)
    first = last = 0.0
    for i in range(steps):
        opt.zero_grad()
        loss = fn()
        loss.backward()
        opt.step()
        first = loss.item() if i == 0 else first
        last = loss.item()
    return first, last


def test_vae_loss_goes_down(clips, model):
    rng, gen = step_rng(0, "test", 0)
    video, weight = vae_batch(clips, rng, batch=2, crop=32, size=128)
    first, last = _losses_fall(
        lambda: vae_loss(model.vae, video, weight, 1e-6, gen)["loss"], model.vae.parameters()
    )
    assert last < 0.8 * first


def test_the_colour_shortcut_carries_block_colour_through_the_latent():
    cfg = get_preset("tiny").vae
    colour = torch.tensor([0.5, -0.25, 0.8]).view(1, 1, 3, 1, 1)
    frames = colour.expand(2, 8, 3, 128, 128)  # two latents of flat colour, frames-major
    latent = colour_to_latent(frames, cfg)
    assert latent.shape == (2, 2, cfg.latent_channels, 16, 16)
    assert torch.allclose(latent_to_colour(latent, cfg), frames, atol=1e-6)


def test_dit_flow_matching_and_mouth_probe_losses_go_down(clips, model):
    config = model.config
    encoded = encode_clips(model.eval(), clips, max_frames=41)
    rng, gen = step_rng(0, "test", 1)
    batch = window_batch(encoded, sample_items(encoded, rng, 4, config.scheduler.window), config, 4.0)
    probe = MouthProbe(config.audio.dim)

    def loss() -> torch.Tensor:
        features, tokens = audio_tokens(model, batch, config)
        g = torch.Generator().manual_seed(0)  # the same noise each step: the loss must fall on it
        return flow_matching_loss(model, batch, tokens, g) + aux_loss(probe, features, batch)

    params = [*model.dit.parameters(), *model.audio.parameters(), *probe.parameters()]
    first, last = _losses_fall(loss, params, steps=10, lr=1e-3)
    assert last < 0.8 * first
    assert batch.cond.shape[1] == 2 * config.dit.latent_channels + 1 and batch.aux_mask.sum() > 0


def test_the_rollout_samples_a_window_as_the_live_generator_does(clips):
    """The states the on-policy phase trains on and the latents the decoder stage decodes are the
    live sampler's: same conditioning, tokens, sigmas, pinned overlap and noise order."""
    from engine.generator import Conditioning, WindowGenerator
    from engine.runtime.torch_backend import TorchBackend
    from engine.sampler import FlowSampler
    from engine.training.rollout import sampler_states
    from engine.training.windows import encode_clip

    model = LiveHumanModel.random(get_preset("tiny"), seed=3).eval()
    config, k = model.config, 3
    encoded = [encode_clip(model, clips[0], max_frames=41)]
    batch = window_batch(encoded, [(0, k)], config, 0.0)
    _, tokens = audio_tokens(model, batch, config)
    sigmas = FlowSampler(config.sampler).sigmas(4)
    states = sampler_states(model, batch, tokens, sigmas, torch.Generator().manual_seed(11))
    assert len(states) == len(sigmas) + 1

    backend = TorchBackend(model)
    conditioning = Conditioning.from_portrait(backend, clips[0].portrait(config.height))
    assert torch.allclose(conditioning.reference, encoded[0].reference[None], atol=1e-5)
    live = WindowGenerator(backend, conditioning, config)
    replay = torch.Generator().manual_seed(11)  # the same draws, in the generator's order
    C, _, h, w = encoded[0].latents.shape
    live._noise = lambda first, count, step: torch.randn((1, C, count, h, w), generator=replay)
    O = config.scheduler.overlap
    state = dataclasses.replace(live.initial_state(), start=k - 1, tail=batch.x0[:, :, :O].clone())
    out = live.run(state, batch.audio[0].numpy(), 4)
    assert torch.allclose(out.boundaries[-1].tail, states[-1][:, :, O:], atol=1e-5)


def test_the_onpolicy_lipsync_loss_goes_down(clips):
    from engine.training.lipsync_stage import LipsyncTrainConfig, freeze_all_but_audio_path, onpolicy_step_fn

    model = LiveHumanModel.random(get_preset("tiny"), seed=3)
    encoded = encode_clips(model.eval(), clips, max_frames=41)
    params = freeze_all_but_audio_path(model, train_encoder=False)
    step = onpolicy_step_fn(model, encoded, LipsyncTrainConfig(batch=2), steps=4, seed=0)
    opt = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for _ in range(10):  # the same windows, levels and noise each time: the loss must fall on them
        opt.zero_grad()
        losses.append(step(0)["loss"])
        opt.step()
    assert losses[-1] < 0.8 * losses[0]


def _toy_stage(out, stop_at: int | None, device: str = "cpu") -> torch.Tensor:  # noqa: ANN001
    """A 10-step stage on ``device`` checkpointing every 3 steps, interrupted at ``stop_at``; its
    final weights (on the CPU)."""
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)

    def step(i: int) -> dict[str, float]:
        if i == stop_at:
            raise KeyboardInterrupt
        _, gen = step_rng(3, "toy", i)
        x = seeded_noise((8, 4), gen, net.weight.device)
        loss = (net(x) - x.sum(1, keepdim=True)).pow(2).mean()
        loss.backward()
        return {"loss": loss.item()}

    run_stage(out, "toy", {"net": net}, opt, 10, step, cosine_lr(1e-2, 10, warmup=2), save_every=3)
    return net.weight.detach().cpu().clone()


def test_a_stopped_stage_resumes_to_the_same_weights(tmp_path):
    whole = _toy_stage(tmp_path / "a", None)
    with pytest.raises(KeyboardInterrupt):
        _toy_stage(tmp_path / "b", 7)
    resumed = _toy_stage(tmp_path / "b", None)
    assert torch.equal(whole, resumed)
    assert (tmp_path / "b" / "logs" / "toy.jsonl").read_text().count("\n") >= 10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_stage_stopped_on_cuda_resumes_on_the_cpu(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _toy_stage(tmp_path / "b", 7, "cuda")  # stopped after its checkpoint at step 6
    resumed = _toy_stage(tmp_path / "b", None)
    assert torch.allclose(resumed, _toy_stage(tmp_path / "a", None), atol=1e-5)


def test_smoke_training_run_saves_a_loadable_model_and_resumes_as_done(tmp_path):
    out = train("tiny", tmp_path / "run", PLANS["smoke"], seed=0)
    model = load_model(out)
    assert model.config.name == "tiny"
    state = RunState(tmp_path / "run")
    for stage in ("data", "vae", "audio", "dit", "trajectories", "distill", *ADDONS):
        assert state.done(stage), stage
    assert (
        model.config.capabilities.camera
        and model.config.capabilities.video
        and model.config.capabilities.prompt
    )
    assert np.isfinite(state.data["stages"]["vae"]["psnr"])
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    train("tiny", tmp_path / "run", PLANS["smoke"], seed=0)  # everything done: nothing retrains
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime


def test_the_latent_cache_grows_with_the_clips_asked_for_never_a_stale_length(tmp_path, clips, model):
    encoded_counts = []

    def progress(label, done, total):  # noqa: ANN001
        encoded_counts.append(total)

    first = _encoded(tmp_path, model, clips[:1], "lipsync", 9, progress)
    both = _encoded(tmp_path, model, clips, "lipsync", 9, progress)
    assert encoded_counts == [1, 1], "the second call encodes only the clip the cache lacks"
    assert len(both) == 2 and torch.equal(both[0].latents, first[0].latents)
    assert torch.equal(both[1].latents, encode_clips(model, clips[1:], 9)[0].latents)
    fewer = _encoded(tmp_path, model, clips[:1], "lipsync", 9, progress)
    assert len(fewer) == 1 and encoded_counts == [1, 1]


def test_the_full_plan_distils_a_teacher_of_at_least_40_steps_into_4_2_1():
    assert PLANS["full"].distill.teacher_steps >= 40
    assert set(STUDENT_STEPS) == {4, 2, 1}


def test_the_lipsync_stage_teaches_an_old_model_audio_positions_and_touches_only_its_audio_path(tmp_path):
    from engine.training.pipeline import finetune
    from engine.weights import save_model

    old = LiveHumanModel.random(get_preset("tiny"), seed=2)  # positions at zero: an older model
    save_model(old, tmp_path / "old")
    out = finetune(tmp_path / "old", tmp_path / "run", PLANS["smoke"], addons=("lipsync",))
    new = load_model(out)
    assert new.dit.audio_position.abs().max() > 0 and new.config == old.config
    changed = {k for k, v in new.state_dict().items() if not torch.equal(v, old.state_dict()[k])}
    assert changed and all(k.startswith(("dit.audio_", "audio.")) or ".audio_attn." in k for k in changed)
    assert (tmp_path / "run" / "checkpoints" / "lipsync_onpolicy.pt").exists()
    # Run in place (the model inside the output directory), the stage's result replaces it.
    shutil.copytree(tmp_path / "run" / "lipsync_data", tmp_path / "in_place" / "lipsync_data")
    save_model(old, tmp_path / "in_place" / "model")
    finetune(tmp_path / "in_place" / "model", tmp_path / "in_place", PLANS["smoke"], addons=("lipsync",))
    assert load_model(tmp_path / "in_place" / "model").dit.audio_position.abs().max() > 0
    again = finetune(out, tmp_path / "again", PLANS["smoke"], addons=("lipsync",))  # nothing lacks
    assert torch.equal(load_model(again).dit.audio_position, new.dit.audio_position)
    # Asked to redo it, a model with lip-sync runs the on-policy phase alone, on the same path
    # (the clips are the run's own, copied to save making them again).
    shutil.copytree(tmp_path / "run" / "lipsync_data", tmp_path / "redo" / "lipsync_data")
    (tmp_path / "redo" / "stages").mkdir()
    shutil.copy(tmp_path / "run" / "stages" / "latents_lipsync.pt", tmp_path / "redo" / "stages")
    redone = load_model(finetune(out, tmp_path / "redo", PLANS["smoke"], addons=(), redo=("lipsync",)))
    checkpoints = {p.stem for p in (tmp_path / "redo" / "checkpoints").iterdir()}
    assert checkpoints == {"lipsync_onpolicy"}
    moved = {k for k, v in redone.state_dict().items() if not torch.equal(v, new.state_dict()[k])}
    assert moved and all(k.startswith("dit.audio_") or ".audio_attn." in k for k in moved)


def test_the_decoder_stage_teaches_the_decoder_to_hear_and_touches_only_the_decoder(tmp_path):
    from engine.training.decoder_stage import decoder_lacks_audio
    from engine.training.pipeline import finetune
    from engine.weights import save_model

    old = LiveHumanModel.random(get_preset("tiny"), seed=2)
    with torch.no_grad():  # a model from before the adapters: they load as zeros
        for p in old.vae.decoder.audio_adapters.parameters():
            p.zero_()
    assert decoder_lacks_audio(old)
    save_model(old, tmp_path / "old")
    out = finetune(tmp_path / "old", tmp_path / "run", PLANS["smoke"], addons=("decoder",))
    new = load_model(out)
    assert not decoder_lacks_audio(new) and new.config == old.config
    changed = {k for k, v in new.state_dict().items() if not torch.equal(v, old.state_dict()[k])}
    assert any(".audio_adapters." in k for k in changed)
    assert changed and all(k.startswith("vae.decoder.") for k in changed)
    again = finetune(out, tmp_path / "again", PLANS["smoke"], addons=("decoder",))  # nothing lacks
    assert not RunState(tmp_path / "again").done("decoder")
    assert all(torch.equal(v, new.state_dict()[k]) for k, v in load_model(again).state_dict().items())


def test_deepening_the_audio_encoder_keeps_its_features_and_records_the_depth():
    from engine.training.hearing_stage import deepen_encoder

    model = LiveHumanModel.random(get_preset("tiny"), seed=2)
    audio = torch.randn(1, model.audio.num_samples(12), generator=torch.Generator().manual_seed(0))
    before = model.audio(audio)
    deepen_encoder(model, 4)
    assert torch.equal(model.audio(audio), before)
    assert len(model.audio.blocks) == model.config.audio.num_layers == 4 and model.audio.receptive_frames == 5


def test_the_hearing_loss_goes_down(clips):
    from engine.training.hearing_stage import HearingTrainConfig, MouthHead, hearing_step_fn
    from engine.training.windows import clip_audio_track

    cfg = HearingTrainConfig(batch=4)
    model = LiveHumanModel.random(get_preset("tiny"), seed=3)
    head = MouthHead(model.config.audio.dim, cfg.head_frames)
    opt = torch.optim.Adam([*model.audio.parameters(), *head.parameters()], lr=2e-3)
    step = hearing_step_fn(model, head, [clip_audio_track(c) for c in clips], cfg, seed=0)
    losses = []
    for i in range(40):
        opt.zero_grad()
        losses.append(step(i)["loss"])
        opt.step()
    assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:8]), losses


def test_the_hearing_stage_deepens_the_encoder_and_resets_what_reads_it(tmp_path):
    from engine.training.decoder_stage import decoder_lacks_audio
    from engine.training.pipeline import finetune
    from engine.weights import save_model

    old = LiveHumanModel.random(get_preset("tiny"), seed=2)
    with torch.no_grad():
        old.dit.audio_position.normal_()  # as if the lip-sync stage had run
    save_model(old, tmp_path / "old")
    out = finetune(tmp_path / "old", tmp_path / "run", PLANS["smoke"], addons=("hearing",))
    new = load_model(out)
    depth = PLANS["smoke"].hearing.num_layers
    assert len(new.audio.blocks) == new.config.audio.num_layers == depth > old.config.audio.num_layers
    # The features changed, so the lip-sync and decoder stages must run again.
    assert not new.dit.audio_position.any() and decoder_lacks_audio(new)
    old_state, new_state = old.state_dict(), new.state_dict()
    added = set(new_state) - set(old_state)
    changed = {k for k in old_state if not torch.equal(new_state[k], old_state[k])}
    readers = ("dit.audio_position", "vae.decoder.audio_adapters.")
    assert added and all(k.startswith("audio.blocks.") for k in added)
    assert any(k.startswith("audio.") for k in changed)  # the old encoder trained too
    assert all(k.startswith(("audio.", *readers)) for k in changed)
    again = finetune(out, tmp_path / "again", PLANS["smoke"], addons=("hearing",))  # deep enough
    assert not RunState(tmp_path / "again").done("hearing")
    assert all(torch.equal(v, new.state_dict()[k]) for k, v in load_model(again).state_dict().items())
