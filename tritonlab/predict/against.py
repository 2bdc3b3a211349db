"""The prediction for every point of a run next to what was measured (``tritonlab predict
--against RUN``), the ratio per point and the model's error, written to
``RUN/prediction.json`` for ``tritonlab report``.

The prediction is made for the device the run was measured on (:func:`run_target`: the
ceilings the run recorded), with the default efficiencies or those of a calibration. Per
point, ratio = predicted time / measured time (above 1: the model is pessimistic). Per op
and per regime: the geometric mean of the ratios (the model's bias), the geometric-mean
error exp(mean |ln ratio|) (a factor >= 1: 1.5 means off by 50% either way, on average) and
the worst point (the largest max(ratio, 1/ratio)).

A run measured under the interpreter says nothing about a GPU: its comparison checks the
mechanics only (the document says so), never the model's accuracy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from tritonlab.errors import UsageError
from tritonlab.output import dumps
from tritonlab.predict.calibrate import Calibration
from tritonlab.predict.measured import Measured, measured_points
from tritonlab.predict.model import DEFAULT_EFFICIENCY, predict_step
from tritonlab.predict.targets import DTYPES, Target, run_target
from tritonlab.runs.store import Run, atomic_write_text, load_run

PREDICTION = "prediction.json"
LABEL = "PREDICTION: an analytic roofline model, not a measurement"


def error_summary(ratios: Sequence[tuple[str, float]]) -> dict:
    """Bias, geometric-mean error and worst point of (label, ratio) pairs."""
    logs = [math.log(r) for _, r in ratios]
    worst_label, worst = max(ratios, key=lambda lr: abs(math.log(lr[1])))
    return {"points": len(ratios), "geomean_ratio": math.exp(sum(logs) / len(logs)),
            "geomean_error": math.exp(sum(abs(v) for v in logs) / len(logs)),
            "worst_error": max(worst, 1 / worst), "worst_ratio": worst,
            "worst_point": worst_label}


def _row(p: Measured, target: Target, calibration: Calibration | None) -> dict:
    eff = (calibration.efficiency if calibration else {}).get(p.regime,
                                                              DEFAULT_EFFICIENCY[p.regime])
    key = DTYPES[p.dtype][0]
    step = predict_step(p.kernels, target.peak(p.dtype), target.ceilings.bandwidth_gbps, eff,
                        target.power, key)
    return {"point": p.label, "op": p.op, "impl": p.impl, "regime": p.regime,
            "dtype": p.dtype, "flops": p.flops, "bytes": p.bytes,
            "predicted_s": step.time_s, "measured_s": p.measured_s,
            "ratio": step.time_s / p.measured_s, "bound": step.bound}


def against(path, calibration: Calibration | None = None) -> dict:
    """Compare the model with every point of the run at ``path`` (module docstring)."""
    run = load_run(path, warn=None)
    return against_run(run, calibration)


def against_run(run: Run, calibration: Calibration | None = None) -> dict:
    """:func:`against` for a run already read."""
    target = run_target(run.manifest, run.contrast)
    points = [p for p in measured_points(run) if target.ceilings.peak(DTYPES[p.dtype][0])]
    if not points:
        raise UsageError(f"{run.path}: no measured point to compare with (a sweep or contrast "
                         f"run with times, in a dtype {target.name} has a ceiling for)")
    rows = [_row(p, target, calibration) for p in points]
    groups: dict[str, dict[str, list]] = {"op": {}, "regime": {}}
    for r in rows:
        groups["op"].setdefault(r["op"], []).append((r["point"], r["ratio"]))
        groups["regime"].setdefault(r["regime"], []).append((r["point"], r["ratio"]))
    gpu = run.is_gpu
    return {
        "kind": "prediction-against", "predicted": True, "label": LABEL,
        "run": str(run.path), "run_label": run.label, "backend": run.backend,
        "device": target.name, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "accuracy_claim": gpu,
        "note": (f"Measured on {target.name}: the errors below are the model's on this GPU"
                 if gpu else
                 f"Measured under the {run.backend} backend on {target.name}: a mechanics "
                 f"check of the comparison, not the model's accuracy on any GPU"),
        "assumptions": {
            **target.assumptions(),
            "efficiency": {r: e.to_dict() for r, e in
                           {**DEFAULT_EFFICIENCY,
                            **(calibration.efficiency if calibration else {})}.items()},
            "calibration": calibration.to_dict() if calibration else None,
        },
        "points": rows,
        "error": {"overall": error_summary([(r["point"], r["ratio"]) for r in rows]),
                  **{g: {k: error_summary(v) for k, v in sorted(d.items())}
                     for g, d in groups.items()}},
    }


def save(run_dir, **parts) -> Path:
    """Write ``parts`` into ``RUN/prediction.json`` (atomically), keeping what the file
    already holds under other keys: ``gpus`` (a prediction for GPUs, from the demo) and
    ``against`` (a comparison with the run). Returns the path."""
    path = Path(run_dir) / PREDICTION
    doc = read(run_dir) or {"kind": "prediction", "predicted": True, "label": LABEL}
    atomic_write_text(path, dumps({**doc, **parts}) + "\n")
    return path


def read(run_dir) -> dict | None:
    """``RUN/prediction.json``, or None when the run has none (or it is unreadable)."""
    try:
        doc = json.loads((Path(run_dir) / PREDICTION).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
