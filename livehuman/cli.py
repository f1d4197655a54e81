"""The ``livehuman`` command line. Bad input gets one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import benchmarks.cli
import export.cli
import stream.cli
from engine.config import ConfigError
from engine.media import MediaError
from engine.runtime.base import BackendUnavailable
from engine.training.device import DEVICES
from engine.weights import WeightsError
from export.errors import ExportError
from stream.microphone import MicrophoneUnavailable

log = logging.getLogger("livehuman")


class UsageError(ValueError):
    """Options that cannot go together; argparse's own errors print the usage too, over several lines."""


USER_ERRORS = (
    MediaError,
    ConfigError,
    WeightsError,
    BackendUnavailable,
    ExportError,
    MicrophoneUnavailable,
    UsageError,
)


def _render(args: argparse.Namespace) -> int:
    from engine.models.camera import check_camera, parse_camera
    from engine.prompt import check_prompt
    from engine.render import render, with_overrides
    from livehuman.backends import load_backend

    # A re-dub has no portrait: the video's own frames are the picture.
    if args.image is not None and args.video is not None:
        raise UsageError(
            "--image and --video are mutually exclusive: --video re-dubs a video instead of a portrait"
        )
    if args.image is None and args.video is None:
        raise UsageError("render needs --image (a portrait) or --video (a video to re-dub)")
    source = ("image", args.image) if args.video is None else ("video", args.video)
    for what, path in (source, ("audio", args.audio)):
        if not Path(path).is_file():
            raise MediaError(f"{what} file '{path}': file not found")
    backend = load_backend(args.backend, args.preset)
    config = with_overrides(backend.config, steps=args.steps, blend=args.blend)
    camera = parse_camera(args.camera)
    check_camera(config, camera)
    check_prompt(config, args.prompt)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    report = render(
        backend, args.image, args.audio, args.out,
        config=config, seed=args.seed, prompt=args.prompt, camera=camera, video=args.video,
    )  # fmt: skip
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
    log.info(
        "wrote %s: %d frames, rtf %.2f, seam_ratio %s",
        args.out,
        report["frames"],
        report["rtf"],
        None if report["seam_ratio"] is None else round(report["seam_ratio"], 3),
    )
    return 0


def _names(listed: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in listed.split(","))


def _train(args: argparse.Namespace) -> int:
    from engine.config import get_preset
    from engine.training.pipeline import ADDONS, PLANS, finetune, train
    from engine.weights import resolve_model_dir

    if args.finetune:
        source = resolve_model_dir(args.finetune)  # one line if it is not a trained model
        redo = _names(args.redo) if args.redo else ()
        addons = _names(args.addons) if args.addons else () if redo else ADDONS
        model_dir = finetune(
            source, Path(args.out), PLANS[args.plan], seed=args.seed, addons=addons, redo=redo,
            device=args.device,
        )  # fmt: skip
    else:
        get_preset(args.preset)  # an unknown preset is a one-line error before any work starts
        model_dir = train(args.preset, Path(args.out), PLANS[args.plan], seed=args.seed, device=args.device)
    log.info("trained model in %s (use it with --preset %s)", model_dir, model_dir)
    return 0


