"""Roofline arithmetic and the per-row roofline annotation.

attainable(I) = min(peak_compute, I x bandwidth) for arithmetic intensity I = FLOPs / bytes
(compulsory DRAM bytes); ridge = peak / bandwidth. A point left of the ridge is memory bound,
right of it compute bound. ``pct_roofline`` = achieved / attainable x 100.

Which compute peak applies is decided by the row's dtype (:func:`compute_key`): fp32 rows use
the CUDA-core fp32 peak unless the row says it ran on TF32 tensor cores (``"tf32": true`` or a
config with ``INPUT_PRECISION == "tf32"``).

The figures drawn from these numbers are in :mod:`tritonlab.report.plots`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from tritonlab.hw.devices import Ceilings, Peaks

ROW_FIELDS = ("roofline_tflops", "pct_roofline", "roofline_bound",
              "roofline_tflops_measured", "pct_roofline_measured", "roofline_bound_measured")


def compute_key(row: Mapping) -> str:
    """The ceilings key (:data:`tritonlab.hw.devices.COMPUTE_KEYS`) for a row."""
    dtype = str(row.get("dtype") or "")
    if dtype == "float32":
        config = row.get("config") if isinstance(row.get("config"), Mapping) else {}
        if row.get("tf32") or config.get("INPUT_PRECISION") == "tf32":
            return "tf32"
        return "float32"
    if "float8" in dtype or dtype == "fp8":
        return "fp8"
    return dtype


def attainable_tflops(intensity: float, peak_tflops: float, bandwidth_gbps: float) -> float:
    """min(peak, intensity x bandwidth) in TFLOP/s (intensity in FLOP/byte, bandwidth GB/s)."""
    return min(peak_tflops, intensity * bandwidth_gbps / 1e3)


def ridge(peak_tflops: float, bandwidth_gbps: float) -> float:
    """Intensity (FLOP/byte) where the memory roof meets the compute roof."""
    return peak_tflops * 1e3 / bandwidth_gbps


def bound(intensity: float, peak_tflops: float, bandwidth_gbps: float) -> str:
    """``"memory"`` left of the ridge, ``"compute"`` at or right of it."""
    return "memory" if intensity < ridge(peak_tflops, bandwidth_gbps) else "compute"


def intensity_of(row: Mapping) -> float | None:
    """FLOP/byte of a row, from ``intensity`` or from ``flops``/``bytes``."""
    value = row.get("intensity")
    if finite(value) and value > 0:
        return float(value)
    flops, nbytes = row.get("flops"), row.get("bytes")
    if finite(flops) and finite(nbytes) and nbytes > 0 and flops > 0:
        return float(flops) / float(nbytes)
    return None


def finite(value) -> bool:
    """A real number (not a bool), neither NaN nor infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _against(row: Mapping, ceilings: Ceilings | None) -> tuple[float | None, float | None,
                                                                 str | None]:
    if ceilings is None:
        return None, None, None
    peak = ceilings.peak(compute_key(row))
    bw = ceilings.bandwidth_gbps
    intensity = intensity_of(row)
    if peak is None or not bw or intensity is None:
        return None, None, None
    roof = attainable_tflops(intensity, peak, bw)
    achieved = row.get("tflops")
    pct = 100.0 * achieved / roof if finite(achieved) and row.get("error") is None else None
    return roof, pct, bound(intensity, peak, bw)


def annotate_row(row: dict, peaks: Peaks | None) -> None:
    """Fill a results row's roofline fields in place.

    ``roofline_tflops`` / ``pct_roofline`` / ``roofline_bound``: against the datasheet (spec)
    ceilings; ``..._measured``: against the measured ceilings. Each is None where that
    ceiling (or the row's intensity, or, for the percentages, its TFLOP/s) is unknown, and for
    a failed point (``error`` set) the percentages are None.
    """
    spec = peaks.spec if peaks else None
    measured = peaks.measured if peaks else None
    row["roofline_tflops"], row["pct_roofline"], row["roofline_bound"] = _against(row, spec)
    (row["roofline_tflops_measured"], row["pct_roofline_measured"],
     row["roofline_bound_measured"]) = _against(row, measured)
