"""Fit the model to a run (``tritonlab predict --calibrate RUN``): per-regime efficiencies from
its measured times, and the power coefficients from a contrast's power readings.

Efficiencies. With each kernel assigned to the roof it sits under (compute when
F / P >= Bytes / B at the current efficiencies), a point's time is linear in the inverse
efficiencies:

    t - launches l = C x + M y,   C = sum over compute-bound kernels F / P,
                                  M = sum over bandwidth-bound kernels Bytes / B,
                                  x = 1 / e_c, y = 1 / e_b

so each regime's (x, y) is the least-squares solution over its points, each equation divided
by its t so that every point weighs by its relative error. Points with only C or only M (a
sweep's single kernels) determine x and y separately; when the points cannot separate them
(one point, or all in the same proportion), a single factor scales both defaults. The
assignment is redone with the fitted values until it settles (3 rounds at most). A point
whose launches alone exceed its time is left out. Fitted on the lab's own kernels (impl
``triton``) when the run has any, else on every impl.

Power. From a contrast's phases with power readings and its idle baseline: the idle power is
the baseline, and (w_peak, e_byte) the non-negative least-squares solution of

    avg_power - idle = w_peak u + e_byte bytes/s,   u = FLOP/s / peak[dtype of the phase]

over the phases (rates from the model's FLOPs and bytes of a step over the measured seconds
per step); the limit is the one the run recorded. It needs the baseline and two phases.
w_peak is the dynamic power of the tensor cores at their full dense rate, so the energy per
FLOP of each dtype is w_peak / peak[dtype]: the defaults' rule (every dtype's peak draws the
same power, see :func:`tritonlab.hw.specs.power_model`), which lets phases in different
dtypes (an fp8 prefill beside a bf16 training step) share one fit and gives a coefficient
for every dtype the device has a peak for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from tritonlab.errors import UsageError
from tritonlab.hw.specs import COMPUTE_KEYS, PowerModel
from tritonlab.predict.measured import Measured, idle_power, measured_points, power_limit
from tritonlab.predict.model import DEFAULT_EFFICIENCY, Efficiency
from tritonlab.predict.targets import DTYPES, Target, run_target
from tritonlab.runs.store import Run, load_run

ROUNDS = 3


@dataclass
class Calibration:
    """What a run taught the model: efficiencies per regime fitted (regimes the run has no
    usable point of keep their defaults), a power model (None with ``power_reason`` when the
    run cannot give one), the device it was fitted on, and the fit's residuals."""

    run: str
    device: str
    target: Target
    efficiency: dict[str, Efficiency]
    fit: dict[str, dict]
    power: PowerModel | None
    power_reason: str | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"run": self.run, "device": self.device,
                "efficiency": {r: e.to_dict() for r, e in self.efficiency.items()},
                "fit": self.fit, "power": self.power.to_dict() if self.power else None,
                "power_reason": self.power_reason, "notes": self.notes}


def _terms(p: Measured, target: Target, x: float, y: float, launch_s: float
           ) -> tuple[float, float, float]:
    """(C, M, launches l) of a point, each kernel on the roof it sits under at 1/x, 1/y."""
    peak = target.peak(p.dtype) * 1e12
    bw = target.ceilings.bandwidth_gbps * 1e9
    c = m = 0.0
    for k in p.kernels:
        if k.flops / peak * x >= k.bytes / bw * y:
            c += k.flops / peak
        else:
            m += k.bytes / bw
    return c, m, sum(k.launches for k in p.kernels) * launch_s


def _solve(rows: Sequence[tuple[float, float, float]], x0: float, y0: float
           ) -> tuple[float, float]:
    """Least squares of C x + M y = r over rows (C, M, r), already scaled by 1/t; a common
    factor on (x0, y0) where the rows cannot separate x and y. The data determine x only
    where some C is nonzero, and y only where some M is (:func:`_determined`)."""
    cc = sum(c * c for c, _, _ in rows)
    mm = sum(m * m for _, m, _ in rows)
    cm = sum(c * m for c, m, _ in rows)
    cr = sum(c * r for c, _, r in rows)
    mr = sum(m * r for _, m, r in rows)
    det = cc * mm - cm * cm
    if det > 1e-9 * cc * mm and cc and mm:
        x, y = (cr * mm - mr * cm) / det, (mr * cc - cr * cm) / det
        if x > 0 and y > 0:
            return x, y
    if mm == 0 and cc:
        return cr / cc, y0
    if cc == 0 and mm:
        return x0, mr / mm
    p = [(c * x0 + m * y0, r) for c, m, r in rows]
    f = sum(a * r for a, r in p) / sum(a * a for a, _ in p)
    return f * x0, f * y0


def fit_efficiency(points: Sequence[Measured], target: Target, regime: str
                   ) -> tuple[Efficiency, dict] | None:
    """The regime's efficiencies fitted on ``points`` (module docstring), with the fit's
    facts (points used, rms relative residual); None when no point is usable."""
    base = DEFAULT_EFFICIENCY[regime]
    x, y = 1 / base.compute, 1 / base.bandwidth
    used: list[Measured] = []
    for _ in range(ROUNDS):
        rows, used = [], []
        for p in points:
            c, m, launch = _terms(p, target, x, y, base.launch_s)
            rest = p.measured_s - launch
            if rest > 0 and (c or m):
                rows.append((c / p.measured_s, m / p.measured_s, rest / p.measured_s))
                used.append(p)
        if not rows:
            return None
        nx, ny = _solve(rows, x, y)
        if math.isclose(nx, x, rel_tol=1e-9) and math.isclose(ny, y, rel_tol=1e-9):
            break
        x, y = nx, ny
    residual = math.sqrt(sum((c * x + m * y - r) ** 2 for c, m, r in rows) / len(rows))
    eff = Efficiency(1 / x, 1 / y, base.launch_s,
                     f"fitted on {len(used)} {regime} point(s) of the run")
    return eff, {"points": len(used), "rms_rel_residual": residual,
                 "labels": [p.label for p in used], "determined": _determined(rows)}