def _eval(args: argparse.Namespace) -> int:
    """Score a model on held-out synthetic clips (see engine/training/evaluate.py)."""
    from tqdm import tqdm

    from benchmarks.common import environment
    from engine.training import evaluate
    from livehuman.backends import load_backend

    try:
        steps = tuple(int(s) for s in args.steps.split(","))
    except ValueError:
        raise ConfigError(f"--steps must be comma-separated integers, got {args.steps!r}") from None
    if not steps or any(s not in (1, 2, 3, 4) for s in steps):
        raise ConfigError(f"--steps takes step counts from 1 to 4, got {args.steps!r}")
    if args.clips < 1:
        raise ConfigError(f"--clips must be at least 1, got {args.clips}")
    if args.drift_minutes < 0:
        raise ConfigError(f"--drift-minutes must not be negative, got {args.drift_minutes}")
    if not 0 <= args.prompt_clips <= args.clips:
        raise ConfigError(f"--prompt-clips must be from 0 to --clips ({args.clips}), got {args.prompt_clips}")
    backend = load_backend(args.backend, args.preset)
    clips = evaluate.heldout_clips(args.clips, seed=args.seed)
    with tqdm(unit="run", desc="eval", leave=False) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        report = evaluate.evaluate(
            backend,
            clips,
            steps,
            drift_seconds=60.0 * args.drift_minutes,
            progress=progress,
            seed=args.seed,
            prompt_clips=args.prompt_clips,
            model=str(args.preset),
            machine=environment(),
        )
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
    for count, figures in report["steps"].items():
        failed = evaluate.failed_bars(figures)
        log.info(
            "eval steps %s: %s; %s",
            count,
            evaluate.summary(figures),
            f"misses {failed}" if failed else "passes",
        )
    for attribute, effect in (report["prompt"] or {}).get("effects", {}).items():
        log.info(
            "eval prompt %s ('%s' against '%s'): the right way on %.0f%% of clips, %s of the asked change",
            attribute,
            *effect["prompts"],
            100 * effect["moved_right_way"],
            evaluate.fmt_fraction(effect["fraction_of_truth"]),
        )
    redub = report["redub"]
    if redub:
        log.info(
            "eval re-dub: PSNR %s dB (copying the source: %s), lip-sync %s (copying: %s); bars %s",
            redub["psnr_db"],
            redub["copy_psnr_db"],
            evaluate.fmt_value(redub["lipsync_corr"]),
            evaluate.fmt_value(redub["copy_lipsync_corr"]),
            redub["bars"],
        )
    log.info("wrote %s (%d clips, %.1f s)", args.report, len(clips), report["durations_s"])
    if args.write_fallback:
        _write_fallback(Path(args.preset), evaluate.passing_steps(report))
    return 0


