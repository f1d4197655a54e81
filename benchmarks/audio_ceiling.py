"""Lip-sync ceilings: how much of the mouth a model's audio features hold, and how well the
mouth-opening estimator reads a perfect mouth.

    python benchmarks/audio_ceiling.py --preset default --out benchmarks/results

Every part of the model that moves the mouth (the DiT's audio cross-attention, the VAE decoder's
audio adapters) reads the audio encoder's per-frame features, so no training downstream can make
the mouth follow speech better than those features can tell it. This fits probes from each
frame's features (with ``--context`` frames either side) to the renderer's true mouth opening on
training clips and scores them on held-out clips (voices, sentences and augmentations no training
clip has), over all frames and over speech frames, as ``livehuman eval`` does: a ridge
regression, and a small MLP for what a non-linear reader could get. The estimator line is
``livehuman eval``'s measure applied to the ground-truth renders: the most any video can score.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import environment, write_result  # noqa: E402
from engine.models.livehuman import LiveHumanModel  # noqa: E402
from engine.training import data, evaluate  # noqa: E402
from engine.training.data import Clip  # noqa: E402
from engine.training.decoder_stage import clip_features  # noqa: E402
from engine.training.estimators import pearson  # noqa: E402
from engine.weights import resolve_model  # noqa: E402

log = logging.getLogger("bench.audio_ceiling")


def with_context(features: np.ndarray, context: int) -> np.ndarray:
    """(F, D) -> (F, (2 context + 1) D): each frame with its neighbours (edges repeated)."""
    padded = np.pad(features, ((context, context), (0, 0)), mode="edge")
    return np.concatenate([padded[i : i + len(features)] for i in range(2 * context + 1)], axis=1)


def probe_inputs(model: LiveHumanModel, clips: list[Clip], context: int) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        x = [with_context(clip_features(model, clip).numpy(), context) for clip in clips]
    y = [np.asarray(clip.track.mouth_open, np.float64) for clip in clips]
    return np.concatenate(x), np.concatenate(y)


def scores(predicted: np.ndarray, truth: np.ndarray, speech: np.ndarray) -> dict[str, float]:
    return {
        "lipsync_corr": round(pearson(predicted, truth), 4),
        "lipsync_corr_speech": round(pearson(predicted[speech], truth[speech]), 4),
    }


def ridge(x: np.ndarray, y: np.ndarray, x_val: np.ndarray, strength: float = 30.0) -> np.ndarray:
    mean, std = x.mean(0), x.std(0) + 1e-6
    xs = (x - mean) / std
    weights = np.linalg.solve(xs.T @ xs + strength * np.eye(xs.shape[1]), xs.T @ (y - y.mean()))
    return ((x_val - mean) / std) @ weights


def mlp(x: np.ndarray, y: np.ndarray, x_val: np.ndarray, steps: int, seed: int) -> np.ndarray:
    torch.manual_seed(seed)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    net = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], 256), torch.nn.GELU(), torch.nn.Dropout(0.2), torch.nn.Linear(256, 1)
    )
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-2)
    for _ in range(steps):
        index = torch.randint(0, len(xt), (256,))
        loss = (net(xt[index])[:, 0] - yt[index]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        return net(torch.tensor(x_val, dtype=torch.float32))[:, 0].numpy()


def run(args: argparse.Namespace) -> dict[str, Any]:
    model = resolve_model(args.preset)
    train = [data.make_clip("train", index, args.train_seed) for index in range(args.train_clips)]
    held_out = evaluate.heldout_clips(args.clips, seed=args.seed)
    log.info("%d training clips, %d held-out clips", len(train), len(held_out))
    x, y = probe_inputs(model, train, args.context)
    x_val, y_val = probe_inputs(model, held_out, args.context)
    speech = np.concatenate([clip.speech_mask for clip in held_out]).astype(bool)
    rendered = [evaluate.score(clip.frames(size=model.config.height), clip) for clip in held_out]
    return {
        "bench": "audio_ceiling",
        "preset": args.preset,
        "environment": environment(),
        "command": " ".join(sys.argv),
        "train_clips": len(train),
        "held_out": [clip.meta.get("text", "") for clip in held_out],
        "held_out_frames": int(len(y_val)),
        "context_frames": args.context,
        "ridge_probe": scores(ridge(x, y, x_val), y_val, speech),
        "mlp_probe": scores(mlp(x, y, x_val, args.mlp_steps, args.seed), y_val, speech),
        "estimator_on_truth": {k: round(v, 4) for k, v in evaluate.lipsync(rendered).items()},
        "note": "probes score the true mouth opening; the estimator line is the eval's measure "
        "on ground-truth renders. Not comparable to SyncNet's scores.",
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="default", help="model name or directory (default: the shipped)")
    parser.add_argument("--train-clips", type=int, default=120, help="training clips the probes fit on")
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--clips", type=int, default=8, help="held-out clips the probes are scored on")
    parser.add_argument("--seed", type=int, default=5, help="held-out clip seed (and the MLP's)")
    parser.add_argument("--context", type=int, default=2, help="feature frames either side")
    parser.add_argument("--mlp-steps", type=int, default=3000)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    torch.set_num_threads(2)
    result = run(args)
    path = write_result(result, args.out, f"audio-ceiling-{Path(args.preset).name}")
    log.info(
        "ridge %s, mlp %s, estimator on truth %s -> %s",
        result["ridge_probe"],
        result["mlp_probe"],
        result["estimator_on_truth"],
        path,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
