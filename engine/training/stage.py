"""Resumable training stages: checkpoint, resume, log, and mark done.

Training runs for most of an hour on a CPU and must survive being stopped, so every stage is a
loop of numbered steps whose randomness is a pure function of (seed, stage, step): resuming from
a checkpoint replays exactly the batches an uninterrupted run would have drawn, with no RNG state
to save. Losses go to ``logs/<stage>.jsonl``; a finished stage is recorded in ``state.json`` and
skipped by later runs.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

STATE_NAME = "state.json"


def step_rng(seed: int, stage: str, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """The numpy and torch generators for one step of one stage."""
    key = [seed, zlib.crc32(stage.encode()), step]
    rng = np.random.default_rng(key)
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    return rng, gen


class RunState:
    """``state.json``: which stages are done, with their duration and final losses."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / STATE_NAME
        self.data: dict = json.loads(self.path.read_text()) if self.path.exists() else {"stages": {}}

    def done(self, stage: str) -> bool:
        return bool(self.data["stages"].get(stage, {}).get("done"))

    def record(self, stage: str, **info: object) -> None:
        self.data["stages"][stage] = {"done": True, **info}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n")
        tmp.replace(self.path)


def run_stage(
    out_dir: Path,
    name: str,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    steps: int,
    step_fn: Callable[[int], dict[str, float]],
    lr_at: Callable[[int], float],
    save_every: int = 100,
    progress: Callable[[str, int, int, dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """Run ``step_fn(step)`` for steps [resume point, steps), checkpointing every ``save_every``.

    ``step_fn`` computes the loss, calls backward and returns the losses to log; this runner
    sets the learning rate, steps the optimizer and owns persistence. Returns the mean of each
    loss over the last 10% of steps (what the run converged to).
    """
    ckpt_path = out_dir / "checkpoints" / f"{name}.pt"
    ckpt_path.parent.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "logs" / f"{name}.jsonl"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = 0
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, weights_only=True, map_location="cpu")  # saved on any device
        for key, module in modules.items():
            module.load_state_dict(ckpt["modules"][key])
        optimizer.load_state_dict(ckpt["optimizer"])
        start = int(ckpt["step"])
        log.info("%s: resuming at step %d of %d", name, start, steps)

    def save(step: int) -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        state = {k: m.state_dict() for k, m in modules.items()}
        torch.save({"step": step, "modules": state, "optimizer": optimizer.state_dict()}, tmp)
        tmp.replace(ckpt_path)

    for module in modules.values():
        module.train()
    tail: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    with log_path.open("a") as log_file:
        for step in range(start, steps):
            for group in optimizer.param_groups:  # a group may run at a fraction of the schedule
                group["lr"] = lr_at(step) * group.get("lr_scale", 1.0)
            optimizer.zero_grad(set_to_none=True)
            losses = step_fn(step)
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
            optimizer.step()
            log_file.write(json.dumps({"step": step, **{k: round(v, 6) for k, v in losses.items()}}) + "\n")
            if step >= steps - max(1, steps // 10):
                for k, v in losses.items():
                    tail.setdefault(k, []).append(v)
            if progress:
                progress(name, step + 1, steps, losses)
            if (step + 1) % save_every == 0 or step + 1 == steps:
                save(step + 1)
                log_file.flush()
    for module in modules.values():
        module.eval()
    log.info("%s: %d steps in %.0f s", name, steps - start, time.perf_counter() - t0)
    return {k: float(np.mean(v)) for k, v in tail.items()}


def cosine_lr(peak: float, steps: int, warmup: int = 50, floor: float = 0.1) -> Callable[[int], float]:
    """Linear warm-up then cosine decay to ``floor * peak``: the usual short-schedule shape."""

    def lr_at(step: int) -> float:
        if step < warmup:
            return peak * (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return float(peak * (floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * min(1.0, progress)))))

    return lr_at
