"""The roofline model: the time, bound, power and energy of a step from its kernels' FLOPs and
bytes against a device's ceilings.

Per kernel k of a step, with P the compute ceiling of the dtype, B the memory bandwidth, e_c
and e_b the regime's efficiencies (the share of each ceiling a real kernel attains) and l the
launch overhead per kernel:

    t_k = max(F_k / (e_c P), Bytes_k / (e_b B)) + launches_k l

and the step takes t = sum t_k (kernels run one after another; overlap between kernels is
not modelled). A kernel is ``compute`` bound when its first term is the larger, ``bandwidth``
bound otherwise, ``launch`` bound when the launch overhead exceeds both; the step's bound is
the one holding the largest share of its time.

Power (:class:`~tritonlab.hw.specs.PowerModel`): the step's dynamic energy is
E = e_flop F + e_byte Bytes (energy cannot overlap as time can: Choi et al., IPDPS 2013), so
the board draws P = idle + E / t. Above the power limit the clocks come down until it holds:
the step then takes t' = E / (limit - idle), its bound is ``power``, and P = limit. Energy
per step is idle t' + E, per token that over the step's tokens.

Everything here is arithmetic on numbers; where they come from (the device table, measured
ceilings, a calibration) is :mod:`tritonlab.predict.targets`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from tritonlab.hw.specs import PowerModel
from tritonlab.predict.layer import Kernel

BOUNDS = ("compute", "bandwidth", "launch", "power")


@dataclass(frozen=True)
class Efficiency:
    """The share of the compute and of the bandwidth ceiling a regime's kernels attain, the
    launch overhead per kernel in seconds, and where the numbers come from."""

    compute: float
    bandwidth: float
    launch_s: float
    source: str

    def to_dict(self) -> dict:
        return asdict(self)


# Defaults: llm-analysis's suggested FLOP efficiencies (0.5 training, 0.7 inference) and
# memory efficiency (0.9). Launch: about 4 us per kernel launched from Python; decode
# replays CUDA graphs (workloads.layer_serve.Decode), which leaves about 2 us of gap per
# kernel on the device.
_DEFAULT_SOURCE = ("default: llm-analysis's suggested efficiencies (FLOP 0.5 training, 0.7 "
                   "inference; memory 0.9); launch 4 us per kernel, 2 us under CUDA graphs")
DEFAULT_EFFICIENCY = {
    "train": Efficiency(0.5, 0.9, 4e-6, _DEFAULT_SOURCE),
    "prefill": Efficiency(0.7, 0.9, 4e-6, _DEFAULT_SOURCE),
    "decode": Efficiency(0.7, 0.9, 2e-6, _DEFAULT_SOURCE),
}


@dataclass(frozen=True)
class KernelTime:
    """One kernel's predicted time and its terms."""

    name: str
    flops: int
    bytes: int
    launches: int
    compute_s: float
    memory_s: float
    launch_s: float
    time_s: float
    bound: str

    def to_dict(self) -> dict:
        return asdict(self)


def kernel_time(k: Kernel, peak_tflops: float, bandwidth_gbps: float,
                eff: Efficiency) -> KernelTime:
    """t_k of the module docstring, with its bound."""
    compute = k.flops / (eff.compute * peak_tflops * 1e12)
    memory = k.bytes / (eff.bandwidth * bandwidth_gbps * 1e9)
    launch = k.launches * eff.launch_s
    if launch > max(compute, memory):
        bound = "launch"
    else:
        bound = "compute" if compute >= memory else "bandwidth"
    return KernelTime(k.name, k.flops, k.bytes, k.launches, compute, memory, launch,
                      max(compute, memory) + launch, bound)


@dataclass
class StepPrediction:
    """A step's predicted time, bound and power: the kernels' times summed, then the power
    cap applied (module docstring)."""

    kernels: list[KernelTime]
    flops: int
    bytes: int
    time_s: float
    uncapped_time_s: float
    bound: str
    time_by_bound: dict[str, float]
    power_w: float | None
    energy_j: float | None
    power_reason: str | None = None


def predict_step(ks: Sequence[Kernel], peak_tflops: float, bandwidth_gbps: float,
                 eff: Efficiency, power: PowerModel | None, compute_key: str) -> StepPrediction:
    """Time, bound, power and energy of one step of kernels ``ks``."""
    times = [kernel_time(k, peak_tflops, bandwidth_gbps, eff) for k in ks]
    total = sum(t.time_s for t in times)
    by_bound = {b: sum(t.time_s for t in times if t.bound == b) for b in BOUNDS[:3]}
    flops = sum(k.flops for k in ks)
    nbytes = sum(k.bytes for k in ks)
    bound = max(by_bound, key=by_bound.get)
    step = StepPrediction(times, flops, nbytes, total, total, bound, by_bound, None, None)
    per_flop = power.pj_per_flop.get(compute_key) if power else None
    if power is None or per_flop is None:
        step.power_reason = ("no power model for this device" if power is None else
                             f"no energy per FLOP for {compute_key} on this device")
        return step
    dynamic = (per_flop * flops + power.pj_per_byte * nbytes) * 1e-12
    headroom = power.limit_w - power.idle_w
    if dynamic / total > headroom:  # over the limit: clocks drop until the limit holds
        step.time_s = dynamic / headroom
        step.bound = "power"
        step.time_by_bound = {**by_bound, "power": step.time_s - total}
    step.power_w = power.idle_w + dynamic / step.time_s
    step.energy_j = power.idle_w * step.time_s + dynamic
    return step
