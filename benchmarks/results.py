"""The result file: a versioned JSON schema, a writer, and a loader that validates.

One file holds one run of the harness: the environment it ran in, the suite, and one
entry per measured configuration. Configurations that could not run (engine missing,
no FP8 on this card ...) are listed under `skipped` with the reason, so a table can say
why a row is empty instead of silently dropping it.

`SCHEMA` is a JSON Schema (draft 2020-12 subset) and the single source of truth: the
loader interprets it with a small validator so that errors name the exact field
("entries[3].median_ms: expected number, got 'fast'") without a jsonschema dependency.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from audiox_engine.audiox._io import atomic_path

SCHEMA_NAME = "audiox-bench"
SCHEMA_VERSION = 1

_NUM = {"type": "number"}
_NUM_OR_NULL = {"type": ["number", "null"]}
_STR_OR_NULL = {"type": ["string", "null"]}

ENTRY_SCHEMA = {
    "type": "object",
    "required": [
        "name", "group", "params", "nfe", "batch", "samples_ms", "median_ms", "p10_ms", "p90_ms",
        "first_call_s", "compile_s", "setup_s", "audio_seconds", "rtf", "metrics", "timing",
        "telemetry", "telemetry_reason",
    ],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "group": {"type": "string", "minLength": 1},
        "params": {"type": "object"},
        "nfe": {"type": ["integer", "null"], "minimum": 0},
        "batch": {"type": ["integer", "null"], "minimum": 1},
        "samples_ms": {"type": "array", "items": _NUM},
        "median_ms": {"type": "number", "minimum": 0},
        "p10_ms": {"type": "number", "minimum": 0},
        "p90_ms": {"type": "number", "minimum": 0},
        "first_call_s": _NUM_OR_NULL,
        "compile_s": _NUM_OR_NULL,
        "setup_s": _NUM_OR_NULL,
        "audio_seconds": _NUM_OR_NULL,
        "rtf": _NUM_OR_NULL,
        "metrics": {"type": "object"},
        "timing": {"type": ["object", "null"]},
        "telemetry": {"type": ["object", "null"]},
        "telemetry_reason": _STR_OR_NULL,
    },
}

ENV_SCHEMA = {
    "type": "object",
    "required": [
        "date_utc", "device", "gpu", "driver_version", "cuda_version", "torch_version", "triton_version",
        "python_version", "cpu_model", "cpu_count", "git", "config",
    ],
    "properties": {
        "date_utc": {"type": "string", "minLength": 1},
        "device": _STR_OR_NULL,
        "gpu": {
            "type": ["object", "null"],
            "required": ["name", "memory_total_mib"],
            "properties": {"name": {"type": "string"}, "memory_total_mib": _NUM},
        },
        "driver_version": _STR_OR_NULL,
        "cuda_version": _STR_OR_NULL,
        "torch_version": {"type": "string"},
        "triton_version": _STR_OR_NULL,
        "python_version": {"type": "string"},
        "cpu_model": _STR_OR_NULL,
        "cpu_count": {"type": ["integer", "null"]},
        "git": {
            "type": "object",
            "required": ["commit", "dirty"],
            "properties": {"commit": _STR_OR_NULL, "dirty": {"type": ["boolean", "null"]}},
        },
        "config": {"type": "object"},
    },
}

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "audiox-engine benchmark run",
    "type": "object",
    "required": ["schema", "schema_version", "suite", "complete", "env", "entries", "skipped"],
    "properties": {
        "schema": {"const": SCHEMA_NAME},
        "schema_version": {"type": "integer"},
        "suite": {"type": "string", "minLength": 1},
        "complete": {"type": "boolean"},
        "env": ENV_SCHEMA,
        "entries": {"type": "array", "items": ENTRY_SCHEMA},
        "skipped": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "group", "reason"],
                "properties": {
                    "name": {"type": "string"},
                    "group": {"type": "string"},
                    "reason": {"type": "string", "minLength": 1},
                },
            },
        },
    },
}


class ResultsError(ValueError):
    """A result file that does not match the schema; the message names the field."""


_TYPE_CHECKS = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "null": lambda v: v is None,
}


def _schema_errors(value, schema: dict, path: str) -> list[str]:
    """Errors of `value` against the subset of JSON Schema used in this file."""
    errors: list[str] = []
    if "const" in schema and value != schema["const"]:
        return [f"{path}: expected {schema['const']!r}, got {value!r}"]
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_TYPE_CHECKS[t](value) for t in types):
            return [f"{path}: expected {' or '.join(types)}, got {type(value).__name__} {value!r:.60}"]
    if value is None:
        return errors
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value != value:  # NaN: JSON has no NaN; a NaN latency is a broken measurement
            errors.append(f"{path}: is NaN")
        elif "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: {value} is below the minimum {schema['minimum']}")
    if isinstance(value, str) and len(value) < schema.get("minLength", 0):
        errors.append(f"{path}: must not be empty")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}: missing required field {key!r}")
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors.extend(_schema_errors(value[key], sub, f"{path}.{key}"))
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors.extend(_schema_errors(item, schema["items"], f"{path}[{i}]"))
    return errors


def validation_errors(run: dict) -> list[str]:
    """All schema and consistency errors of a run dict (empty list when valid)."""
    if not isinstance(run, dict):
        return [f"$: expected a JSON object, got {type(run).__name__}"]
    version = run.get("schema_version")
    if isinstance(version, int) and version > SCHEMA_VERSION:
        return [f"$.schema_version: {version} is newer than this reader understands ({SCHEMA_VERSION}); "
                "update benchmarks/"]
    if isinstance(version, int) and version < SCHEMA_VERSION:
        return [f"$.schema_version: {version} is older than {SCHEMA_VERSION} and has no migration"]
    errors = _schema_errors(run, SCHEMA, "$")
    if errors:
        return errors
    for i, e in enumerate(run["entries"]):
        where = f"$.entries[{i}] ({e['name']})"
        if not e["p10_ms"] <= e["median_ms"] <= e["p90_ms"]:
            errors.append(f"{where}: expected p10_ms <= median_ms <= p90_ms, got "
                          f"{e['p10_ms']}, {e['median_ms']}, {e['p90_ms']}")
        if e["telemetry"] is None and not e["telemetry_reason"]:
            errors.append(f"{where}: telemetry is null, so telemetry_reason must say why")
    return errors


def validate(run: dict, source: str = "<run>") -> dict:
    """Returns `run` unchanged, or raises ResultsError listing every problem."""
    errors = validation_errors(run)
    if errors:
        shown = "\n  ".join(errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise ResultsError(f"{source}: not a valid {SCHEMA_NAME} v{SCHEMA_VERSION} result file:\n  {shown}{more}")
    return run


def load(path: str | os.PathLike) -> dict:
    """Reads and validates one result file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ResultsError(f"{path}: cannot read result file ({exc})") from exc
    try:
        run = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path}: not JSON ({exc})") from exc
    return validate(run, str(path))


