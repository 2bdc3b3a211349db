"""The device table (lookup by substring of real driver names, datasheet consistency), the
present device, measured ceilings and their cache, and `tritonlab device`."""

from __future__ import annotations

import json
import warnings

import pytest
from click.testing import CliRunner
from conftest import run_cli

from tritonlab.cli import cli
from tritonlab.errors import UsageError
from tritonlab.hw import devices

# Names as drivers report them (nvidia-smi / torch.cuda.get_device_name) -> table entry.
REAL_NAMES = {
    "NVIDIA H100 80GB HBM3": "H100 SXM5",
    "NVIDIA H100 PCIe": "H100 PCIe",
    "NVIDIA H100 NVL": "H100 NVL",
    "NVIDIA H200": "H200 SXM",
    "NVIDIA H200 NVL": "H200 NVL",
    "NVIDIA GH200 480GB": "GH200 96GB HBM3",
    "NVIDIA GH200 144G HBM3e": "GH200 144GB HBM3e",
    "NVIDIA A100-SXM4-40GB": "A100 SXM4 40GB",
    "NVIDIA A100-SXM4-80GB": "A100 SXM4 80GB",
    "NVIDIA A100 80GB PCIe": "A100 PCIe 80GB",
    "NVIDIA A100-PCIE-40GB": "A100 PCIe 40GB",
    "NVIDIA A10": "A10",
    "NVIDIA L40S": "L40S",
    "NVIDIA L40": "L40",
    "NVIDIA L4": "L4",
    "NVIDIA RTX 6000 Ada Generation": "RTX 6000 Ada",
    "NVIDIA GeForce RTX 4090": "RTX 4090",
    "NVIDIA RTX A6000": "RTX A6000",
    "NVIDIA GeForce RTX 3090": "RTX 3090",
    "Tesla V100-SXM2-16GB": "V100 SXM2",
    "Tesla V100-PCIE-32GB": "V100 PCIe",
    "Tesla T4": "T4",
}


@pytest.mark.parametrize("name,entry", sorted(REAL_NAMES.items()))
def test_lookup_by_substring_of_real_names(name, entry):
    spec = devices.lookup(name)
    assert spec is not None and spec.name == entry


@pytest.mark.parametrize("name", ["NVIDIA A10G", "NVIDIA B200", "AMD EPYC 9654", "",
                                  "NVIDIA GeForce RTX 4080"])
def test_unknown_names_match_nothing(name):
    assert devices.lookup(name) is None


def test_every_entry_is_reachable_by_a_real_name():
    # an entry shadowed by an earlier, looser pattern would never be returned
    assert {s.name for s in devices.DEVICES} == set(REAL_NAMES.values())


def test_datasheet_figures_are_consistent():
    for spec in devices.DEVICES:
        t = spec.tflops
        assert spec.source and spec.bandwidth_gbps > 0 and spec.sm_count > 0, spec.name
        assert set(t) == set(devices.COMPUTE_KEYS), spec.name
        assert t["float32"] and t["float16"] and t["float16"] >= t["float32"], spec.name
        if t["bfloat16"]:
            assert t["bfloat16"] == t["float16"], spec.name  # fp32-accumulate tensor rate
            assert t["tf32"] and t["float32"] <= t["tf32"] <= t["bfloat16"], spec.name
        if t["fp8"]:  # dense fp8 is twice the dense 16-bit rate on Hopper and Ada
            assert t["fp8"] == pytest.approx(2 * t["bfloat16"], rel=0.02), spec.name


def test_ridge_points_of_reference_gpus():
    assert devices.lookup("NVIDIA H100 80GB HBM3").ridge("bfloat16") == pytest.approx(295, abs=1)
    assert devices.lookup("NVIDIA H200").ridge("bfloat16") == pytest.approx(206, abs=1)
    assert devices.lookup("NVIDIA A100-SXM4-80GB").ridge("bfloat16") == pytest.approx(153, abs=1)


def test_spec_by_name_accepts_table_and_driver_names_and_lists_the_known():
    assert devices.spec_by_name("h100 sxm5").name == "H100 SXM5"
    assert devices.spec_by_name("NVIDIA A100-SXM4-40GB").name == "A100 SXM4 40GB"
    with pytest.raises(UsageError) as err:
        devices.spec_by_name("Voodoo 2")
    assert "H100 SXM5" in str(err.value) and "T4" in str(err.value)


