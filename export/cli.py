"""``livehuman export``: a preset or model directory -> ONNX graphs or TensorRT engines in one directory.

Kept import-light (the exporter loads only when the command runs), because ``livehuman/cli.py``
registers it on every invocation.
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger("livehuman.export")


def _export(args: argparse.Namespace) -> int:
    from engine.weights import resolve_model
    from export.cache import export_model
    from export.onnx_export import DEFAULT_OPSET

    model = resolve_model(args.preset)
    device = args.device or ("cuda" if args.format == "tensorrt" else "cpu")
    manifest = export_model(
        model,
        args.out,
        format=args.format,
        precision=args.precision,
        device=device,
        opset=args.opset or DEFAULT_OPSET,
    )
    worst = max(manifest.parity.values(), key=lambda r: r["max_abs"])
    log.info(
        "wrote %s export of %s (%s) to %s; largest parity error %.2e (%s), all in parity.json",
        manifest.format,
        manifest.config.name,
        manifest.precision,
        args.out,
        worst["max_abs"],
        worst["precision"],
    )
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``export`` on the ``livehuman`` command line."""
    parser = subparsers.add_parser(
        "export", help="export a model to ONNX or TensorRT, with a parity report against torch"
    )
    parser.add_argument(
        "--preset",
        default="default",
        help="default (the shipped trained model), a preset name (random weights) or a model directory",
    )
    parser.add_argument("--format", choices=("onnx", "tensorrt"), default="onnx")
    parser.add_argument(
        "--out", required=True, help="directory for the graphs, manifest.json and parity.json"
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "fp16", "bf16", "int8"),
        help="default: int8 DiT for onnx on the CPU, fp16 on CUDA (reduced precision covers the DiT only)",
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), help="target device (default: cpu; cuda for tensorrt)"
    )
    parser.add_argument(
        "--opset", type=int, choices=(18, 23), help="ONNX opset (default 18; tensorrt uses 18)"
    )
    parser.set_defaults(handler=_export)
