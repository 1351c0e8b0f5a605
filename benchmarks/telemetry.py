"""NVML telemetry sampled in a background thread while a benchmark runs.

Why: a latency number from a card that was power- or thermally-throttled, or running
at reduced clocks, is not comparable with one that was not. Every timed entry carries
the power, energy, clocks, temperature, memory and throttle reasons seen during it, and
a throttled run is flagged so the report can mark it.

Without NVML (no driver, CPU-only machine) the sampler says so once through `logging`
and `summary()` returns None; `unavailable_reason()` tells why, for the result file.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time

log = logging.getLogger(__name__)

# NVML clock-event ("throttle") reason bits, from nvml.h. Kept here so the names are
# stable whatever nvidia-ml-py version is installed.
THROTTLE_REASON_BITS = {
    "gpu_idle": 0x1,
    "applications_clocks_setting": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80,
    "display_clock_setting": 0x100,
}
# Reasons that mean the card ran slower than it could have because of power or heat.
PERFORMANCE_THROTTLES = frozenset(
    {"sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown"}
)

_nvml_state: dict = {"initialized": False, "reason": None, "warned": False}
_nvml_lock = threading.Lock()


def torch_device_pci_bus_id(index: int) -> str | None:
    """NVML-style PCI bus id of torch's CUDA device `index`, or None if torch does not say."""
    import torch

    props = torch.cuda.get_device_properties(index)
    parts = [getattr(props, k, None) for k in ("pci_domain_id", "pci_bus_id", "pci_device_id")]
    if any(p is None for p in parts):
        return None
    return f"{parts[0]:08X}:{parts[1]:02X}:{parts[2]:02X}.0"


def decode_throttle_reasons(mask: int) -> list[str]:
    """Names of the NVML clock-event reason bits set in `mask`."""
    return [name for name, bit in THROTTLE_REASON_BITS.items() if mask & bit]


def _init_nvml():
    """Returns the pynvml module, initialized, or None (reason kept in _nvml_state)."""
    with _nvml_lock:
        if _nvml_state["initialized"]:
            import pynvml

            return pynvml
        if _nvml_state["reason"] is not None:
            return None
        try:
            import pynvml
        except ImportError as exc:
            _nvml_state["reason"] = f"nvidia-ml-py (pynvml) is not installed: {exc}"
            return None
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError subclasses: library not found, driver not loaded ...
            _nvml_state["reason"] = f"NVML unavailable ({type(exc).__name__}: {exc})"
            return None
        _nvml_state["initialized"] = True
        return pynvml


def nvml_available() -> bool:
    return _init_nvml() is not None


def unavailable_reason() -> str | None:
    """Why telemetry is null, or None when NVML works; the first time it is not None,
    it is also logged as a warning (once per process)."""
    _init_nvml()
    reason = _nvml_state["reason"]
    if reason is not None:
        _warn_once(reason)
    return reason


def _warn_once(reason: str) -> None:
    if not _nvml_state["warned"]:
        _nvml_state["warned"] = True
        log.warning("GPU telemetry disabled: %s; results will carry telemetry = null", reason)


def _reset_for_tests() -> None:
    """Forget the cached NVML state (tests only)."""
    with _nvml_lock:
        _nvml_state.update(initialized=False, reason=None, warned=False)


def _query(fn, *args):
    """One NVML query; None when the card does not support it."""
    try:
        return fn(*args)
    except Exception:
        return None


