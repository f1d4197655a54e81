"""Training speed per device: seconds per step of the training stages, on the CPU and a GPU.

    python benchmarks/train_speed.py [--devices cpu,cuda] [--steps 6] [--out benchmarks/results]

``livehuman train --device auto`` computes on a GPU when one is lent, drawing the same batches
as the CPU would for the seed (``engine/training/device.py``). This times each stage's own step
function at the full plan's batch size on each device asked for (a random ``tiny`` model on a
few clips: the cost of a step does not depend on the weights), after one warm-up step, and puts
beside it the full plan's step count, so the time each stage would take reads off the file. It
also records each stage's loss at the same step on every device from the same weights: equal to
rounding where the batches are the same.
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import environment, write_result  # noqa: E402
from engine.config import get_preset  # noqa: E402
from engine.models.livehuman import LiveHumanModel  # noqa: E402
from engine.training import data  # noqa: E402
from engine.training.decoder_stage import clip_features, decoder_step_fn  # noqa: E402
from engine.training.device import module_device, training_device  # noqa: E402
from engine.training.dit_stage import MouthProbe, dit_step_fn  # noqa: E402
from engine.training.lipsync_stage import onpolicy_step_fn  # noqa: E402
from engine.training.pipeline import PLANS  # noqa: E402
from engine.training.rollout import teacher_forced_latents  # noqa: E402
from engine.training.vae_stage import vae_step_fn  # noqa: E402
from engine.training.windows import EncodedClip, encode_clips  # noqa: E402

log = logging.getLogger("bench.train_speed")


@dataclass
class Inputs:
    """What the stages read besides the model, made once on the CPU for every device."""

    clips: list[data.Clip]
    encoded: list[EncodedClip]
    generated: list[torch.Tensor]  # the DiT's latents, the decoder stage's input
    features: list[torch.Tensor]  # audio features per frame, the decoder stage's input

    @classmethod
    def make(cls, model: LiveHumanModel, clips: list[data.Clip]) -> Inputs:
        encoded = encode_clips(model, clips, PLANS["full"].encode_frames)
        generated = teacher_forced_latents(model, encoded, 4, seed=0)
        return cls(clips, encoded, generated, [clip_features(model, clip) for clip in clips])


def stage_steps(model: LiveHumanModel, inputs: Inputs) -> dict[str, tuple[Callable, int]]:
    """Each timed stage's step function on ``model`` (on its device) and its full-plan step count."""
    plan, config, encoded = PLANS["full"], model.config, inputs.encoded
    probe = MouthProbe(config.audio.dim).to(module_device(model))
    return {
        "vae": (vae_step_fn(model.vae, inputs.clips, plan.vae, config.height, 0), plan.vae.steps),
        "dit": (dit_step_fn(model, probe, encoded, config, plan.dit, 0), plan.dit.steps),
        "lipsync_onpolicy": (
            onpolicy_step_fn(model, encoded, plan.lipsync, config.scheduler.steps, 0),
            plan.lipsync.onpolicy_steps,
        ),
        "decoder": (
            decoder_step_fn(model, inputs.clips, encoded, inputs.generated, inputs.features, plan.decoder, 0),
            plan.decoder.steps,
        ),
    }


def time_device(device: torch.device, base: LiveHumanModel, inputs: Inputs, steps: int) -> dict:
    model = copy.deepcopy(base).to(device)
    # CUDA runs asynchronously: wait for the step's kernels before reading the clock.
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    out = {}
    for name, (step, full_steps) in stage_steps(model, inputs).items():
        model.zero_grad(set_to_none=True)
        first_loss = step(0)["loss"]  # also the warm-up (allocations, kernel selection)
        seconds = []
        for i in range(1, steps + 1):
            model.zero_grad(set_to_none=True)
            sync()
            t0 = time.perf_counter()
            step(i)
            sync()
            seconds.append(time.perf_counter() - t0)
        per_step = statistics.median(seconds)
        out[name] = {
            "seconds_per_step": round(per_step, 4),
            "full_plan_steps": full_steps,
            "full_plan_minutes": round(per_step * full_steps / 60, 1),
            "loss_at_step_0": first_loss,
        }
        log.info("%s on %s: %.3f s/step (%d steps timed)", name, device, per_step, steps)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    devices = [training_device(name) for name in args.devices.split(",")]
    base = LiveHumanModel.random(get_preset("tiny"))
    inputs = Inputs.make(base, [data.make_clip("train", index, args.seed) for index in range(args.clips)])
    per_device = {str(device): time_device(device, base, inputs, args.steps) for device in devices}
    result: dict[str, Any] = {
        "bench": "train_speed",
        "environment": environment(),
        "command": " ".join(sys.argv),
        "steps_timed": args.steps,
        "clips": args.clips,
        "devices": per_device,
    }
    if len(per_device) > 1:
        first, *rest = per_device.values()
        result["loss_relative_difference"] = {
            stage: max(abs(r[stage]["loss_at_step_0"] / first[stage]["loss_at_step_0"] - 1) for r in rest)
            for stage in first
        }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=6, help="steps timed per stage, after one warm-up step")
    parser.add_argument("--clips", type=int, default=4, help="training clips the batches are drawn from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    result = run(args)
    path = write_result(result, args.out, "train-speed")
    log.info("-> %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
