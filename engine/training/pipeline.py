"""``livehuman train``: data, VAE, latents, audio probe, teacher, trajectories, student, add-ons.

Every stage writes its result under the output directory and is recorded in ``state.json``, so a
run that is stopped (or a session that ends) resumes at the stage, and within a stage at the
checkpoint, where it stopped. Seeds are fixed per step, so a resumed run draws the same batches.
The finished student is ``OUT/model`` (``config.json`` + ``model.safetensors``): pass it as
``--preset`` anywhere, or copy it to ``engine/assets/default_model``. ``finetune`` runs the
add-on stages a model lacks (camera branch, re-dubbing a video, prompt control) on a model
trained before, instead of retraining it. Both compute on ``device`` (a lent GPU, or the CPU)
with the same batches for a seed either way (``engine.training.device``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from tqdm import tqdm

from engine.config import ConfigError, ModelConfig, get_preset
from engine.models.livehuman import LiveHumanModel
from engine.training import data
from engine.training.camera_stage import (
    CameraTrainConfig,
    freeze_all_but_camera,
    init_camera_branch,
    live_step_fn,
)
from engine.training.decoder_stage import (
    DecoderTrainConfig,
    clip_features,
    decoder_lacks_audio,
    decoder_parameter_groups,
    decoder_step_fn,
)
from engine.training.device import module_device, on_cpu, training_device
from engine.training.distill_stage import DistillConfig, cache_trajectories, distill_step_fn
from engine.training.dit_stage import (
    DiTTrainConfig,
    MouthProbe,
    audio_step_fn,
    dit_step_fn,
    probe_correlation,
)
from engine.training.hearing_stage import (
    HearingTrainConfig,
    MouthHead,
    deepen_encoder,
    hearing_step_fn,
    lacks_depth,
    reset_readers,
)
from engine.training.lipsync_stage import LipsyncTrainConfig, freeze_all_but_audio_path, onpolicy_step_fn
from engine.training.prompt_stage import (
    PromptClip,
    PromptTrainConfig,
    freeze_all_but_text,
    make_prompt_clips,
    prompt_step_fn,
    widen_text_encoder,
)
from engine.training.redub_stage import RedubClip, RedubTrainConfig, make_redub_clips, redub_step_fn
from engine.training.rollout import teacher_forced_latents
from engine.training.stage import RunState, cosine_lr, run_stage
from engine.training.vae_stage import (
    VAETrainConfig,
    start_with_small_posterior_noise,
    vae_metrics,
    vae_step_fn,
)
from engine.training.windows import EncodedClip, clip_audio_track, encode_clips
from engine.weights import load_model, save_model

log = logging.getLogger(__name__)

ADDONS = (
    "hearing",
    "lipsync",
    "decoder",
    "camera",
    "video",
    "prompt",
)  # fine-tune stages, in the order they run


@dataclass(frozen=True)
class TrainPlan:
    """How much of everything; ``full`` fits an hour on a 2-core CPU, ``smoke`` a CI minute."""

    train_clips: int = 140
    val_clips: int = 16
    # Frames of each clip encoded for the DiT stages: enough windows per identity, at a cost
    # (the encoder at full resolution) that stays a few minutes.
    encode_frames: int = 161
    camera_fraction: float = 0.0
    vae: VAETrainConfig = field(default_factory=VAETrainConfig)
    dit: DiTTrainConfig = field(default_factory=DiTTrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    hearing: HearingTrainConfig = field(default_factory=HearingTrainConfig)
    lipsync: LipsyncTrainConfig = field(default_factory=LipsyncTrainConfig)
    decoder: DecoderTrainConfig = field(default_factory=DecoderTrainConfig)
    camera: CameraTrainConfig = field(default_factory=CameraTrainConfig)
    video: RedubTrainConfig = field(default_factory=RedubTrainConfig)
    prompt: PromptTrainConfig = field(default_factory=PromptTrainConfig)


PLANS = {
    "full": TrainPlan(),
    "smoke": TrainPlan(
        train_clips=3,
        val_clips=2,
        encode_frames=41,
        vae=VAETrainConfig(steps=12, batch=2, crop=32),
        dit=DiTTrainConfig(audio_steps=10, steps=30, batch=4),
        distill=DistillConfig(teacher_steps=4, trajectories=8, chunk=4, steps=6, batch=4),
        hearing=HearingTrainConfig(clips=3, steps=6, batch=2, num_layers=3),
        lipsync=LipsyncTrainConfig(clips=3, steps=6, batch=2, onpolicy_steps=4),
        decoder=DecoderTrainConfig(steps=6, batch=2, crop=32),
        camera=CameraTrainConfig(clips=2, steps=6, batch=2),
        video=RedubTrainConfig(clips=2, frames=21, steps=6, batch=2),
        prompt=PromptTrainConfig(clips=2, frames=21, steps=6, batch=2),
    ),
}


class _Progress:
    """One tqdm bar per stage, fed by the stages' callbacks."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self.name = ""

    def __call__(self, name: str, done: int, total: int, losses: dict[str, float] | None = None) -> None:
        if self.bar is None or name != self.name:
            self.close()
            self.bar, self.name = tqdm(total=total, desc=name, unit="step", leave=False), name
            self.bar.update(done - 1)
        self.bar.update(1)
        if losses:
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in losses.items() if k != "steps"}, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def train(
    preset: str,
    out_dir: Path,
    plan: TrainPlan,
    seed: int = 0,
    data_dir: Path | None = None,
    device: str = "cpu",
) -> Path:
    """Run (or resume) every stage on ``device`` (auto, cpu or cuda); returns the student's
    directory."""
    on = training_device(device)
    log.info("training on %s", on)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    state = RunState(out_dir)
    progress = _Progress()
    config = get_preset(preset)
    data_dir = data_dir or out_dir / "data"

    # 1. Data: clips as recipes (resumes clip by clip).
    if not state.done("data"):
        t0 = time.perf_counter()
        data.generate(
            data_dir,
            {"train": plan.train_clips, "val": plan.val_clips},
            seed=seed,
            camera_fraction=plan.camera_fraction,
            progress=lambda d, t: progress("data", d, t),
        )
        state.record(
            "data", seconds=round(time.perf_counter() - t0, 1), clips=plan.train_clips + plan.val_clips
        )
    train_clips = [c for c in data.iter_clips(data_dir, "train") if c.meta["camera"]["preset"] == "static"]
    val_clips = list(data.iter_clips(data_dir, "val"))

    # 2. VAE.
    model = _stage_model(out_dir, "vae", config, seed, on)
    if not state.done("vae"):
        t0 = time.perf_counter()
        cfg = plan.vae
        start_with_small_posterior_noise(model.vae)
        # The decoder's audio adapters stay the identity here (they would learn silence): the
        # decoder stage teaches them once the audio encoder they read is trained.
        model.vae.decoder.audio_adapters.requires_grad_(False)
        params = [p for p in model.vae.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        tail = run_stage(
            out_dir, "vae", {"vae": model.vae}, opt, cfg.steps,
            vae_step_fn(model.vae, train_clips, cfg, config.height, seed),
            cosine_lr(cfg.lr, cfg.steps), progress=progress,
        )  # fmt: skip
        metrics = vae_metrics(model.vae, val_clips[:4], config.height)
        save_model(model, out_dir / "stages" / "vae")
        state.record("vae", seconds=round(time.perf_counter() - t0, 1), **tail, **metrics)

    # 3. Latents of every clip, once.
    encoded = _encoded(out_dir, model, train_clips, "train", plan.encode_frames, progress)
    encoded_val = _encoded(out_dir, model, val_clips, "val", plan.encode_frames, progress)

    # 4. Audio probe, then the teacher DiT with the probe kept on.
    probe = MouthProbe(config.audio.dim).to(on)
    probe_path = out_dir / "stages" / "probe.pt"
    if probe_path.exists():
        probe.load_state_dict(torch.load(probe_path, weights_only=True, map_location="cpu"))
    cfg = plan.dit
    if not state.done("audio"):
        t0 = time.perf_counter()
        params = [*model.audio.parameters(), *probe.parameters()]
        opt = torch.optim.AdamW(params, lr=cfg.audio_lr)
        tail = run_stage(
            out_dir, "audio", {"audio": model.audio, "probe": probe}, opt, cfg.audio_steps,
            audio_step_fn(model, probe, encoded, config, cfg, seed),
            cosine_lr(cfg.audio_lr, cfg.audio_steps), progress=progress,
        )  # fmt: skip
        _save_probe(probe, probe_path)
        corr = probe_correlation(model, probe, encoded_val, config)
        save_model(model, out_dir / "stages" / "audio")
        state.record("audio", seconds=round(time.perf_counter() - t0, 1), **tail, probe_corr_val=corr)
        model = _stage_model(out_dir, "audio", config, seed, on)
    if not state.done("dit"):
        t0 = time.perf_counter()
        params = [*model.dit.parameters(), *model.audio.parameters(), *probe.parameters()]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
        tail = run_stage(
            out_dir, "dit", {"dit": model.dit, "audio": model.audio, "probe": probe}, opt, cfg.steps,
            dit_step_fn(model, probe, encoded, config, cfg, seed),
            cosine_lr(cfg.lr, cfg.steps), progress=progress,
        )  # fmt: skip
        _save_probe(probe, probe_path)
        corr = probe_correlation(model, probe, encoded_val, config)
        save_model(model, out_dir / "stages" / "teacher")
        state.record("dit", seconds=round(time.perf_counter() - t0, 1), **tail, probe_corr_val=corr)
    teacher = _stage_model(out_dir, "teacher", config, seed, on)

    # 5. Teacher trajectories (cached on disk), then the student.
    dcfg = plan.distill
    t0 = time.perf_counter()
    trajectories = cache_trajectories(
        teacher, encoded, dcfg, out_dir / "trajectories", seed, lambda d, t: progress("teacher", d, t)
    )
    if not state.done("trajectories"):
        state.record("trajectories", seconds=round(time.perf_counter() - t0, 1), count=dcfg.trajectories)
    student = _stage_model(out_dir, "teacher", config, seed, on)
    if not state.done("distill"):
        t0 = time.perf_counter()
        params = [*student.dit.parameters(), *student.audio.parameters(), *probe.parameters()]
        opt = torch.optim.AdamW(params, lr=dcfg.lr, weight_decay=0.01)
        tail = run_stage(
            out_dir, "distill", {"dit": student.dit, "audio": student.audio, "probe": probe}, opt, dcfg.steps,
            distill_step_fn(student, probe, encoded, trajectories, config, dcfg, cfg.mouth_weight, seed),
            cosine_lr(dcfg.lr, dcfg.steps, warmup=20), progress=progress,
        )  # fmt: skip
        save_model(student, out_dir / "model")
        state.record("distill", seconds=round(time.perf_counter() - t0, 1), **tail)
    progress.close()
    return finetune(out_dir / "model", out_dir, plan, seed, device=device)


def finetune(
    model_dir: Path,
    out_dir: Path,
    plan: TrainPlan,
    seed: int = 0,
    addons: tuple[str, ...] = ADDONS,
    redo: tuple[str, ...] = (),
    device: str = "cpu",
) -> Path:
    """The add-on stages of ``addons`` a trained model lacks, in ``ADDONS`` order, each with the
    rest of the model frozen: hearing (a deeper audio encoder taught the mouth directly; it resets
    the next two, which read its features), lip-sync (the audio path with its token positions, for
    a model trained before they existed), the VAE decoder's audio adapters, the camera
    branch (clips with camera moves), re-dubbing a video (the same branch, on source/re-dub
    pairs), prompt control (clips rendered with and without the prompt's attributes). Those in
    ``redo`` run even where the model has them (a better recipe for a shipped model). Writes
    ``OUT/model``, which declares the capabilities; resumable. Trains on ``device`` (auto, cpu or
    cuda)."""
    unknown = sorted((set(addons) | set(redo)) - set(ADDONS))
    if unknown:
        raise ConfigError(f"addons: unknown {', '.join(unknown)}; choose from {', '.join(ADDONS)}")
    on = training_device(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = RunState(out_dir)
    progress = _Progress()
    model = load_model(model_dir).to(on)
    stages = {
        "hearing": _train_hearing,
        "lipsync": _train_lipsync,
        "decoder": _train_decoder,
        "camera": _train_camera,
        "video": _train_video,
        "prompt": _train_prompt,
    }
    ran = []
    for name in ADDONS:  # each stage's lack is judged after the ones before it (hearing resets two)
        if name in redo or (name in addons and _lacks(model, name, plan)):
            model = _addon_stage(name, stages[name], model, out_dir, plan, seed, state, progress)
            ran.append(name)
    progress.close()
    target = out_dir / "model"
    if ran or model_dir.resolve() != target.resolve():
        save_model(model, target)
    return target


def _lacks(model: LiveHumanModel, addon: str, plan: TrainPlan) -> bool:
    """Hearing is missing while the audio encoder is shallower than the plan's, lip-sync while the
    audio positions are still zero, the decoder's audio adapters while they are; the rest are
    capabilities."""
    if addon == "hearing":
        return lacks_depth(model, plan.hearing)
    if addon == "lipsync":
        return not bool(model.dit.audio_position.detach().any())
    if addon == "decoder":
        return decoder_lacks_audio(model)
    return not getattr(model.config.capabilities, addon)


def _with_capability(model: LiveHumanModel, **flags: bool) -> LiveHumanModel:
    capabilities = dataclasses.replace(model.config.capabilities, **flags)
    model.config = dataclasses.replace(model.config, capabilities=capabilities)
    return model


_AddOn = Callable[[LiveHumanModel, Path, TrainPlan, int, _Progress], dict[str, float]]


def _addon_stage(
    name: str,
    train: _AddOn,
    model: LiveHumanModel,
    out_dir: Path,
    plan: TrainPlan,
    seed: int,
    state: RunState,
    progress: _Progress,
) -> LiveHumanModel:
    """One add-on stage: when done, the model it saved; else ``train`` fine-tunes ``model`` in place
    (returning its final losses) and the result is saved declaring the capability ``name`` (if
    it is one)."""
    path = out_dir / "stages" / name
    if state.done(name):
        return load_model(path).to(module_device(model))
    t0 = time.perf_counter()
    tail = train(model, out_dir, plan, seed, progress)
    if hasattr(model.config.capabilities, name):
        model = _with_capability(model, **{name: True})
    save_model(model, path)
    state.record(name, seconds=round(time.perf_counter() - t0, 1), **tail)
    return model


class _StageSize(Protocol):
    lr: float
    steps: int


@dataclass(frozen=True)
class _Size:
    """The size of a stage's second phase (its config holds the first's as ``steps``, ``lr``)."""

    steps: int
    lr: float


def _fine_tune(
    out_dir: Path,
    name: str,
    modules: dict[str, nn.Module],
    params: list,
    cfg: _StageSize,
    step_fn: Callable[[int], dict[str, float]],
    progress: _Progress,
) -> dict[str, float]:
    """What every add-on stage runs: AdamW without weight decay on ``params`` (tensors, or groups
    with an ``lr_scale``) under a cosine schedule with a short warm-up, checkpointing ``modules``."""
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    lr_at = cosine_lr(cfg.lr, cfg.steps, warmup=20)
    return run_stage(out_dir, name, modules, opt, cfg.steps, step_fn, lr_at, progress=progress)


def _camera_clips(
    model: LiveHumanModel, out_dir: Path, plan: TrainPlan, seed: int, progress: _Progress
) -> list[EncodedClip]:
    """The camera stage's clips, encoded (generated and cached on first use): the video stage
    mixes them in so the branch they share keeps following camera moves."""
    camera_dir = out_dir / "camera_data"
    data.generate(
        camera_dir, {"train": plan.camera.clips}, seed=seed + 1, camera_fraction=1.0,
        progress=lambda d, t: progress("camera data", d, t),
    )  # fmt: skip
    clips = list(data.iter_clips(camera_dir, "train"))
    return _encoded(out_dir, model, clips, "camera", plan.encode_frames, progress)


def _portrait_clips(out_dir: Path, plan: TrainPlan, seed: int, progress: _Progress) -> list[data.Clip]:
    """The lip-sync and decoder stages' clips: the DiT stage's portrait clip recipes (static
    camera) for the same seed, generated on first use."""
    data_dir = out_dir / "lipsync_data"
    data.generate(
        data_dir, {"train": plan.lipsync.clips}, seed=seed, camera_fraction=0.0,
        progress=lambda d, t: progress("data", d, t),
    )  # fmt: skip
    return list(data.iter_clips(data_dir, "train"))


def _train_hearing(
    model: LiveHumanModel, out_dir: Path, plan: TrainPlan, seed: int, progress: _Progress
) -> dict[str, float]:
    cfg = plan.hearing
    data_dir = out_dir / "hearing_data"
    data.generate(
        data_dir, {"train": cfg.clips}, seed=seed, progress=lambda d, t: progress("hearing data", d, t)
    )
    tracks = [clip_audio_track(clip) for clip in data.iter_clips(data_dir, "train")]
    with torch.random.fork_rng(devices=[]):  # the new blocks and the head start from the seed
        torch.manual_seed(seed)
        deepen_encoder(model, cfg.num_layers)
        head = MouthHead(model.config.audio.dim, cfg.head_frames).to(module_device(model))
    reset_readers(model)
    model.requires_grad_(False)
    model.audio.requires_grad_(True)
    params = [*model.audio.parameters(), *head.parameters()]
    step = hearing_step_fn(model, head, tracks, cfg, seed)
    return _fine_tune(out_dir, "hearing", {"audio": model.audio, "head": head}, params, cfg, step, progress)


def _train_lipsync(
    model: LiveHumanModel, out_dir: Path, plan: TrainPlan, seed: int, progress: _Progress
) -> dict[str, float]:
    """Plain flow matching while the audio positions are untaught (the on-policy states need a
    model that already samples a mouth), then the on-policy phase; so a model that has lip-sync
    and is asked to redo it runs only the latter."""
    cfg = plan.lipsync
    clips = _portrait_clips(out_dir, plan, seed, progress)
    encoded = _encoded(out_dir, model, clips, "lipsync", plan.encode_frames, progress)
    params = freeze_all_but_audio_path(model, cfg.train_encoder)
    modules = {"dit": model.dit, "audio": model.audio}
    tail = {}
    if _lacks(model, "lipsync", plan):
        step = live_step_fn(
            model, encoded, model.config, cfg.batch, cfg.mouth_weight, seed, "lipsync", cfg.train_encoder
        )
        tail = _fine_tune(out_dir, "lipsync", modules, params, cfg, step, progress)
    params = freeze_all_but_audio_path(model, train_encoder=False)  # the DiT's part alone
    onpolicy = _Size(cfg.onpolicy_steps, cfg.onpolicy_lr)
    step = onpolicy_step_fn(model, encoded, cfg, model.config.scheduler.steps, seed)
    late = _fine_tune(out_dir, "lipsync_onpolicy", {"dit": model.dit}, params, onpolicy, step, progress)
    return {**tail, **{f"onpolicy_{k}": v for k, v in late.items()}}


def _train_decoder(
    model: LiveHumanModel, out_dir: Path, plan: TrainPlan, seed: int, progress: _Progress
) -> dict[str, float]:
    cfg = plan.decoder
    clips = _portrait_clips(out_dir, plan, seed, progress)
    encoded = _encoded(out_dir, model, clips, "lipsync", plan.encode_frames, progress)
    model.eval()
    generated = teacher_forced_latents(
        model, encoded, cfg.sample_steps, seed, progress=lambda d, t: progress("dit latents", d, t)
    )
    features = [clip_features(model, clip) for clip in clips]
    with on_cpu(model.vae.decoder):  # a seed re-initialises the same adapters on any device
        params = decoder_parameter_groups(model)
    step = decoder_step_fn(model, clips, encoded, generated, features, cfg, seed)
    return _fine_tune(out_dir, "decoder", {"decoder": model.vae.decoder}, params, cfg, step, progress)


def _train_camera(
    model: LiveHumanModel, out_dir: Path, plan: TrainPlan, seed: int, progress: _Progress
) -> dict[str, float]:
    cfg = plan.camera
    encoded = _camera_clips(model, out_dir, plan, seed, progress)
    with on_cpu(model.dit):  # a seed initialises the same branch on any device
        init_camera_branch(model.dit)
    params = freeze_all_but_camera(model)
    step = live_step_fn(model, encoded, model.config, cfg.batch, cfg.mouth_weight, seed, "camera")
    return _fine_tune(out_dir, "camera", {"dit": model.dit}, params, cfg, step, progress)


def _train_video(
    model: LiveHumanModel, out_dir: Path, plan: TrainPlan, seed: int, progress: _Progress
) -> dict[str, float]:
    cfg = plan.video
    camera_clips = _camera_clips(model, out_dir, plan, seed, progress)
    cache = out_dir / "stages" / "latents_video.pt"
    if cache.exists():
        clips = [
            RedubClip(EncodedClip(**c["target"]), c["source"]) for c in torch.load(cache, weights_only=False)
        ]
    else:
        model.eval()
        clips = make_redub_clips(model, cfg, seed, lambda d, t: progress("video latents", d, t))
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save([dataclasses.asdict(c) for c in clips], cache)
    params = freeze_all_but_camera(model)
    step = redub_step_fn(model, clips, camera_clips, model.config, cfg, seed)
    return _fine_tune(out_dir, "video", {"dit": model.dit}, params, cfg, step, progress)


def _train_prompt(
    model: LiveHumanModel, out_dir: Path, plan: TrainPlan, seed: int, progress: _Progress
) -> dict[str, float]:
    cfg = plan.prompt
    cache = out_dir / "stages" / "latents_prompt.pt"
    if cache.exists():
        clips = [
            PromptClip(**(c | {k: EncodedClip(**c[k]) for k in ("before", "after", "between")}))
            for c in torch.load(cache, weights_only=False)
        ]
    else:
        model.eval()
        clips = make_prompt_clips(model, cfg, seed, lambda d, t: progress("prompt latents", d, t))
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save([dataclasses.asdict(c) | {"target": c.target, "start": c.start} for c in clips], cache)
    widen_text_encoder(model)
    params = freeze_all_but_text(model)
    step = prompt_step_fn(model, clips, model.config, cfg, seed)
    return _fine_tune(out_dir, "prompt", {"dit": model.dit, "text": model.text}, params, cfg, step, progress)


def _stage_model(
    out_dir: Path, stage: str, config: ModelConfig, seed: int, device: torch.device
) -> LiveHumanModel:
    """The model as a finished stage left it, or a fresh one (initialised on the CPU, so the same
    on any device) if that stage has not finished; on ``device``."""
    path = out_dir / "stages" / stage
    if (path / "model.safetensors").exists():
        return load_model(path).to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LiveHumanModel(config).to(device)


def _encoded(
    out_dir: Path, model: LiveHumanModel, clips: list[data.Clip], split: str, frames: int, progress: _Progress
) -> list[EncodedClip]:
    """The clips' latents, cached in clip order: a run asked for more clips than the cache holds
    (a stage's ``clips`` raised on resume) encodes only the new ones, and one asked for fewer takes
    the first ones, never a stale list of another length."""
    path = out_dir / "stages" / f"latents_{split}.pt"
    cached = [EncodedClip(**item) for item in torch.load(path, weights_only=False)] if path.exists() else []
    if len(cached) >= len(clips):
        return cached[: len(clips)]
    model.eval()
    encoded = cached + encode_clips(
        model, clips[len(cached) :], frames, lambda d, t: progress(f"latents {split}", d, t)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save([dataclasses.asdict(e) for e in encoded], path)
    return encoded


def _save_probe(probe: MouthProbe, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in probe.state_dict().items()}, path)
