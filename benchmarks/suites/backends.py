"""``backends``: the per-component comparison of ``benchmarks/backends.py``, folded into a suite
result (JSON + PNG + Markdown like the others). It calls into that module, never copies it.

Full mode runs its ``main()`` (torch fp32 and onnxruntime fp32/int8 at two opsets, exports from the
engine cache, interleaved rounds) into a scratch folder and takes its result in whole. Smoke mode
times the torch backend only, with that module's own ``component_calls``, ``time_calls`` and
``render_windows``, so it needs no export. When the module is absent the result says so.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.harness import ASSETS, BenchOptions, Failures, LoadSampler, load_backend, speech
from benchmarks.report import base_result, evaluate_goals, pct


def _module() -> tuple[Any, str | None]:
    try:
        return importlib.import_module("benchmarks.backends"), None
    except Exception as exc:  # noqa: BLE001 - absent or broken: reported, not raised
        return None, f"{type(exc).__name__}: {exc}"


def run(options: BenchOptions) -> dict[str, Any]:
    failures = Failures()
    options.duration = options.duration or (1.0 if options.smoke else 8.0)
    module, reason = _module()
    with LoadSampler() as load:
        backend, info = load_backend("torch", options.preset, options.threads)
        if module is None:
            mode, results, extra = "unavailable", {"reason": reason}, {}
        elif options.smoke:
            mode, extra = "smoke", {}
            results = {}
            with failures.guard("torch components"):
                results = _smoke(module, backend, options)
        else:
            mode = "full"
            results, extra = {}, {}
            with failures.guard("benchmarks/backends.py main()"):
                extra = _full(module, options)
                results = extra.pop("results")
    info = {**info, "requested": "all", "loaded": ", ".join(results) or info["loaded"]}
    result = base_result("backends", options, info, backend.config, load.report(), failures)
    result.update({"available": module is not None, "mode": mode, "results": results, "backends_py": extra})
    result["records"] = {"results": results}
    result["summary"] = {
        f"{name}_window_p50_ms": res["window_ms"]["p50"]
        for name, res in results.items()
        if isinstance(res, dict) and "window_ms" in res
    } | {
        f"{name}_speedup_vs_torch": res.get("speedup_vs_torch")
        for name, res in results.items()
        if isinstance(res, dict) and res.get("speedup_vs_torch") is not None
    }
    result["goals"] = evaluate_goals("backends", result["summary"])
    return result


def _smoke(module: Any, backend: Any, options: BenchOptions) -> dict[str, Any]:
    from engine.media import read_image
    from engine.weights import resolve_model
    from export.graphs import build_graphs

    model = resolve_model(options.preset)
    inputs = {name: graph.inputs for name, graph in build_graphs(model, "fp32").items()}
    components = module.time_calls(module.component_calls(backend, inputs), repeats=2, warmup=1)
    portrait = read_image(ASSETS / "portrait.png", backend.config.height, backend.config.width)
    _, windows = module.render_windows(backend, speech(options.duration), portrait)
    return {
        "torch fp32": {
            "components_ms": {name: pct(times) for name, times in components.items()},
            "window_ms": pct(windows),
            "speedup_vs_torch": 1.0,
            "samples": {"components_ms": components, "window_ms": windows},
        }
    }


def _full(module: Any, options: BenchOptions) -> dict[str, Any]:
    """``benchmarks/backends.py`` as its own command line would run it, into a scratch folder."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = [
            "backends.py",
            "--preset", options.preset,
            "--seconds", str(options.duration),
            "--rounds", str(options.get("rounds", 5)),
            "--out", tmp,
        ]  # fmt: skip
        if options.threads:
            argv += ["--threads", str(options.threads)]
        saved = sys.argv
        sys.argv = argv
        try:
            with contextlib.suppress(SystemExit):
                module.main()
        finally:
            sys.argv = saved
        written = sorted(Path(tmp).glob("backends-*.json"))
        if not written:
            raise RuntimeError("benchmarks/backends.py wrote no result")
        return json.loads(written[-1].read_text())
