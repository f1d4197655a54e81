"""JSON Schemas of the benchmark results, one per suite, and ``validate``.

``validate`` uses ``jsonschema`` when it is installed and otherwise a small checker that knows the
keywords used here (type, required, properties, items, enum, minimum), so a result is checked the
same way in CI and on a machine without it.
"""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 1

NUMBER = {"type": "number"}
MAYBE_NUMBER = {"type": ["number", "null"]}
COUNT = {"type": "integer", "minimum": 0}

# {p50, p95, p99, mean, n}: ms unless the key says otherwise; null figures only when n is 0.
PERCENTILES = {
    "type": "object",
    "required": ["p50", "p95", "p99", "mean", "n"],
    "properties": {
        "p50": MAYBE_NUMBER,
        "p95": MAYBE_NUMBER,
        "p99": MAYBE_NUMBER,
        "mean": MAYBE_NUMBER,
        "n": COUNT,
    },
}

TABLE = {
    "type": "object",
    "required": ["columns", "rows"],
    "properties": {"columns": {"type": "array", "items": {"type": "string"}}, "rows": {"type": "array"}},
}

ENVIRONMENT = {
    "type": "object",
    "required": [
        "date",
        "git_commit",
        "machine",
        "cpu",
        "cpu_count",
        "gpu",
        "python",
        "torch",
        "numpy",
        "av",
    ],
    "properties": {
        "date": {"type": "string"},
        "git_commit": {"type": "string"},
        "machine": {"type": "string"},
        "cpu": {"type": "string"},
        "cpu_count": {"type": ["integer", "null"]},
        "gpu": {"type": ["string", "null"]},
    },
}

LOAD = {
    "type": "object",
    "required": ["cores", "median", "max", "samples"],
    "properties": {"median": NUMBER, "max": NUMBER, "samples": {"type": "array", "items": NUMBER}},
}

BACKEND = {
    "type": "object",
    "required": ["requested", "loaded", "note"],
    "properties": {"requested": {"type": "string"}, "loaded": {"type": "string"}},
}

BUDGET = {
    "type": "object",
    "required": [
        "first_frame_audio_wait_ms",
        "last_frame_audio_wait_ms",
        "compute_budget_ms",
        "playout_delay_ms",
        "floor_ms",
    ],
    "properties": {
        "first_frame_audio_wait_ms": NUMBER,
        "compute_budget_ms": NUMBER,
        "playout_delay_ms": NUMBER,
        "floor_ms": NUMBER,
    },
}

GOAL = {
    "type": "object",
    "required": ["metric", "op", "target", "measured", "met"],
    "properties": {"metric": {"type": "string"}, "met": {"type": ["boolean", "null"]}},
}


def _result(suite: str, required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"livehuman bench {suite}",
        "type": "object",
        "required": [
            "suite",
            "schema_version",
            "environment",
            "load_average",
            "options",
            "backend",
            "preset",
            "config",
            "latency_budget",
            "failures",
            "summary",
            "goals",
            "records",
            *required,
        ],
        "properties": {
            "suite": {"enum": [suite]},
            "schema_version": {"enum": [SCHEMA_VERSION]},
            "environment": ENVIRONMENT,
            "load_average": LOAD,
            "options": {"type": "object"},
            "backend": BACKEND,
            "preset": {"type": "string"},
            "config": {"type": "object", "required": ["name", "scheduler"]},
            "latency_budget": BUDGET,
            "failures": {
                "type": "array",
                "items": {"type": "object", "required": ["where", "error"]},
            },
            "summary": {"type": "object"},
            "goals": {"type": "array", "items": GOAL},
            "records": {"type": "object"},
            **properties,
        },
    }


STAGES = ("audio", "dit", "blend", "decode", "color")

SWEEP_POINT = {
    "type": "object",
    "required": [
        "window",
        "overlap",
        "steps",
        "window_media_ms",
        "window_compute_ms",
        "rtf",
        "first_frame_latency_ms",
        "audio_wait_ms",
        "latency_floor_ms",
        "seam_ratio",
        "motion",
    ],
    "properties": {
        "window": COUNT,
        "overlap": COUNT,
        "steps": COUNT,
        "window_compute_ms": PERCENTILES,
        "rtf": MAYBE_NUMBER,
        "seam_ratio": MAYBE_NUMBER,
        "motion": MAYBE_NUMBER,
    },
}

