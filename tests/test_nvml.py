"""NVML access (tritonlab/hw/nvml.py) against the stand-in pynvml: the one device lookup
policy, and the clocks and facts of a CUDA device that manifests and timers record."""

from __future__ import annotations

import fake_pynvml as fake
import pytest
import torch

from tritonlab.hw import nvml


@pytest.fixture
def nv():
    fake.reset(devices=2)
    fake.nvmlInit()
    yield fake
    fake.reset()


def _ids(uuid=None, bus=None):
    return lambda _index: nvml.DeviceIds(uuid=uuid, pci_bus_id=bus)


def test_lookup_by_uuid_with_or_without_the_prefix(nv):
    second = nv.state.devices[1]
    assert nvml.find_device(nv, nvml.DeviceIds(uuid=second.uuid)) is second
    assert nvml.find_device(nv, nvml.DeviceIds(uuid=second.uuid.removeprefix("GPU-"))) is second


def test_lookup_falls_back_to_an_index_only_when_it_is_unambiguous(nv):
    assert nvml.find_device(nv, nvml.DeviceIds()) is nv.state.devices[0]
    assert nvml.find_device(nv, nvml.DeviceIds(index=1)) is nv.state.devices[1]
    assert nvml.find_device(nv, nvml.DeviceIds(uuid="GPU-gone", index=1)) is nv.state.devices[1]
    # Two devices and an unknown UUID: index 0 could be the wrong GPU.
    with pytest.raises(nvml.NvmlUnavailable, match="GPU-gone.*among 2 devices"):
        nvml.find_device(nv, nvml.DeviceIds(uuid="GPU-gone"))
    fake.reset(devices=1)
    fake.nvmlInit()
    assert nvml.find_device(fake, nvml.DeviceIds(uuid="GPU-gone")) is fake.state.devices[0]


def test_start_names_the_driver_error():
    fake.reset(init_error=fake.NVML_ERROR_DRIVER_NOT_LOADED)
    with pytest.raises(nvml.NvmlUnavailable, match="NVML did not start: Driver Not Loaded"):
        nvml.start(fake)
    fake.reset()


def test_clocks_and_facts_through_a_stand_in(nv):
    fake.reset(sm_clock_mhz=1755, mem_clock_mhz=2619, temp_c=61, power_w=512.0,
               throttle=0x1 | 0x4)
    cuda = nvml.CudaNvml(fake, ids=_ids(uuid=fake.state.devices[0].uuid))
    c = cuda.clocks(0)
    assert c["sm_clock_mhz"] == 1755 and c["mem_clock_mhz"] == 2619
    assert c["temperature_c"] == 61
    assert c["throttle_reasons"] == 0x5 and c["throttle"] == ["sw_power_cap"]
    assert c["slowdown"] is True
    assert c["power_w"] == pytest.approx(512.0, rel=0.01)
    fake.set_load(throttle=0x1)
    assert cuda.clocks(0)["slowdown"] is False
    facts = cuda.facts(0)
    assert facts["driver"] == "570.86.15" and facts["power_limit_w"] == 700.0
    assert fake.state.initialized == 1  # started once, kept for the process

    fake.reset(unsupported={"nvmlDeviceGetTemperature"})
    cuda = nvml.CudaNvml(fake, ids=_ids())
    c = cuda.clocks(0)
    assert c["temperature_c"] is None and c["sm_clock_mhz"] is not None


def test_no_handle_means_no_readings():
    fake.reset(init_error=fake.NVML_ERROR_LIBRARY_NOT_FOUND)
    cuda = nvml.CudaNvml(fake, ids=_ids())
    assert cuda.clocks(0) is None and cuda.facts(0) == {}
    fake.reset(devices=2)
    cuda = nvml.CudaNvml(fake, ids=_ids(uuid="GPU-gone"))
    assert cuda.handle(0) is None and cuda.clocks(0) is None
    fake.reset()


def test_gpu_clocks_are_none_without_nvml(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: covered by the timing tests' GPU lane")
    monkeypatch.setattr(nvml, "CUDA", nvml.CudaNvml())
    assert nvml.gpu_clocks(0) is None and nvml.device_facts(0) == {}