class NvmlSampler:
    """Samples one GPU every `interval_s` in a daemon thread between start() and stop().

    Use as a context manager; `summary()` afterwards returns a dict or None.
    """

    def __init__(self, device_index: int = 0, interval_s: float = 0.05, pci_bus_id: str | None = None):
        """device_index: NVML index; pci_bus_id ("00000000:3B:00.0"), when given, wins, since
        NVML ignores CUDA_VISIBLE_DEVICES and its indices can differ from torch's."""
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.device_index = device_index
        self.interval_s = interval_s
        self._nvml = _init_nvml()
        self._samples: list[dict] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._energy_start_mj = None
        self._energy_end_mj = None
        self._t_start = None
        self._t_end = None
        self._handle = None
        if self._nvml is None:
            _warn_once(_nvml_state["reason"])
        else:
            try:
                self._handle = None
                if pci_bus_id is not None:
                    self._handle = _query(self._nvml.nvmlDeviceGetHandleByPciBusId, pci_bus_id)
                if self._handle is None:
                    self._handle = self._nvml.nvmlDeviceGetHandleByIndex(device_index)
            except Exception as exc:
                self._nvml = None
                _nvml_state["reason"] = f"NVML has no GPU at index {device_index} ({exc})"
                _warn_once(_nvml_state["reason"])

    @property
    def available(self) -> bool:
        return self._nvml is not None

    @property
    def reason(self) -> str | None:
        return None if self.available else _nvml_state["reason"]

    def _sample(self) -> dict:
        nv, h = self._nvml, self._handle
        power = _query(nv.nvmlDeviceGetPowerUsage, h)
        mem = _query(nv.nvmlDeviceGetMemoryInfo, h)
        reasons_fn = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            nv, "nvmlDeviceGetCurrentClocksThrottleReasons"
        )
        return {
            "t": time.perf_counter(),
            "power_w": None if power is None else power / 1000.0,
            "sm_clock_mhz": _query(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM),
            "mem_clock_mhz": _query(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_MEM),
            "temperature_c": _query(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU),
            "memory_used_mib": None if mem is None else mem.used / 2**20,
            "throttle_mask": _query(reasons_fn, h),
        }

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._samples.append(self._sample())

    def start(self) -> "NvmlSampler":
        if not self.available:
            return self
        self._samples = []
        self._stop.clear()
        self._energy_start_mj = _query(self._nvml.nvmlDeviceGetTotalEnergyConsumption, self._handle)
        self._t_start = time.perf_counter()
        self._samples.append(self._sample())
        self._thread = threading.Thread(target=self._loop, name="nvml-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if not self.available or self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        self._samples.append(self._sample())
        self._t_end = time.perf_counter()
        self._energy_end_mj = _query(self._nvml.nvmlDeviceGetTotalEnergyConsumption, self._handle)

    def __enter__(self) -> "NvmlSampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def summary(self) -> dict | None:
        """Aggregates of the samples taken; None without NVML."""
        if not self.available or not self._samples or self._t_end is None:
            return None
        return summarize_samples(
            self._samples,
            duration_s=self._t_end - self._t_start,
            energy_counter_j=(
                None
                if self._energy_start_mj is None or self._energy_end_mj is None
                else (self._energy_end_mj - self._energy_start_mj) / 1000.0
            ),
            device_index=self.device_index,
            interval_s=self.interval_s,
        )


def _stats(values: list, keys=("min", "median", "max")) -> dict | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    out = {"min": min(vals), "median": statistics.median(vals), "max": max(vals), "mean": statistics.fmean(vals)}
    return {k: float(out[k]) for k in keys}


def summarize_samples(
    samples: list[dict],
    *,
    duration_s: float,
    energy_counter_j: float | None,
    device_index: int = 0,
    interval_s: float = 0.05,
) -> dict:
    """Telemetry summary of raw samples (dicts as produced by NvmlSampler._sample).

    Energy comes from the card's total-energy counter when it has one; otherwise it is
    the trapezoidal integral of sampled power, and `energy_source` says which.
    """
    if not samples:
        raise ValueError("summarize_samples needs at least one sample")
    mask = 0
    for s in samples:
        mask |= int(s.get("throttle_mask") or 0)
    reasons = decode_throttle_reasons(mask)
    throttled = sorted(PERFORMANCE_THROTTLES.intersection(reasons))

    energy_j, source = energy_counter_j, "counter"
    if energy_j is None:
        pts = [(s["t"], s["power_w"]) for s in samples if s.get("power_w") is not None]
        if len(pts) >= 2:
            energy_j = sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(pts, pts[1:]))
            source = "integrated_power"
        else:
            source = None
    return {
        "device_index": device_index,
        "interval_s": interval_s,
        "n_samples": len(samples),
        "duration_s": float(duration_s),
        "energy_j": None if energy_j is None else float(energy_j),
        "energy_source": source,
        "power_w": _stats([s.get("power_w") for s in samples], ("mean", "max")),
        "sm_clock_mhz": _stats([s.get("sm_clock_mhz") for s in samples]),
        "mem_clock_mhz": _stats([s.get("mem_clock_mhz") for s in samples]),
        "temperature_c": _stats([s.get("temperature_c") for s in samples], ("mean", "max")),
        "memory_used_mib": _stats([s.get("memory_used_mib") for s in samples], ("max",)),
        "throttle_reasons": reasons,
        "throttled": bool(throttled),
        "throttled_by": throttled,
    }