def _write_fallback(model_dir: Path, passing: list[int]) -> None:
    """Let the live scheduler shed only to step counts this evaluation passed."""
    import dataclasses

    from engine.config import ModelConfig
    from engine.weights import CONFIG_NAME

    path = model_dir / CONFIG_NAME
    if not path.is_file():
        raise ConfigError(f"--write-fallback needs a model directory as --preset, got '{model_dir}'")
    config = ModelConfig.load(path)
    ladder = tuple(n for n in passing if n < config.scheduler.steps)
    config = dataclasses.replace(
        config, scheduler=dataclasses.replace(config.scheduler, fallback_steps=ladder)
    )
    config.save(path)
    log.info("%s: scheduler.fallback_steps = %s", path, list(ladder))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="livehuman", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    render = commands.add_parser(
        "render", help="render a portrait speaking an audio file to mp4, or re-dub a video with it"
    )
    render.add_argument("--image", help="portrait image (png, jpg, ...); this or --video")
    render.add_argument(
        "--video",
        metavar="FILE",
        help="re-dub this video (1-30 s, looped forward then backward; its own audio is ignored) "
        "instead of animating a portrait; needs a model with capabilities.video",
    )
    render.add_argument("--audio", required=True, help="speech (wav, mp3, flac, ogg)")
    render.add_argument("--out", required=True, help="output .mp4 (H.264 + AAC)")
    render.add_argument(
        "--preset",
        default="default",
        help="default (the shipped trained model), default-prompt (the same with prompt control), a preset "
        "name (random weights) or a model directory",
    )
    render.add_argument("--steps", type=int, choices=(1, 2, 3, 4), help="sampling steps (default: config)")
    render.add_argument("--seed", type=int, default=0)
    render.add_argument("--blend", choices=("linear", "cosine", "none"), help="overlap blend")
    render.add_argument("--report", help="write a JSON report here")
    render.add_argument(
        "--camera",
        metavar="PRESET[:INTENSITY][+PRESET:INTENSITY]",
        help="camera move, intensity 0-100 (default 100): static, push_in, push_out, pan_left, pan_right, "
        "crane_up, crane_down, handheld; two can be mixed, e.g. push_in:50+handheld:30",
    )
    render.add_argument(
        "--prompt",
        default="",
        help="expression and scene, e.g. 'smiling, a dark moody background' (the default model's phrases "
        "are listed in the README)",
    )
    render.add_argument(
        "--backend",
        choices=("torch", "onnx", "tensorrt", "auto"),
        default="torch",
        help="model runtime (default torch; onnx/tensorrt export the preset once into the engine cache, "
        "or take an export directory as --preset)",
    )
    render.set_defaults(handler=_render)
    train = commands.add_parser(
        "train", help="train the default model family on synthetic avatar data (resumes if stopped)"
    )
    train.add_argument("--preset", default="tiny", help="model preset to train (default tiny)")
    train.add_argument("--out", required=True, help="output directory; the model lands in OUT/model")
    train.add_argument(
        "--plan",
        choices=("full", "smoke"),
        default="full",
        help="full (the base stages ~53 min on 2 CPU cores, then the add-on stages) or smoke (CI)",
    )
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="where to compute: auto (a GPU if torch sees one, else the CPU), cpu or cuda; a seed "
        "draws the same batches on any device",
    )
    train.add_argument(
        "--finetune",
        metavar="MODEL",
        help="run only the add-on stages this trained model lacks (hearing: a deeper audio encoder, "
        "lip-sync audio positions, the decoder's audio adapters, camera branch, video re-dub, prompt "
        "control) on it (default, or a model "
        "directory) instead of training from scratch",
    )
    train.add_argument(
        "--addons",
        help="with --finetune: which add-ons, comma-separated from hearing,lipsync,decoder,camera,video,"
        "prompt (default: all it lacks, or none with --redo; the shipped default has hearing,lipsync,"
        "decoder,camera,video, the prompt model all six)",
    )
    train.add_argument(
        "--redo",
        help="with --finetune: add-ons to run again although the model has them, comma-separated "
        "(lipsync reruns its on-policy phase, decoder retrains on the DiT's own latents)",
    )
    train.set_defaults(handler=_train)
    evaluate = commands.add_parser(
        "eval", help="score a model on held-out synthetic clips (lip sync, idle, drift)"
    )
    evaluate.add_argument("--preset", required=True, help="model directory or preset name")
    evaluate.add_argument("--report", required=True, help="write the JSON report here")
    evaluate.add_argument("--clips", type=int, default=8, help="held-out clips (default 8)")
    evaluate.add_argument("--steps", default="4,2,1", help="comma-separated step counts (default 4,2,1)")
    evaluate.add_argument(
        "--drift-minutes",
        type=float,
        default=0.0,
        help="one long run per step count for drift (default 0: none)",
    )
    evaluate.add_argument(
        "--backend",
        choices=("torch", "onnx", "auto"),
        default="torch",
        help="model runtime (default torch on the CPU; auto takes the fastest that loads, a GPU if any)",
    )
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument(
        "--prompt-clips",
        type=int,
        default=2,
        help="on a model with prompt control, judge opposite prompts on this many of the clips (default 2)",
    )
    evaluate.add_argument(
        "--write-fallback",
        action="store_true",
        help="write the passing step counts below the model's own into DIR/config.json as the live "
        "scheduler's load-shedding ladder (scheduler.fallback_steps)",
    )
    evaluate.set_defaults(handler=_eval)
    stream.cli.add_commands(commands)
    export.cli.add_commands(commands)
    benchmarks.cli.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.handler(args)
    except USER_ERRORS as exc:
        print(f"livehuman: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("livehuman: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
