"""The machine and software a result was measured on, recorded with every result.

Deliberately hostname-free: result files are meant to be committed and shared.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from audiox_engine.benchmarks import telemetry

REPO_ROOT = Path(__file__).resolve().parent.parent

# Environment variables that change what is measured; recorded when set.
_RELEVANT_ENV_VARS = (
    "TRITON_INTERPRET",
    "CUDA_VISIBLE_DEVICES",
    "CUDA_LAUNCH_BLOCKING",
    "TORCH_COMPILE_DISABLE",
    "TORCHINDUCTOR_MAX_AUTOTUNE",
    "OMP_NUM_THREADS",
    "NVIDIA_TF32_OVERRIDE",
)


def utc_now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _usable_cores() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def git_state(repo: Path = REPO_ROOT) -> dict:
    """{'commit': sha or None, 'dirty': bool or None, 'reason': why unknown}."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError) as exc:
        return {"commit": None, "dirty": None, "reason": f"git unavailable or not a repository: {exc}"}
    try:
        commit = git("rev-parse", "HEAD")
    except subprocess.CalledProcessError:
        return {"commit": None, "dirty": dirty, "reason": "repository has no commits yet"}
    return {"commit": commit, "dirty": dirty, "reason": None}


def _gpu_info(device: torch.device | None) -> dict | None:
    if device is None or device.type != "cuda" or not torch.cuda.is_available():
        return None
    idx = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(idx)
    return {
        "index": idx,
        "name": props.name,
        "memory_total_mib": round(props.total_memory / 2**20),
        "compute_capability": f"{props.major}.{props.minor}",
        "multiprocessors": props.multi_processor_count,
        "l2_cache_mib": round(getattr(props, "L2_cache_size", 0) / 2**20, 1) or None,
        "count_visible": torch.cuda.device_count(),
    }


def _driver_version() -> str | None:
    if not telemetry.nvml_available():
        return None
    import pynvml

    try:
        v = pynvml.nvmlSystemGetDriverVersion()
    except Exception:
        return None
    return v.decode() if isinstance(v, bytes) else str(v)


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return getattr(triton, "__version__", None)


def capture_environment(device: torch.device | str | None = None, config: dict | None = None) -> dict:
    """Everything needed to judge whether two results are comparable.

    device: the device the benchmark ran on ("cpu", "cuda", "cuda:1"); GPU facts are
      recorded only for a CUDA device.
    config: the benchmark configuration (suite, preset, smoke, dtype ...), stored as is.
    """
    dev = torch.device(device) if device is not None else None
    gpu = _gpu_info(dev)
    return {
        "date_utc": utc_now_iso(),
        "device": str(dev) if dev is not None else None,
        "gpu": gpu,
        "driver_version": _driver_version(),
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "torch_version": torch.__version__,
        "triton_version": _triton_version(),
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_count_usable": _usable_cores(),
        "torch_num_threads": torch.get_num_threads(),
        "git": git_state(),
        "env_vars": {k: os.environ[k] for k in _RELEVANT_ENV_VARS if k in os.environ},
        "argv": list(sys.argv[1:]),
        "config": dict(config or {}),
    }


def card_label(env: dict) -> str:
    """Short name of what was measured on: GPU name, or 'CPU: <model> (N cores)'."""
    gpu = env.get("gpu")
    if gpu:
        return f"{gpu['name']} ({gpu['memory_total_mib'] / 1024:.0f} GiB)"
    return f"CPU: {env.get('cpu_model') or 'unknown'} ({env.get('cpu_count_usable') or '?'} cores)"


def same_card(a: dict, b: dict) -> bool:
    """Whether two environments measured the same GPU (name and memory), or the same CPU model."""
    ga, gb = a.get("gpu"), b.get("gpu")
    if ga or gb:
        return bool(ga and gb and ga["name"] == gb["name"] and ga["memory_total_mib"] == gb["memory_total_mib"])
    return a.get("cpu_model") == b.get("cpu_model")
