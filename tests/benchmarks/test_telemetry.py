"""benchmarks/telemetry.py: NVML sampling, throttle flags, and what happens without NVML.

A CPU machine has no NVML, so the sampler's GPU path runs against `_FakeNvml`, a
stand-in for the `pynvml` library (fixed readings, a thermal throttle); nothing of the
project is replaced.
"""

import logging
import sys
import time
import types

import pytest

from audiox_engine.benchmarks import environment, telemetry


def test_telemetry_without_nvml_warns_once(caplog):
    telemetry._reset_for_tests()
    if telemetry.nvml_available():
        pytest.skip("NVML works on this machine")
    telemetry._reset_for_tests()
    with caplog.at_level(logging.WARNING, logger="audiox_engine.benchmarks.telemetry"):
        samplers = [telemetry.NvmlSampler() for _ in range(3)]
        for s in samplers:
            with s:
                pass
    warnings = [r for r in caplog.records if "telemetry disabled" in r.getMessage()]
    assert len(warnings) == 1
    assert all(s.summary() is None and not s.available for s in samplers)
    assert telemetry.unavailable_reason()
    with pytest.raises(ValueError, match="interval_s must be > 0"):
        telemetry.NvmlSampler(interval_s=0)


class _FakeNvml:
    """Stands in for pynvml on a machine without a GPU: fixed readings, a thermal throttle."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0

    def __init__(self):
        self.energy_mj = 10_000_000

    def nvmlInit(self):
        pass

    def nvmlDeviceGetHandleByPciBusId(self, bus_id):
        raise RuntimeError("unknown bus id")

    def nvmlDeviceGetHandleByIndex(self, index):
        return f"gpu{index}"

    def nvmlDeviceGetPowerUsage(self, handle):
        return 250_000  # mW

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        self.energy_mj += 5_000
        return self.energy_mj

    def nvmlDeviceGetClockInfo(self, handle, kind):
        return 1980 if kind == self.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetTemperature(self, handle, kind):
        return 71

    def nvmlDeviceGetMemoryInfo(self, handle):
        return types.SimpleNamespace(used=3 * 2**30)

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        return 0x40  # hw_thermal_slowdown

    def nvmlSystemGetDriverVersion(self):
        return "550.54.15"


def test_nvml_sampler_with_fake_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml())
    telemetry._reset_for_tests()
    try:
        sampler = telemetry.NvmlSampler(0, interval_s=0.005, pci_bus_id="00000000:3B:00.0")
        assert sampler.available and sampler.reason is None
        with sampler:
            time.sleep(0.05)
        s = sampler.summary()
        assert s["n_samples"] >= 2 and s["energy_j"] == pytest.approx(5.0) and s["energy_source"] == "counter"
        assert s["power_w"]["max"] == pytest.approx(250.0) and s["memory_used_mib"]["max"] == pytest.approx(3072)
        assert s["throttled"] and s["throttled_by"] == ["hw_thermal_slowdown"]
        assert environment.capture_environment("cpu")["driver_version"] == "550.54.15"
    finally:
        telemetry._reset_for_tests()


def test_telemetry_summary_flags_throttling_and_integrates_power():
    samples = [
        {"t": 0.0, "power_w": 100.0, "sm_clock_mhz": 1980, "mem_clock_mhz": 2619, "temperature_c": 60,
         "memory_used_mib": 1000.0, "throttle_mask": 0x1},
        {"t": 1.0, "power_w": 300.0, "sm_clock_mhz": 1500, "mem_clock_mhz": 2619, "temperature_c": 85,
         "memory_used_mib": 1200.0, "throttle_mask": 0x20 | 0x4},
    ]
    s = telemetry.summarize_samples(samples, duration_s=1.0, energy_counter_j=None)
    assert s["energy_j"] == pytest.approx(200.0) and s["energy_source"] == "integrated_power"
    assert s["throttled"] and s["throttled_by"] == ["sw_power_cap", "sw_thermal_slowdown"]
    assert s["sm_clock_mhz"]["min"] == 1500 and s["temperature_c"]["max"] == 85
    calm = telemetry.summarize_samples(samples[:1], duration_s=0.1, energy_counter_j=12.5)
    assert not calm["throttled"] and calm["energy_j"] == 12.5 and calm["energy_source"] == "counter"
    assert calm["throttle_reasons"] == ["gpu_idle"]
    assert telemetry.decode_throttle_reasons(0x8 | 0x80) == ["hw_slowdown", "hw_power_brake_slowdown"]