def new_run(suite: str, env: dict) -> dict:
    return {
        "schema": SCHEMA_NAME,
        "schema_version": SCHEMA_VERSION,
        "suite": suite,
        "complete": False,
        "env": env,
        "entries": [],
        "skipped": [],
    }


def make_entry(
    *,
    name: str,
    group: str,
    params: dict,
    timing: dict,
    nfe: int | None = None,
    batch: int | None = None,
    audio_seconds: float | None = None,
    setup_s: float | None = None,
    metrics: dict | None = None,
    telemetry: dict | None = None,
    telemetry_reason: str | None = None,
) -> dict:
    """One measured configuration. `timing` is a TimingResult.to_dict() (or the same keys).

    rtf is audio seconds produced per wall second (batch included); > 1 is faster than
    real time.
    """
    median_ms = float(timing["median_ms"])
    produced = None if audio_seconds is None else audio_seconds * (batch or 1)
    return {
        "name": name,
        "group": group,
        "params": dict(params),
        "nfe": nfe,
        "batch": batch,
        "samples_ms": [float(s) for s in timing.get("samples_ms", [])],
        "median_ms": median_ms,
        "p10_ms": float(timing["p10_ms"]),
        "p90_ms": float(timing["p90_ms"]),
        "first_call_s": timing.get("first_call_s"),
        "compile_s": timing.get("compile_s"),
        "setup_s": setup_s,
        "audio_seconds": audio_seconds,
        "rtf": None if produced is None or median_ms <= 0 else produced / (median_ms / 1e3),
        "metrics": dict(metrics or {}),
        "timing": {k: v for k, v in timing.items() if k not in ("samples_ms", "median_ms", "p10_ms", "p90_ms")},
        "telemetry": telemetry,
        "telemetry_reason": telemetry_reason,
    }


def save(run: dict, path: str | os.PathLike) -> None:
    """Validates, then writes atomically (a crash mid-write never leaves half a file)."""
    validate(run, str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(run, f, indent=1, sort_keys=False, allow_nan=False)
        f.write("\n")


def entry_key(entry: dict) -> str:
    """Identity of an entry across runs: name plus its params, canonically ordered."""
    return entry["name"] + " " + json.dumps(entry["params"], sort_keys=True, default=str)
