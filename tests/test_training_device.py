"""Training on a lent GPU: the device is chosen in one line, batches are drawn on the CPU so a seed
means the same run anywhere, and what a GPU run writes loads on a CPU."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch

from engine.config import ConfigError, get_preset
from engine.models.livehuman import LiveHumanModel
from engine.training import data
from engine.training.camera_stage import live_step_fn
from engine.training.decoder_stage import DecoderTrainConfig, clip_features, decoder_step_fn
from engine.training.device import on_cpu, seeded_noise, training_device
from engine.training.distill_stage import DistillConfig, cache_trajectories, distill_step_fn
from engine.training.dit_stage import (
    DiTTrainConfig,
    MouthProbe,
    audio_step_fn,
    dit_step_fn,
    probe_correlation,
)
from engine.training.hearing_stage import HearingTrainConfig, MouthHead, deepen_encoder, hearing_step_fn
from engine.training.lipsync_stage import LipsyncTrainConfig, onpolicy_step_fn
from engine.training.pipeline import ADDONS, PLANS, train
from engine.training.prompt_stage import PromptClip, PromptTrainConfig, prompt_step_fn, widen_text_encoder
from engine.training.prompts import sample_start, sample_target
from engine.training.redub_stage import RedubClip, RedubTrainConfig, redub_step_fn
from engine.training.rollout import teacher_forced_latents
from engine.training.stage import RunState, step_rng
from engine.training.vae_stage import VAETrainConfig, vae_metrics, vae_step_fn
from engine.training.windows import clip_audio_track, encode_clips, sample_items, window_batch
from engine.weights import load_model
from livehuman.cli import main

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_auto_is_the_gpu_when_there_is_one_and_unknown_devices_are_one_line() -> None:
    assert training_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert training_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="choose from auto, cpu, cuda"):
        training_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_train_on_cuda_without_a_gpu_is_one_line_before_any_work(tmp_path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "run"
    for extra in ([], ["--finetune", "default"]):
        assert main(["train", "--device", "cuda", "--plan", "smoke", "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("livehuman: error: device: 'cuda'") and "\n" not in err, err
    assert not out.exists(), "nothing was started"


def test_a_window_batch_moves_whole_and_keeps_its_items() -> None:
    model = LiveHumanModel.random(get_preset("tiny"))
    encoded = encode_clips(model, [data.make_clip("train", 0, seed=7)], 21)
    _, gen = step_rng(0, "toy", 0)
    batch = window_batch(encoded, [(0, 0), (0, 1)], model.config, 4.0, 0.1, gen)
    moved = batch.to(torch.device("meta"))  # a device with no data: every tensor must go there
    tensors = {k: v for k, v in vars(moved).items() if isinstance(v, torch.Tensor)}
    assert len(tensors) == 7 and all(t.device.type == "meta" for t in tensors.values())
    assert all(tensors[k].shape == getattr(batch, k).shape for k in tensors)
    assert moved.items == batch.items and batch.x0.device.type == "cpu"


def test_seeded_noise_is_the_cpu_generators_draw() -> None:
    _, first = step_rng(0, "toy", 3)
    _, second = step_rng(0, "toy", 3)
    assert torch.equal(seeded_noise((2, 5), first, torch.device("cpu")), torch.randn(2, 5, generator=second))


# What a computation on the meta device (shapes, no data) fails with once it is done and a number
# or a CPU copy is read out of it; a tensor left on the CPU fails earlier, with "expected device".
_READ_OUT = r"item\(\) cannot be called on meta tensors|Cannot copy out of meta tensor"


def _reaches_its_result(run: Callable[[], object]) -> None:
    with pytest.raises((RuntimeError, NotImplementedError), match=_READ_OUT):
        run()


def test_every_training_step_and_cache_runs_with_the_model_on_another_device(tmp_path) -> None:  # noqa: ANN001
    """Without a GPU: the model on the meta device stands for it, since torch refuses to mix a
    meta tensor with a CPU one (a CPU scalar apart) as CUDA does. Each stage's step must build its
    batch on the CPU, move it, and run forward and backward before its loss is read; each cache
    must compute on the model's device and bring its result back."""
    clip = data.make_clip("train", 0, seed=7)
    cpu = LiveHumanModel.random(get_preset("tiny"))
    config = cpu.config
    encoded = encode_clips(cpu, [clip], 41)
    meta = copy.deepcopy(cpu).to("meta")
    probe = MouthProbe(config.audio.dim).to("meta")
    head = MouthHead(config.audio.dim, 5).to("meta")
    e = encoded[0]
    items = sample_items(encoded, np.random.default_rng(0), 4, config.scheduler.window)
    window = e.latents[:, : config.scheduler.window]
    trajectories = {"items": torch.tensor(items), "noise": torch.randn(4, *window.shape)}
    trajectories["sample"] = trajectories["noise"].clone()
    rng = np.random.default_rng(0)
    target = sample_target(rng)
    prompt_clips = [PromptClip(e, e, target, sample_start(rng, target), 0.5, e)]
    steps = {
        "vae": vae_step_fn(meta.vae, [clip], VAETrainConfig(batch=2, crop=32), config.height, 0),
        "audio": audio_step_fn(meta, probe, encoded, config, DiTTrainConfig(batch=2), 0),
        "dit": dit_step_fn(meta, probe, encoded, config, DiTTrainConfig(batch=2), 0),
        "distill": distill_step_fn(
            meta, probe, encoded, trajectories, config, DistillConfig(batch=2), 4.0, 0
        ),
        "hearing": hearing_step_fn(meta, head, [clip_audio_track(clip)], HearingTrainConfig(batch=2), 0),
        "camera": live_step_fn(meta, encoded, config, 2, 4.0, 0, "camera"),
        "onpolicy": onpolicy_step_fn(meta, encoded, LipsyncTrainConfig(batch=2), 4, 0),
        "decoder": decoder_step_fn(
            meta, [clip], encoded, [e.latents], [clip_features(cpu, clip)], DecoderTrainConfig(batch=2), 0
        ),
        "video": redub_step_fn(meta, [RedubClip(e, e.latents)], [], config, RedubTrainConfig(batch=2), 0),
        "prompt": prompt_step_fn(meta, prompt_clips, config, PromptTrainConfig(batch=2), 0),
    }
    for name, step in steps.items():
        meta.zero_grad(set_to_none=True)
        _reaches_its_result(lambda step=step: step(0))
        grads = [p.grad for p in meta.parameters() if p.grad is not None]
        assert grads and all(g.device.type == "meta" for g in grads), f"{name}: no backward on the device"
    _reaches_its_result(lambda: encode_clips(meta, [clip], 21))
    _reaches_its_result(lambda: clip_features(meta, clip))
    _reaches_its_result(lambda: teacher_forced_latents(meta, encoded, 2, seed=0))
    _reaches_its_result(lambda: probe_correlation(meta, probe, encoded, config))
    _reaches_its_result(lambda: vae_metrics(meta.vae, [clip], config.height, frames=9))
    teacher = DistillConfig(teacher_steps=2, trajectories=2, chunk=2)
    _reaches_its_result(lambda: cache_trajectories(meta, encoded, teacher, tmp_path, seed=0))
    # Stages that add weights add them where the model is.
    deepen_encoder(meta, config.audio.num_layers + 1)
    widen_text_encoder(meta, config.text.max_tokens + 8)
    assert all(p.device.type == "meta" for p in meta.parameters())


