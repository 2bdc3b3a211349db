"""The measured points of a run, each with the kernels the model times for it: what
calibration fits and ``--against`` compares.

* a sweep row (op, impl, mode, dtype, shape): one kernel group with the row's own FLOPs and
  bytes (the op contract's formulas, as the sweep recorded them), measured time ``ms``;
* a layer contrast phase (train, prefill or decode at a grid point): the kernels of
  :mod:`tritonlab.predict.layer` for the run's plan (size, layers) in the phase's own dtype
  (an fp8 contrast trains in bf16), measured time the median step ``latency_p50_ms``;
* an FFN contrast phase (train or infer on a batch of tokens): the kernels of
  :func:`~tritonlab.predict.layer.ffn_kernels`, measured time the median step.

Failed, skipped and idle points are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

from tritonlab.predict import layer as L
from tritonlab.predict.points import LAUNCHES, op_regime
from tritonlab.predict.targets import DTYPES
from tritonlab.runs.store import Run


@dataclass(frozen=True)
class Measured:
    """One measured point: a ``label``, the ``op`` (a sweep's op, or ``layer``/``ffn``),
    ``impl``, ``regime`` (whose efficiencies the model uses), ``dtype``, the kernels, the
    tokens of a step, the measured seconds per call or step, and for a contrast phase its
    power and how many steps ran in how many seconds (for the power fit)."""

    label: str
    op: str
    impl: str
    regime: str
    dtype: str
    kernels: tuple[L.Kernel, ...]
    tokens: int
    measured_s: float
    lab_kernel: bool
    power_w: float | None = None
    seconds_per_step: float | None = None

    @property
    def flops(self) -> int:
        return sum(k.flops for k in self.kernels)

    @property
    def bytes(self) -> int:
        return sum(k.bytes for k in self.kernels)


def _dtype(name) -> str | None:
    name = str(name or "").removeprefix("torch.")
    return name if name in DTYPES else None


def _sweep_points(run: Run) -> list[Measured]:
    out = []
    for r in run.points.values():
        dtype = _dtype(r.get("dtype"))
        if r.get("error") or not r.get("ms") or dtype is None or not r.get("bytes"):
            continue
        shape = "x".join(str(v) for v in (r.get("shape") or {}).values())
        k = L.Kernel(r["op"], int(r.get("flops") or 0), int(r["bytes"]),
                     LAUNCHES.get(r["mode"], 1))
        out.append(Measured(f"{r['op']} {r['impl']} {r['mode']} {dtype} {shape}", r["op"],
                            r["impl"], op_regime(r["op"], r["mode"]), dtype, (k,), 1,
                            r["ms"] / 1e3, r.get("kind") == "triton" or r["impl"] == "triton"))
    return out


def _phase_common(p: dict) -> dict:
    """Power and the step rate of a contrast phase (for the power fit)."""
    steps, seconds = p.get("steps"), p.get("seconds")
    return {"power_w": p.get("avg_power_w"),
            "seconds_per_step": seconds / steps if steps and seconds else None}


def _contrast_points(run: Run) -> list[Measured]:
    doc = run.contrast or {}
    phases = [p for p in doc.get("phases") or []
              if p.get("mode") not in (None, "idle") and not p.get("error")
              and not p.get("skipped") and p.get("latency_p50_ms")]
    out = []
    if (doc.get("model") or {}).get("name") == "ffn":
        model = doc["model"]
        dtype = _dtype(model.get("dtype"))
        if dtype is None:
            return []
        for p in phases:
            pd = _dtype(p.get("dtype")) or dtype
            ks = L.ffn_kernels(p["mode"], model["dim"], model["hidden"], p["batch"],
                               DTYPES[pd][1])
            out.append(Measured(p["name"], "ffn", p["impl"],
                                "train" if p["mode"] == "train" else "prefill", pd,
                                tuple(ks), p["batch"], p["latency_p50_ms"] / 1e3,
                                p["impl"] == "triton", **_phase_common(p)))
        return out
    plan = doc.get("plan") or {}
    dtype = _dtype(plan.get("dtype"))
    if plan.get("model") != "layer" or dtype is None or plan.get("model_size") not in L.SIZES:
        return []
    cfg = L.LayerConfig.from_size(plan["model_size"])
    for p in phases:
        point = p.get("point") or {}
        second = next((point[k] for k in ("seq", "prompt", "context") if k in point), None)
        if p["mode"] not in L.REGIMES or second is None:
            continue
        pd = _dtype(p.get("dtype")) or dtype
        ks = L.kernels(p["mode"], cfg, plan["n_layers"], p["batch"], second, DTYPES[pd][1])
        out.append(Measured(p["name"], "layer", p["impl"], p["mode"], pd, tuple(ks),
                            L.tokens(p["mode"], p["batch"], second),
                            p["latency_p50_ms"] / 1e3, p["impl"] == "triton",
                            **_phase_common(p)))
    return out


def measured_points(run: Run) -> list[Measured]:
    """Every usable measured point of ``run`` (a sweep, a contrast, or both)."""
    return _sweep_points(run) + _contrast_points(run)


def idle_power(run: Run) -> float | None:
    """The idle baseline power of a contrast run, or None."""
    for p in (run.contrast or {}).get("phases") or []:
        if p.get("mode") == "idle" and p.get("avg_power_w") is not None:
            return float(p["avg_power_w"])
    return None


def power_limit(run: Run) -> float | None:
    """The power limit a contrast run recorded, or None."""
    for p in (run.contrast or {}).get("phases") or []:
        if p.get("power_limit_w"):
            return float(p["power_limit_w"])
    return None
