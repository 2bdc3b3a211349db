"""What a prediction is made for: a device (a GPU of the device table, or the device a run
was measured on), its ceilings, memory capacity and power model, each with its source.

Ceilings: a table GPU gets its datasheet ceilings, or the ones ``tritonlab device
--measure`` cached for a GPU of that model when there are some; a run's device gets the
ceilings its manifest recorded (measured ones first: they are what the device attains).
Capacity: the datasheet's GB as 10^9 bytes. Power: :func:`tritonlab.hw.specs.power_model`
unless a calibration replaced it.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass

from tritonlab.errors import UsageError
from tritonlab.hw.devices import cache_path, cached_ceilings
from tritonlab.hw.specs import DEVICES, Ceilings, DeviceSpec, PowerModel, lookup, power_model

# What `predict` shows without --gpu on a machine without a table GPU: the three datacenter
# generations and the inference card, side by side.
DEFAULT_GPUS = ("H100 SXM5", "A100 SXM4 80GB", "L4", "H200 SXM")
# dtype -> (compute key of the device table, bytes per element). fp8 is e4m3/e5m2 weights,
# activations and KV cache (a hypothetical: the lab's layer workloads have no fp8 path).
DTYPES = {"float32": ("float32", 4), "float16": ("float16", 2), "bfloat16": ("bfloat16", 2),
          "fp8": ("fp8", 1)}


@dataclass(frozen=True)
class Target:
    """A device to predict for: ``name``, its ``ceilings`` (with their source), memory
    ``capacity_bytes`` (None when unknown), ``power`` (None when no model is known) and the
    table entry it came from (None for a device outside the table, such as a CPU)."""

    name: str
    ceilings: Ceilings
    capacity_bytes: int | None
    power: PowerModel | None
    spec: DeviceSpec | None = None

    def peak(self, dtype: str) -> float:
        """The compute ceiling for ``dtype`` in TFLOP/s; UsageError when there is none."""
        key = DTYPES[dtype][0]
        peak = self.ceilings.peak(key)
        if not peak:
            have = [d for d, (k, _) in DTYPES.items() if self.ceilings.peak(k)]
            raise UsageError(f"{self.name} has no {dtype} compute peak "
                             f"({self.ceilings.source}); dtypes it has: "
                             f"{', '.join(have) or 'none'}")
        return peak

    def assumptions(self) -> dict:
        return {"device": self.name, "ceilings": self.ceilings.to_dict(),
                "capacity_bytes": self.capacity_bytes,
                "capacity_source": ("datasheet GB as 10^9 bytes" if self.spec else
                                    "unknown" if self.capacity_bytes is None else "the run's"),
                "power": self.power.to_dict() if self.power else None}


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def resolve_gpu(name: str) -> DeviceSpec:
    """The table entry for ``name``: its exact table name, the same without spaces and
    punctuation ("H100-SXM5"), a device name as the driver reports it (the table's own
    matching: "NVIDIA H100 80GB HBM3", "H100-SXM"), or the first entry whose name starts with
    it ("A100"). Otherwise UsageError listing the table and suggesting the closest name."""
    for spec in DEVICES:
        if _norm(spec.name) == _norm(name):
            return spec
    spec = lookup(name)
    if spec is not None:
        return spec
    for spec in DEVICES:
        if _norm(name) and _norm(spec.name).startswith(_norm(name)):
            return spec
    names = [s.name for s in DEVICES]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.0)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UsageError(f"unknown GPU {name!r}{hint}; GPUs of the device table: {', '.join(names)}")


def measured_for(spec: DeviceSpec) -> Ceilings | None:
    """Ceilings that ``tritonlab device --measure`` cached for a GPU of this model (the most
    recent entry whose device name the table matches to ``spec``), or None."""
    try:
        doc = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return None
    found = [e for e in (doc.values() if isinstance(doc, dict) else ())
             if isinstance(e, dict) and isinstance(e.get("device"), str)
             and lookup(e["device"]) == spec]
    if not found:
        return None
    return Ceilings.from_dict(max(found, key=lambda e: str(e.get("source", ""))))


def gpu_target(spec: DeviceSpec, *, ceilings: str = "auto") -> Target:
    """A table GPU as a target. ``ceilings``: ``spec`` (datasheet), ``measured`` (the cached
    measurements; UsageError without any) or ``auto`` (measured where cached, else spec)."""
    measured = measured_for(spec) if ceilings in ("auto", "measured") else None
    if ceilings == "measured" and measured is None:
        raise UsageError(f"no measured ceilings cached for {spec.name}; run `tritonlab device "
                         f"--measure` on one, or use --ceilings spec")
    return Target(name=spec.name, ceilings=measured or spec.ceilings(),
                  capacity_bytes=int(spec.memory_gb * 1e9), power=power_model(spec), spec=spec)


def run_target(manifest: dict, contrast: dict | None) -> Target:
    """The device a run was measured on: its table entry's capacity and power model when it
    is a table GPU, and the ceilings the run recorded (measured first, else spec); for a run
    that recorded none, those cached for its device by ``tritonlab device --measure`` on
    this machine, else the table's. UsageError when no ceilings are known at all."""
    device = manifest.get("device") or {}
    name = device.get("name") if isinstance(device, dict) else str(device)
    name = name or "unknown device"
    spec = lookup(name) if manifest.get("backend") == "cuda" else None
    peaks = manifest.get("peaks") or {}
    recorded = (Ceilings.from_dict(peaks.get("measured")) or Ceilings.from_dict(peaks.get("spec"))
                if "measured" in peaks or "spec" in peaks else Ceilings.from_dict(peaks))
    if recorded is None and contrast:
        recorded = Ceilings.from_dict(contrast.get("peaks"))
    if recorded is None and isinstance(device, dict) and device.get("name"):
        recorded = cached_ceilings(device)  # measured on this machine by `device --measure`
    if recorded is None and spec is not None:
        recorded = spec.ceilings()
    if recorded is None or not recorded.bandwidth_gbps:
        raise UsageError(f"the run on {name} recorded no ceilings and its device is not in the "
                         f"device table: nothing to predict against (run `tritonlab device "
                         f"--measure` on that machine first)")
    capacity = int(spec.memory_gb * 1e9) if spec else (contrast or {}).get("capacity_bytes")
    return Target(name=spec.name if spec else name, ceilings=recorded,
                  capacity_bytes=capacity, power=power_model(spec) if spec else None, spec=spec)
