"""``livehuman bench SUITE``: run a benchmark suite and write JSON + PNG + Markdown; ``livehuman
bench compare A.json B.json`` puts two results side by side.

Suites: ``engine`` (offline throughput, per stage, W/O/steps sweep), ``e2e`` (glass to glass over
loopback WebRTC), ``scale`` (concurrent sessions, viewers per session), ``backends`` (components per
backend, from benchmarks/backends.py). Everything networked stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path

from benchmarks.harness import RESULTS_DIR, BenchOptions

log = logging.getLogger("bench")

# Suite modules load only when run: building the parser must not import aiortc or torch.
SUITES = {
    "engine": "offline scheduler throughput and latency per window and stage; W/O/steps sweep",
    "e2e": "glass to glass over loopback WebRTC: latency, A/V offset, jitter, drops, TTFF, interrupt",
    "scale": "concurrent sessions until real time breaks; CPU per extra viewer",
    "backends": "per-component comparison of the backends (benchmarks/backends.py)",
    "duration": "a long live stream on a virtual clock: memory, bounded state, identity drift",
}


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser(
        "bench",
        help="run a latency/throughput benchmark suite (engine, e2e, scale, backends) or compare results",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    suites = bench.add_subparsers(dest="suite", required=True, metavar="SUITE")
    for name, help_text in SUITES.items():
        parser = suites.add_parser(name, help=help_text)
        _common(parser)
        if name in ("e2e", "scale"):
            parser.add_argument(
                "--fallback-steps",
                type=int,
                nargs="+",
                metavar="N",
                help="let the live path shed to these step counts under load (default: off, so nothing "
                "absorbs a delay)",
            )
            parser.add_argument(
                "--playout-delay-ms", type=int, help="server playout delay (default: the config's)"
            )
            parser.add_argument(
                "--compute-budget-ms",
                type=int,
                help="server compute budget per window (default: the config's)",
            )
        if name == "engine":
            parser.add_argument("--sweep-seconds", type=float, help="speech per sweep point (default 8)")
        elif name == "e2e":
            parser.add_argument("--ttff-trials", type=int, help="sessions opened for time to first frame (3)")
            parser.add_argument("--interrupts", type=int, help="interrupt trials (5)")
            parser.add_argument(
                "--burst-seconds", type=float, help="speech in the TTS-like burst (10; 0: none)"
            )
            parser.add_argument("--burst-speed", type=float, help="burst push rate, x real time (10)")
            parser.add_argument(
                "--calibrate-ms", type=int, help="playout delay added in the calibration run (300; 0: none)"
            )
            parser.add_argument("--calibrate-seconds", type=float, help="speech in the calibration run (20)")
            parser.add_argument(
                "--late-ms", type=float, help="a frame decoded this much after its slot is late (40)"
            )
        elif name == "scale":
            parser.add_argument("--max-sessions", type=int, help="stop the session ramp here (8)")
            parser.add_argument("--max-viewers", type=int, help="stop the viewer ramp here (8)")
            parser.add_argument(
                "--target-p95-ms", type=float, help="glass-to-glass p95 a held step must meet (800)"
            )
        elif name == "backends":
            parser.add_argument("--rounds", type=int, help="interleaved rounds (full mode; 5)")
        elif name == "duration":
            parser.add_argument(
                "--video", help="re-dub this source video (looped) instead of animating the portrait"
            )
        parser.set_defaults(handler=run_command)
    compare = suites.add_parser("compare", help="two results side by side, as ratios B/A")
    compare.add_argument("a", help="result A (JSON)")
    compare.add_argument("b", help="result B (JSON)")
    compare.set_defaults(handler=compare_command)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        default="default",
        help="preset name or model directory (default: the shipped trained model)",
    )
    parser.add_argument(
        "--backend",
        default="torch",
        choices=("torch", "onnx", "tensorrt", "auto"),
        help="model runtime (torch)",
    )
    parser.add_argument(
        "--duration", type=float, help="seconds of speech in the main scenario (suite default)"
    )
    parser.add_argument("--out", default=str(RESULTS_DIR), help=f"results folder (default {RESULTS_DIR})")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--smoke", action="store_true", help="a few seconds of audio: checks the suite runs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


COMMON = {
    "suite",
    "preset",
    "backend",
    "duration",
    "out",
    "threads",
    "smoke",
    "no_progress",
    "handler",
    "command",
    "verbose",
}


def options_from(args: argparse.Namespace) -> BenchOptions:
    extra = {k: v for k, v in vars(args).items() if k not in COMMON}
    return BenchOptions(
        suite=args.suite,
        preset=args.preset,
        backend=args.backend,
        duration=args.duration,
        out=args.out,
        smoke=args.smoke,
        threads=args.threads,
        progress=not args.no_progress,
        extra=extra,
    )


def run_suite(options: BenchOptions) -> dict:
    """Run a suite; returns its result (already validated against its schema)."""
    from benchmarks.schema import validate

    module = importlib.import_module(f"benchmarks.suites.{options.suite}")
    result = module.run(options)
    errors = validate(result)
    if errors:
        result["failures"].append({"where": "schema", "error": "; ".join(errors[:10])})
    return result


def run_command(args: argparse.Namespace) -> int:
    from benchmarks.report import markdown, save

    options = options_from(args)
    result = run_suite(options)
    paths = save(result, options.out)
    print(markdown(result))
    for kind, path in paths.items():
        log.info("wrote %s: %s", kind, path)
    return 0 if not any(f["where"] == "schema" for f in result["failures"]) else 1


def compare_command(args: argparse.Namespace) -> int:
    from benchmarks.report import compare

    results = []
    for path in (args.a, args.b):
        try:
            results.append(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            print(f"livehuman bench compare: cannot read {path}: {exc}", file=sys.stderr)
            return 2
    print(compare(*results), end="")
    return 0
