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
from engine.weights import WeightsError
from export.errors import ExportError
from stream.microphone import MicrophoneUnavailable

log = logging.getLogger("livehuman")

USER_ERRORS = (MediaError, ConfigError, WeightsError, BackendUnavailable, ExportError, MicrophoneUnavailable)


def _render(args: argparse.Namespace) -> int:
    from engine.render import render, with_overrides
    from livehuman.backends import load_backend

    for what, path in (("image", args.image), ("audio", args.audio)):
        if not Path(path).is_file():
            raise MediaError(f"{what} file '{path}': file not found")
    backend = load_backend(args.backend, args.preset)
    config = with_overrides(backend.config, steps=args.steps, blend=args.blend)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    report = render(backend, args.image, args.audio, args.out, config=config, seed=args.seed)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="livehuman", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    render = commands.add_parser("render", help="render a portrait speaking an audio file to mp4")
    render.add_argument("--image", required=True, help="portrait image (png, jpg, ...)")
    render.add_argument("--audio", required=True, help="speech (wav, mp3, flac, ogg)")
    render.add_argument("--out", required=True, help="output .mp4 (H.264 + AAC)")
    render.add_argument("--preset", default="tiny", help="preset name or a model directory")
    render.add_argument("--steps", type=int, choices=(1, 2, 3, 4), help="sampling steps (default: config)")
    render.add_argument("--seed", type=int, default=0)
    render.add_argument("--blend", choices=("linear", "cosine", "none"), help="overlap blend")
    render.add_argument("--report", help="write a JSON report here")
    render.add_argument(
        "--backend",
        choices=("torch", "onnx", "tensorrt", "auto"),
        default="torch",
        help="model runtime (default torch; onnx/tensorrt export the preset once into the engine cache, "
        "or take an export directory as --preset)",
    )
    render.set_defaults(handler=_render)
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