def test_describe_present_device(be):
    info = devices.describe(be)
    assert info["backend"] == be.name and info["name"]
    if be.is_gpu:
        assert info["kind"] == "cuda" and info["sm_count"] > 0 and info["uuid"]
    else:
        assert info["kind"] == "cpu" and info["spec_name"] is None and info["cpus"] >= 1


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITONLAB_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_measured_ceilings_cache_round_trip(cache_dir):
    cpu = {"name": "Some CPU", "kind": "cpu", "backend": "interpreter"}
    assert devices.peaks_for(cpu) is None
    c = devices.Ceilings("measured test", {"float32": 0.1, "bfloat16": 0.2}, 20.0)
    path = devices.store_ceilings(cpu, c)
    assert path.parent == cache_dir
    peaks = devices.peaks_for(cpu)
    assert peaks.spec is None and peaks.measured.peak("float32") == 0.1
    assert peaks.measured.ridge("bfloat16") == pytest.approx(10.0)
    # keyed by device: another CPU, or a GPU with a UUID, does not see it
    assert devices.peaks_for({**cpu, "name": "Other CPU"}) is None
    h100 = {"name": "NVIDIA H100 80GB HBM3", "kind": "cuda", "uuid": "GPU-1", "backend": "cuda"}
    p = devices.peaks_for(h100)
    assert p.measured is None and p.spec.peak("bfloat16") == 989.4 and p.spec_name == "H100 SXM5"
    assert devices.Peaks.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_unknown_gpu_is_measured_once_with_a_warning(cache_dir, monkeypatch):
    unknown = {"name": "NVIDIA Future GPU", "kind": "cuda", "uuid": "GPU-x", "backend": "cuda",
               "spec_name": None}
    calls = []

    def fake_measure(backend=None, progress=None):
        calls.append(backend)
        return devices.Ceilings("measured now", {"bfloat16": 500.0}, 4000.0)

    monkeypatch.setattr(devices, "describe", lambda backend=None: unknown)
    monkeypatch.setattr(devices, "measure_ceilings", fake_measure)
    with pytest.warns(UserWarning, match="not in the device table"):
        peaks = devices.current_peaks("cuda")
    assert peaks.spec is None and peaks.measured.peak("bfloat16") == 500.0
    with pytest.warns(UserWarning, match="measured ceilings only"):
        again = devices.current_peaks("cuda")  # the cache answers: no second measurement
    assert len(calls) == 1 and again.measured.bandwidth_gbps == 4000.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        monkeypatch.setattr(devices, "describe", lambda backend=None: {**unknown, "uuid": "y"})
        assert devices.current_peaks("cuda", measure_unknown=False) is None


def test_device_spec_cli():
    r = run_cli("device", "--spec", "NVIDIA H100 80GB HBM3", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["name"] == "H100 SXM5" and doc["tflops"]["bfloat16"] == 989.4
    r = run_cli("device", "--spec", "H200")
    assert r.returncode == 0 and "4800" in r.stdout.replace(",", "") and "source" in r.stdout


def test_device_cli_bad_input():
    r = CliRunner().invoke(cli, ["device", "--spec", "Voodoo 2"])
    assert r.exit_code == 2 and "unknown device" in r.stderr and "H100 SXM5" in r.stderr
    assert "Traceback" not in r.stderr
    r = CliRunner().invoke(cli, ["device", "--spec", "H100 SXM5", "--measure"])
    assert r.exit_code == 2 and "give one of them" in r.stderr


def test_device_measure_cli_stores_ceilings_that_later_runs_use(be, tmp_path):
    if be.is_gpu:
        pytest.skip("measures the CPU lane's ceilings; the GPU lane has its own test")
    env = {"TRITONLAB_CACHE_DIR": str(tmp_path)}
    user_cache = devices.cache_path()
    before = user_cache.read_bytes() if user_cache.exists() else None
    r = run_cli("device", "--measure", "--json", env=env)
    assert r.returncode == 0, r.stderr
    measured = json.loads(r.stdout)["peaks"]["measured"]
    # a CPU: tens of GB/s at most per core pair, well under a TFLOP/s in fp32
    assert 0.1 < measured["bandwidth_gbps"] < 1000
    assert 1e-4 < measured["tflops"]["float32"] < 20
    assert measured["tflops"]["bfloat16"] > 0
    r = run_cli("device", env=env)
    assert r.returncode == 0 and "measured ceilings" in r.stdout
    assert (user_cache.read_bytes() if user_cache.exists() else None) == before  # untouched
    assert devices.Ceilings.from_dict(json.loads((tmp_path / "ceilings.json").read_text())[
        devices.device_key(devices.describe(be))]).tflops == measured["tflops"]


@pytest.mark.gpu
def test_measure_on_gpu_is_a_plausible_fraction_of_the_datasheet(gpu, be):
    info = devices.describe(be)
    spec = devices.lookup(info["name"])
    if spec is None:
        pytest.skip(f"{info['name']} is not in the device table")
    c = devices.measure_ceilings(be)
    # H100 SXM: ~3.0 of 3.35 TB/s and ~790 of 989 TFLOP/s bf16 (docs/reference.md, "GPU peaks")
    assert 0.5 < c.bandwidth_gbps / spec.bandwidth_gbps < 1.05
    assert 0.4 < c.tflops["bfloat16"] / spec.tflops["bfloat16"] < 1.05