ENGINE = _result(
    "engine",
    [
        "seconds",
        "frames",
        "rtf",
        "wall_rtf",
        "sustained_fps",
        "first_frame_latency_ms",
        "window_compute_ms",
        "window_media_ms",
        "stage_ms",
        "peak_rss_mb",
        "seam_ratio",
        "motion",
        "sweep",
    ],
    {
        "frames": COUNT,
        "rtf": NUMBER,
        "wall_rtf": NUMBER,
        "sustained_fps": NUMBER,
        "first_frame_latency_ms": NUMBER,
        "window_compute_ms": PERCENTILES,
        "stage_ms": {
            "type": "object",
            "required": list(STAGES),
            "properties": {stage: PERCENTILES for stage in STAGES},
        },
        "peak_rss_mb": NUMBER,
        "sweep": {"type": "array", "items": SWEEP_POINT},
        "records": {"type": "object", "required": ["windows"], "properties": {"windows": TABLE}},
    },
)

FRAMES = {
    "type": "object",
    "required": ["received", "late", "repeated", "dropped", "unreadable", "stamp_mismatch", "stream_seconds"],
    "properties": {
        "received": COUNT,
        "late": COUNT,
        "repeated": COUNT,
        "dropped": COUNT,
        "unreadable": COUNT,
        "stamp_mismatch": COUNT,
        "stream_seconds": NUMBER,
    },
}

E2E = _result(
    "e2e",
    [
        "glass_to_glass_ms",
        "av_offset_ms",
        "jitter_ms",
        "ttff_ms",
        "interrupt_to_silence_ms",
        "frames",
        "glass_to_glass_split",
        "av_arrival_offset_ms",
        "input",
        "burst",
        "calibration",
        "server",
    ],
    {
        "glass_to_glass_ms": PERCENTILES,
        "av_offset_ms": PERCENTILES,
        "av_arrival_offset_ms": PERCENTILES,
        "jitter_ms": PERCENTILES,
        "ttff_ms": PERCENTILES,
        "interrupt_to_silence_ms": PERCENTILES,
        "frames": FRAMES,
        "glass_to_glass_split": {
            "type": "object",
            "required": ["server_ms", "transport_ms"],
            "properties": {"server_ms": PERCENTILES, "transport_ms": PERCENTILES},
        },
        "input": {
            "type": "object",
            "required": ["push_lateness_ms", "ws_transit_ms", "speech_shifts", "speech_shift_total_ms"],
            "properties": {"push_lateness_ms": PERCENTILES, "ws_transit_ms": PERCENTILES},
        },
        "burst": {
            "type": ["object", "null"],
            "required": ["speed", "seconds", "glass_to_glass_ms", "queue_ms", "service_ms", "first_frame_ms"],
            "properties": {
                "glass_to_glass_ms": PERCENTILES,
                "queue_ms": PERCENTILES,
                "service_ms": PERCENTILES,
                "first_frame_ms": MAYBE_NUMBER,
            },
        },
        "calibration": {
            "type": ["object", "null"],
            "required": ["added_playout_ms", "base_p50_ms", "shifted_p50_ms", "measured_shift_ms"],
            "properties": {
                "added_playout_ms": NUMBER,
                "base_p50_ms": MAYBE_NUMBER,
                "shifted_p50_ms": MAYBE_NUMBER,
                "measured_shift_ms": MAYBE_NUMBER,
            },
        },
        "server": {
            "type": "object",
            "required": ["window_compute_ms", "ready_margin_ms", "stats"],
            "properties": {"window_compute_ms": PERCENTILES, "ready_margin_ms": PERCENTILES},
        },
        "records": {
            "type": "object",
            "required": ["glass_to_glass", "frames", "ttff", "interrupts", "av_markers", "windows"],
            "properties": {
                "glass_to_glass": TABLE,
                "frames": TABLE,
                "av_markers": TABLE,
                "windows": TABLE,
                "ttff": {"type": "array"},
                "interrupts": {"type": "array"},
            },
        },
    },
)

