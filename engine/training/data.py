"""The synthetic talking-avatar data set: clips stored as recipes, rendered on demand.

A clip is speech (16 kHz int16), the per-frame state of the avatar (mouth from the speech's
phonemes, idle motion, camera) and its identity and attribute labels. Frames are not stored:
the renderer is deterministic and draws a 128x128 frame in about a millisecond, so a clip costs
a few hundred kB on disk instead of tens of MB, and every stage renders exactly what it needs.

Splits differ in everything the model must generalise over: identities (own seed), voices and
augmentations (``speech`` keeps them disjoint) and sentences (own seed).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.config import FPS, MODEL_SAMPLE_RATE
from engine.training import avatar, speech, visemes

SPLITS = ("train", "val")
# Seed offsets that keep the splits' random streams apart whatever the clip counts.
_SPLIT_SEED = {"train": 1_000_003, "val": 2_000_029}
_TRACK_KEYS = ("mouth_open", "mouth_width", "blink", "head_x", "head_y", "head_tilt", "breath")
_CAMERA_KEYS = ("cam_zoom", "cam_x", "cam_y")
INDEX_NAME = "index.json"


@dataclass
class Clip:
    """One (speech, avatar motion) pair with its ground truth."""

    identity: avatar.Identity
    attributes: avatar.Attributes
    track: avatar.Track
    audio: np.ndarray  # (N,) float32 at 16 kHz, N = frames * 640
    speech_mask: np.ndarray  # (F,) bool: a speech phoneme covers the frame's centre
    meta: dict  # text, voice, rate, pitch, camera preset/intensity, split, phonemes
    # The speech that follows a clip cut from a longer one (``evaluate.trim``): a live stream
    # would already hear it when drawing the clip's last frames, whose truth anticipates it.
    audio_after: np.ndarray | None = None

    @property
    def num_frames(self) -> int:
        return len(self.track)

    def frames(self, start: int = 0, stop: int | None = None, size: int = 128) -> np.ndarray:
        """Rendered frames [start, stop) as (F, size, size, 3) uint8."""
        stop = self.num_frames if stop is None else stop
        return avatar.render_clip(self.identity, self.attributes, self.track.frames(start, stop), size)

    def mouth_box(self, index: int, size: int = 128) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1) around the mouth in frame ``index``, for loss weighting."""
        return avatar.mouth_box(self.identity, self.track, index, size)

    def portrait(self, size: int = 128) -> np.ndarray:
        """The identity's neutral still: what a user would upload as the reference."""
        return avatar.portrait(self.identity, self.attributes, size)

    def save(self, path: Path) -> None:
        arrays = self.track.to_arrays()
        pcm = np.clip(np.round(self.audio * 32767.0), -32768, 32767).astype(np.int16)
        meta = dict(self.meta, identity=self.identity.to_dict(), attributes=self.attributes.to_dict())
        np.savez_compressed(path, audio=pcm, speech_mask=self.speech_mask, meta=json.dumps(meta), **arrays)

    @classmethod
    def load(cls, path: Path) -> Clip:
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
            track = avatar.Track.from_arrays({k: data[k] for k in (*_TRACK_KEYS, *_CAMERA_KEYS)})
            return cls(
                identity=avatar.Identity.from_dict(meta.pop("identity")),
                attributes=avatar.Attributes.from_dict(meta.pop("attributes")),
                track=track,
                audio=data["audio"].astype(np.float32) / 32767.0,
                speech_mask=data["speech_mask"].astype(bool),
                meta=meta,
            )


def make_clip(split: str, index: int, seed: int, camera_fraction: float = 0.0) -> Clip:
    """Clip ``index`` of ``split``: a pure function of its arguments, so generation resumes and
    parallelises without coordination."""
    rng = np.random.default_rng([seed, _SPLIT_SEED[split], index])
    utterance = speech.make_utterance(rng, "train" if split == "train" else "heldout")
    num_frames = len(utterance.samples) // (MODEL_SAMPLE_RATE // FPS)
    audio = utterance.samples[: num_frames * (MODEL_SAMPLE_RATE // FPS)].astype(np.float32)
    mouth_open, mouth_width = visemes.mouth_track(utterance.phonemes, num_frames, FPS)
    track = avatar.idle_track(rng, num_frames, mouth_open=mouth_open, mouth_width=mouth_width)
    preset, intensity = "static", 0.0
    if rng.random() < camera_fraction:
        preset = str(rng.choice(avatar.CAMERA_PRESETS[1:]))
        intensity = float(rng.uniform(0.2, 1.0))
        track.cam_zoom, track.cam_x, track.cam_y = avatar.camera_track(preset, intensity, num_frames, rng)
    return Clip(
        identity=avatar.Identity.sample(rng),
        attributes=avatar.Attributes.sample(rng),
        track=track,
        audio=audio,
        speech_mask=utterance.speech_mask(num_frames, FPS),
        meta={
            "split": split,
            "text": utterance.text,
            "voice": utterance.voice,
            "rate": utterance.rate,
            "pitch": utterance.pitch,
            "camera": {"preset": preset, "intensity": intensity},
            "phonemes": [[p.symbol, p.start, p.end] for p in utterance.phonemes],
        },
    )


def _write_clip(args: tuple[Path, str, int, int, float]) -> tuple[str, float]:
    path, split, index, seed, camera_fraction = args
    clip = make_clip(split, index, seed, camera_fraction)
    tmp = path.with_suffix(".tmp.npz")
    clip.save(tmp)
    tmp.replace(path)  # atomic: an interrupted run never leaves a half-written clip behind
    return path.name, clip.num_frames / FPS


def generate(
    out_dir: Path,
    counts: dict[str, int],
    seed: int = 0,
    camera_fraction: float = 0.0,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Write ``counts[split]`` clips per split under ``out_dir/<split>/`` and an index.

    Clips already on disk are kept, so an interrupted generation resumes where it stopped.
    """
    jobs = []
    for split, count in counts.items():
        (out_dir / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            path = out_dir / split / f"{i:05d}.npz"
            if not path.exists():
                jobs.append((path, split, i, seed, camera_fraction))
    total, done = len(jobs), 0
    if jobs:
        with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
            for _ in pool.map(_write_clip, jobs, chunksize=4):
                done += 1
                if progress:
                    progress(done, total)
    index = {
        "seed": seed,
        "camera_fraction": camera_fraction,
        "splits": {split: sorted(p.name for p in (out_dir / split).glob("[0-9]*.npz")) for split in counts},
    }
    (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=1) + "\n")
    return index


def clip_paths(data_dir: Path, split: str) -> list[Path]:
    index = json.loads((data_dir / INDEX_NAME).read_text())
    return [data_dir / split / name for name in index["splits"][split]]


def iter_clips(data_dir: Path, split: str) -> Iterator[Clip]:
    for path in clip_paths(data_dir, split):
        yield Clip.load(path)