@needs_cuda
def test_initialising_on_the_cpu_keeps_the_parameters_an_optimizer_holds() -> None:
    net = torch.nn.Linear(3, 2).cuda()
    params = list(net.parameters())
    with on_cpu(net):
        assert net.weight.device.type == "cpu"
        torch.manual_seed(0)
        net.reset_parameters()
    assert [id(p) for p in net.parameters()] == [id(p) for p in params]
    assert net.weight.device.type == "cuda"
    torch.manual_seed(0)
    assert torch.equal(net.weight.cpu(), torch.nn.Linear(3, 2).weight)


@needs_cuda
def test_a_step_on_cuda_draws_the_cpu_steps_batch_and_noise() -> None:
    """The same weights and seed give the same loss on both devices, to rounding (TF32
    convolutions): the batch, the noise levels and the noise are the CPU generators' draws."""
    cpu = LiveHumanModel.random(get_preset("tiny"))
    gpu = copy.deepcopy(cpu).cuda()
    encoded = encode_clips(cpu, [data.make_clip("train", i, seed=7) for i in range(2)], 41)
    cfg, probe = DiTTrainConfig(batch=2), MouthProbe(cpu.config.audio.dim)
    lipsync = LipsyncTrainConfig(batch=2)
    losses = {}
    for device, model, head in (("cpu", cpu, probe), ("cuda", gpu, copy.deepcopy(probe).cuda())):
        losses[device] = {
            "dit": dit_step_fn(model, head, encoded, model.config, cfg, seed=0)(5)["loss"],
            "onpolicy": onpolicy_step_fn(model, encoded, lipsync, 4, seed=0)(5)["loss"],
        }
    for name, loss in losses["cuda"].items():
        assert loss == pytest.approx(losses["cpu"][name], rel=1e-2), name


@needs_cuda
def test_a_smoke_run_on_cuda_writes_a_model_that_loads_on_the_cpu(tmp_path) -> None:  # noqa: ANN001
    torch.cuda.reset_peak_memory_stats()
    out = train("tiny", tmp_path / "gpu", PLANS["smoke"], seed=0, device="cuda")
    assert torch.cuda.max_memory_allocated() > 0, "the run computed on the GPU"
    state = RunState(tmp_path / "gpu")
    assert all(state.done(s) for s in ("vae", "audio", "dit", "distill", *ADDONS))
    model = load_model(out)
    assert all(p.device.type == "cpu" and torch.isfinite(p).all() for p in model.parameters())