SCALE_STEP = {
    "type": "object",
    "required": [
        "sessions",
        "held",
        "fps_min",
        "glass_to_glass_p95_ms",
        "repeated_ratio",
        "dropped",
        "cpu_s_per_s",
    ],
    "properties": {
        "sessions": COUNT,
        "held": {"type": "boolean"},
        "fps_min": MAYBE_NUMBER,
        "glass_to_glass_p95_ms": MAYBE_NUMBER,
        "cpu_s_per_s": MAYBE_NUMBER,
    },
}

VIEWER_STEP = {
    "type": "object",
    "required": ["viewers", "cpu_s_per_s", "fps_min"],
    "properties": {"viewers": COUNT, "cpu_s_per_s": MAYBE_NUMBER, "fps_min": MAYBE_NUMBER},
}

SCALE = _result(
    "scale",
    ["target_p95_ms", "sessions", "max_sessions_held", "viewers", "cpu_ms_per_viewer_per_s"],
    {
        "target_p95_ms": NUMBER,
        "sessions": {"type": "array", "items": SCALE_STEP},
        "max_sessions_held": COUNT,
        "viewers": {"type": "array", "items": VIEWER_STEP},
        "cpu_ms_per_viewer_per_s": MAYBE_NUMBER,
    },
)

BACKENDS = _result(
    "backends",
    ["available", "mode", "results"],
    {
        "available": {"type": "boolean"},
        "mode": {"enum": ["smoke", "full", "unavailable"]},
        "results": {"type": "object"},
    },
)

DURATION = _result(
    "duration",
    [
        "seconds",
        "frames",
        "warmup_s",
        "rss_warm_mb",
        "memory_growth_frac",
        "state_ratio",
        "drift_slope",
        "drift_final",
    ],
    {
        "seconds": NUMBER,
        "frames": COUNT,
        "warmup_s": NUMBER,
        "rss_warm_mb": MAYBE_NUMBER,
        "memory_growth_frac": MAYBE_NUMBER,
        "state_ratio": {"type": "object"},
        "drift_slope": MAYBE_NUMBER,
        "drift_final": MAYBE_NUMBER,
        "records": {
            "type": "object",
            "required": ["samples", "distance_per_second"],
            "properties": {"samples": TABLE, "distance_per_second": TABLE},
        },
    },
)

SCHEMAS: dict[str, dict[str, Any]] = {
    "engine": ENGINE,
    "e2e": E2E,
    "scale": SCALE,
    "backends": BACKENDS,
    "duration": DURATION,
}


def validate(result: dict[str, Any], suite: str | None = None) -> list[str]:
    """Every way ``result`` breaks its suite's schema; empty when it conforms."""
    suite = suite or result.get("suite")
    if suite not in SCHEMAS:
        return [f"unknown suite {suite!r}"]
    schema = SCHEMAS[suite]
    try:
        import jsonschema
    except ImportError:
        return _check(result, schema, "$")
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '$'}: {e.message}" for e in validator.iter_errors(result)
    ]


_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list, tuple),
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "null": (type(None),),
}


def _is(value: Any, name: str) -> bool:
    if name in ("number", "integer") and isinstance(value, bool):
        return False
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES[name])


def _check(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    """The subset of JSON Schema used above."""
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        return [f"{path}: {value!r} is not one of {schema['enum']}"]
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is(value, t) for t in types):
            return [f"{path}: {type(value).__name__} is not of type {schema['type']}"]
    if "minimum" in schema and _is(value, "number") and value < schema["minimum"]:
        errors.append(f"{path}: {value} is less than the minimum of {schema['minimum']}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}: '{key}' is a required property")
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors += _check(value[key], sub, f"{path}/{key}")
    if isinstance(value, list | tuple) and "items" in schema:
        for i, item in enumerate(value):
            errors += _check(item, schema["items"], f"{path}/{i}")
    return errors