def _determined(rows: Sequence[tuple[float, float, float]]) -> list[str]:
    """The efficiencies the rows bear on: compute where a point has compute-bound kernels,
    bandwidth where one has bandwidth-bound kernels (the other keeps its default, or is
    scaled with it by a common factor)."""
    return [what for what, i in (("compute", 0), ("bandwidth", 1))
            if any(row[i] for row in rows)]


def _nonnegative_lsq(f: Sequence[float], b: Sequence[float], d: Sequence[float]
                     ) -> tuple[float, float]:
    """The non-negative least-squares (a, c) of a f + c b = d; an axis where the free
    solution is negative or the columns are (nearly) dependent, and 0 for an all-zero
    column."""
    ff, bb, fb = sum(v * v for v in f), sum(v * v for v in b), sum(u * v for u, v in zip(f, b))
    fd, bd = sum(u * v for u, v in zip(f, d)), sum(u * v for u, v in zip(b, d))
    det = ff * bb - fb * fb
    if ff and bb and det > 1e-12 * ff * bb:
        a, c = (fd * bb - bd * fb) / det, (bd * ff - fd * fb) / det
        if a >= 0 and c >= 0:
            return a, c
    cands = [(max(fd / ff, 0.0) if ff else 0.0, 0.0), (0.0, max(bd / bb, 0.0) if bb else 0.0)]
    return min(cands, key=lambda ac: sum((ac[0] * u + ac[1] * v - w) ** 2
                                         for u, v, w in zip(f, b, d)))


def fit_power(run: Run, points: Sequence[Measured], target: Target
              ) -> tuple[PowerModel | None, str | None]:
    """Power coefficients from a contrast's readings (module docstring), or (None, why)."""
    idle = idle_power(run)
    powered = [p for p in points if p.power_w is not None and p.seconds_per_step]
    if idle is None or len(powered) < 2:
        return None, ("the run has no power readings with an idle baseline and two phases "
                      "(a contrast on a GPU has them)")
    if not any(p.bytes for p in powered):
        return None, "the phases with power readings count no bytes moved"
    limit = power_limit(run) or (target.power.limit_w if target.power else None)
    if limit is None:
        return None, "no power limit recorded and the device has no datasheet TDP"
    u = [p.flops / p.seconds_per_step / (target.peak(p.dtype) * 1e12) for p in powered]
    b = [p.bytes / p.seconds_per_step for p in powered]
    w_peak, e_byte = _nonnegative_lsq(u, b, [p.power_w - idle for p in powered])
    # Phases without FLOPs say nothing of their energy: unknown, not free.
    per_flop = {k: (w_peak / peak if (peak := target.ceilings.peak(k)) and any(u) else None)
                for k in COMPUTE_KEYS}
    dtypes = sorted({DTYPES[p.dtype][0] for p in powered})
    return PowerModel(idle_w=idle, limit_w=limit, pj_per_flop=per_flop,
                      pj_per_byte=e_byte * 1e12,
                      source=f"fitted from {len(powered)} phases ({', '.join(dtypes)}) and the "
                             f"idle baseline of {run.path}; per FLOP = {w_peak:.0f} W at each "
                             f"dtype's full peak ({target.ceilings.source})"), None


def calibrate(path) -> Calibration:
    """Fit the model to the run at ``path``; UsageError when it has no usable point."""
    run = load_run(path, warn=None)
    target = run_target(run.manifest, run.contrast)
    points = measured_points(run)
    usable = [p for p in points if target.ceilings.peak(DTYPES[p.dtype][0])]
    if not usable:
        raise UsageError(f"{path}: no usable points to calibrate from (a sweep or contrast "
                         f"run with measured times, in a dtype {target.name} has a ceiling "
                         f"for)")
    lab = [p for p in usable if p.lab_kernel] or usable
    efficiency, fit = {}, {}
    for regime in DEFAULT_EFFICIENCY:
        got = fit_efficiency([p for p in lab if p.regime == regime], target, regime)
        if got is not None:
            efficiency[regime], fit[regime] = got
    if not efficiency:
        raise UsageError(f"{path}: no usable points to calibrate from (every point's launch "
                         f"overhead exceeds its measured time)")
    power, reason = fit_power(run, usable, target)
    notes = [f"efficiencies fitted on {target.name} against {target.ceilings.source}"]
    if not all(p.lab_kernel for p in lab):
        notes.append("the run has no Triton rows: fitted on every impl")
    for regime, eff in efficiency.items():
        over = [f"{what} {value:.2f}" for what, value in
                (("compute", eff.compute), ("bandwidth", eff.bandwidth))
                if value > 1.0 and what in fit[regime]["determined"]]
        if over:
            notes.append(f"{regime}: fitted efficiency above 1 ({', '.join(over)}): the points "
                         f"ran faster than the ceilings allow, so the ceilings are below what "
                         f"this device reaches (try --ceilings measured) or the counted work "
                         f"is more than the kernels did")
    return Calibration(str(run.path), target.name, target, efficiency, fit, power, reason,
                       notes)
