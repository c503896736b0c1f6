"""NVIDIA GPUs through NVML (nvidia-ml-py's ``pynvml``): the total-energy counter (mJ) on Volta
and newer; on older GPUs power (mW) is polled and integrated. NVML does not exist on Jetson."""

from __future__ import annotations

from .measurement import Meter, MeterUnavailable, PollingMeter


def _load(pynvml=None):
    if pynvml is None:
        try:
            import pynvml  # provided by nvidia-ml-py
        except ImportError as e:
            raise MeterUnavailable("pynvml is missing: pip install nvidia-ml-py") from e
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        raise MeterUnavailable(f"NVML unavailable: {e} (no NVIDIA driver here)") from e
    return pynvml


class NvmlMeter(Meter):
    """``pynvml`` may be injected: tests replay recorded NVML answers; the real module is the default."""

    name = "nvml"
    update_period_s = 0.1

    def __init__(self, index: int = 0, pynvml=None):
        super().__init__()
        self.nvml = _load(pynvml)
        try:
            self.handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
        except self.nvml.NVMLError as e:
            raise MeterUnavailable(f"NVML: no GPU {index}: {e}") from e
        self.index = index
        self._start = self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)  # NotSupported before Volta

    def _cumulative(self) -> dict:
        return {"gpu": (self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) - self._start) / 1e3}

    def provenance(self) -> dict:
        return {"gpu": f"measured: NVML nvmlDeviceGetTotalEnergyConsumption, GPU {self.index}"}


class NvmlPowerMeter(PollingMeter):
    """Pre-Volta GPUs: poll nvmlDeviceGetPowerUsage and integrate."""

    name = "nvml-power"

    def __init__(self, index: int = 0, pynvml=None, hz: float = 20.0):
        self.nvml = _load(pynvml)
        self.handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
        self.index = index
        super().__init__(hz)

    def _power(self) -> dict:
        return {"gpu": self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1e3}

    def provenance(self) -> dict:
        return {"gpu": f"measured: NVML nvmlDeviceGetPowerUsage polled at {self._hz:g} Hz, GPU {self.index}"}


def nvml_meter(index: int = 0, pynvml=None) -> Meter:
    """The energy counter when the GPU has one, else integrated power polling."""
    nv = _load(pynvml)
    try:
        return NvmlMeter(index, nv)
    except nv.NVMLError_NotSupported:
        return NvmlPowerMeter(index, nv)
