"""The device table: vendor datasheet ceilings of GPU models, and the ceilings types.

``spec`` ceilings are the vendor's dense (no 2:4 sparsity) peak per dtype and memory
bandwidth, from :data:`DEVICES`, matched by a substring (a regular expression searched,
case-insensitive) of the name the driver reports. Real names carry form factor and memory
size ("NVIDIA A100-SXM4-40GB", "NVIDIA H100 80GB HBM3"), so exact matching fails, and loose
matching picks the wrong card ("H200" is inside "GH200", "A10" inside "A100", "L40" inside
"L40S"): the table is ordered most specific first and the first match wins.
:class:`Ceilings` holds one source's ceilings (spec, or measured by
:mod:`tritonlab.hw.devices`); :class:`Peaks` pairs the two for one device.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from tritonlab.errors import UsageError
from tritonlab.output import fmt_num, table

# Keys of a ceilings table. ``float32`` is the CUDA-core (FFMA) rate; ``tf32`` is the tensor
# core rate for fp32 inputs rounded to TF32; ``float16``/``bfloat16`` tensor-core rates with
# fp32 accumulation; ``fp8`` (e4m3/e5m2) tensor-core rate.
COMPUTE_KEYS = ("float32", "tf32", "bfloat16", "float16", "fp8")


@dataclass(frozen=True)
class DeviceSpec:
    """Datasheet figures of one GPU model (dense peaks; None where the model lacks the format
    or no source gives it)."""

    name: str
    patterns: tuple[str, ...]
    arch: str
    sm_count: int
    tflops: dict[str, float | None]
    bandwidth_gbps: float
    tdp_w: float | None
    l2_mb: float | None
    memory_gb: float
    source: str
    notes: str = ""

    def matches(self, device_name: str) -> bool:
        return any(re.search(p, device_name, re.IGNORECASE) for p in self.patterns)

    def ceilings(self) -> Ceilings:
        return Ceilings(source=f"spec: {self.source}", tflops=dict(self.tflops),
                        bandwidth_gbps=self.bandwidth_gbps)

    def ridge(self, key: str) -> float | None:
        """FLOP/byte where the memory roof meets the compute roof for ``key``."""
        peak = self.tflops.get(key)
        return None if peak is None else peak * 1e3 / self.bandwidth_gbps

    def to_dict(self) -> dict:
        d = asdict(self)
        d["patterns"] = list(self.patterns)
        return d


def _tf(fp32, tf32, half, fp8=None, *, fp16=None):
    """A ceilings table; ``fp16`` differs from ``half`` (the bf16 rate) only on cards without
    bf16 (V100, T4)."""
    return {"float32": fp32, "tf32": tf32, "bfloat16": half,
            "float16": half if fp16 is None else fp16, "fp8": fp8}


_A100 = "NVIDIA A100 Tensor Core GPU datasheet (2021), dense figures"
_H100 = "NVIDIA H100 Tensor Core GPU datasheet (2023), dense = half the sparse figures"
_H200 = "NVIDIA H200 Tensor Core GPU datasheet (2024), dense = half the sparse figures"
_ADA = "NVIDIA Ada Lovelace architecture whitepaper v1.1 (2023), Appendix A"
_AMPERE = "NVIDIA Ampere GA102 GPU architecture whitepaper v2.1 (2021), Appendix A"

# Order matters: most specific first, the first match wins (see the module docstring).
DEVICES: tuple[DeviceSpec, ...] = (
    DeviceSpec("GH200 144GB HBM3e", (r"GH200.*(144G|HBM3e)",), "sm_90", 132,
               _tf(67, 494.7, 989.4, 1978.9), 4900, None, 50, 144,
               "NVIDIA GH200 Grace Hopper Superchip datasheet (2024), dense figures",
               "module power 450-1000 W is shared with the Grace CPU: no GPU TDP given"),
    DeviceSpec("GH200 96GB HBM3", (r"GH200",), "sm_90", 132,
               _tf(67, 494.7, 989.4, 1978.9), 4000, None, 50, 96,
               "NVIDIA GH200 Grace Hopper Superchip datasheet (2024), dense figures",
               "module power 450-1000 W is shared with the Grace CPU: no GPU TDP given"),
    DeviceSpec("H200 NVL", (r"H200 NVL",), "sm_90", 132,
               _tf(60, 417.5, 835.5, 1670.5), 4800, 600, 50, 141, _H200),
    DeviceSpec("H200 SXM", (r"H200",), "sm_90", 132,
               _tf(67, 494.7, 989.4, 1978.9), 4800, 700, 50, 141, _H200),
    DeviceSpec("H100 NVL", (r"H100 NVL",), "sm_90", 132,
               _tf(60, 417.5, 835.5, 1670.5), 3900, 400, 50, 94, _H100,
               "TDP 350-400 W (configurable)"),
    DeviceSpec("H100 PCIe", (r"H100.*PCIe",), "sm_90", 114,
               _tf(51, 378, 756, 1513), 2000, 350, 50, 80, _H100),
    DeviceSpec("H100 SXM5", (r"H100.*HBM3", r"H100.*SXM", r"^(NVIDIA )?H100$"), "sm_90", 132,
               _tf(67, 494.7, 989.4, 1978.9), 3350, 700, 50, 80, _H100),
    DeviceSpec("A100 SXM4 80GB", (r"A100.*SXM4?.*80GB",), "sm_80", 108,
               _tf(19.5, 156, 312), 2039, 400, 40, 80, _A100),
    DeviceSpec("A100 SXM4 40GB", (r"A100.*SXM4?",), "sm_80", 108,
               _tf(19.5, 156, 312), 1555, 400, 40, 40, _A100),
    DeviceSpec("A100 PCIe 80GB", (r"A100.*80GB.*PCIe", r"A100.*PCIe.*80GB"), "sm_80", 108,
               _tf(19.5, 156, 312), 1935, 300, 40, 80, _A100),
    DeviceSpec("A100 PCIe 40GB", (r"A100.*PCIe",), "sm_80", 108,
               _tf(19.5, 156, 312), 1555, 250, 40, 40, _A100),
    DeviceSpec("A10", (r"\bA10\b",), "sm_86", 72,
               _tf(31.2, 62.5, 125), 600, 150, 6, 24,
               "NVIDIA A10 Tensor Core GPU datasheet (2021), dense figures"),
    DeviceSpec("L40S", (r"L40S",), "sm_89", 142,
               _tf(91.6, 183, 362.05, 733), 864, 350, 96, 48,
               "NVIDIA L40S datasheet (2023), dense = half the sparse figures",
               "L2: the whitepaper's full AD102 has 96 MB; some pages give 48 MB"),
    DeviceSpec("L40", (r"\bL40\b",), "sm_89", 142,
               _tf(90.5, 90.5, 181.05, 362), 864, 300, 96, 48,
               "NVIDIA L40 datasheet (2022), dense = half the sparse figures"),
    DeviceSpec("L4", (r"\bL4\b",), "sm_89", 58,
               _tf(30.3, 60, 121, 242.5), 300, 72, 48, 24,
               "NVIDIA L4 Tensor Core GPU datasheet (2023), dense = half the sparse figures"),
    DeviceSpec("RTX 6000 Ada", (r"RTX 6000 Ada",), "sm_89", 142,
               _tf(91.1, 91.1, 182.1, 364.2), 960, 300, 96, 48,
               "NVIDIA RTX 6000 Ada Generation datasheet (2022), dense = half the sparse "
               "figures"),
    DeviceSpec("RTX 4090", (r"RTX 4090",), "sm_89", 128,
               _tf(82.6, 82.6, 165.2, 330.3), 1008, 450, 72, 24, _ADA,
               "fp16/bf16/fp8 with fp32 accumulation (fp16 accumulation doubles them)"),
    DeviceSpec("RTX A6000", (r"RTX A6000",), "sm_86", 84,
               _tf(38.7, 77.4, 154.8), 768, 300, 6, 48, _AMPERE),
    DeviceSpec("RTX 3090", (r"RTX 3090",), "sm_86", 82,
               _tf(35.6, 35.6, 71), 936, 350, 6, 24, _AMPERE,
               "fp16/bf16 with fp32 accumulation (fp16 accumulation doubles them)"),
    DeviceSpec("V100 SXM2", (r"V100.*SXM",), "sm_70", 80,
               _tf(15.7, None, None, fp16=125), 900, 300, 6, 32,
               "NVIDIA Tesla V100 datasheet (2020)", "no bf16 or tf32 on Volta"),
    DeviceSpec("V100 PCIe", (r"V100",), "sm_70", 80,
               _tf(14, None, None, fp16=112), 900, 250, 6, 32,
               "NVIDIA Tesla V100 datasheet (2020)", "no bf16 or tf32 on Volta"),
    DeviceSpec("T4", (r"\bT4\b",), "sm_75", 40,
               _tf(8.1, None, None, fp16=65), 320, 70, 4, 16,
               "NVIDIA T4 Tensor Core GPU datasheet (2019)", "no bf16 or tf32 on Turing"),
)


# ------------------------------------------------------------------------- power model

# Energy per byte moved from DRAM to the SMs: the DRAM access (HBM2: 3.9 pJ/bit, O'Connor et
# al., "Fine-Grained DRAM", MICRO 2017; GDDR6: about 7.5 pJ/bit, the figure Micron quotes)
# times 2 for the on-chip path it then takes (L2, crossbar, shared memory: an assumption of
# the same order as the DRAM access).
_HBM_PJ_PER_BYTE = 3.9 * 8 * 2
_GDDR_PJ_PER_BYTE = 7.5 * 8 * 2
# Idle power as a share of the TDP (an assumption: an H100 SXM board idles near 70 W of its
# 700 W; the share varies by board, which is why `tritonlab predict --calibrate` fits it).
IDLE_SHARE = 0.10
# A dense GEMM at this share of a dtype's peak is taken to draw the TDP (large GEMMs reach
# the power limit on A100/H100-class boards); e_flop follows from it.
GEMM_AT_TDP = 0.80
_HBM = re.compile(r"A100|H100|H200|GH200|V100")


@dataclass(frozen=True)
class PowerModel:
    """Board power of one GPU model as idle power plus energy per FLOP and per byte moved,
    capped at the power limit (the energy roofline of Choi et al., IPDPS 2013):

        P = min(limit_w, idle_w + pj_per_flop[key] * FLOP/s + pj_per_byte * bytes/s)

    ``pj_per_flop`` per compute key of :data:`COMPUTE_KEYS` (None where the model has no
    peak for it); ``source`` says where each coefficient comes from."""

    idle_w: float
    limit_w: float
    pj_per_flop: dict[str, float | None]
    pj_per_byte: float
    source: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PowerModel:
        return cls(idle_w=float(d["idle_w"]), limit_w=float(d["limit_w"]),
                   pj_per_flop=dict(d["pj_per_flop"]), pj_per_byte=float(d["pj_per_byte"]),
                   source=str(d.get("source", "")))


def power_model(spec: DeviceSpec) -> PowerModel | None:
    """The default power coefficients of a table entry, None where its TDP is unknown (the
    GH200 shares its module power with the CPU):

    * limit_w: the datasheet TDP;
    * idle_w: :data:`IDLE_SHARE` of the TDP (assumption);
    * pj_per_byte: HBM or GDDR energy per bit, doubled for the on-chip path (see
      ``_HBM_PJ_PER_BYTE``);
    * pj_per_flop[key]: (TDP - idle) / (:data:`GEMM_AT_TDP` * peak[key]): a GEMM at 80% of
      the dense peak draws the TDP (derived from the datasheet, not measured)."""
    if spec.tdp_w is None:
        return None
    idle = IDLE_SHARE * spec.tdp_w
    hbm = bool(_HBM.search(spec.name))
    per_flop = {key: None if not peak else
                (spec.tdp_w - idle) / (GEMM_AT_TDP * peak * 1e12) * 1e12
                for key, peak in spec.tflops.items()}
    memory = ("HBM 3.9 pJ/bit (O'Connor et al., MICRO 2017)" if hbm else
              "GDDR6 about 7.5 pJ/bit (Micron)")
    return PowerModel(
        idle_w=idle, limit_w=float(spec.tdp_w), pj_per_flop=per_flop,
        pj_per_byte=_HBM_PJ_PER_BYTE if hbm else _GDDR_PJ_PER_BYTE,
        source=(f"defaults: limit = datasheet TDP ({spec.source}); idle = "
                f"{IDLE_SHARE:.0%} of TDP (assumption); per byte = {memory} x 2 for the "
                f"on-chip path (assumption); per FLOP = a GEMM at {GEMM_AT_TDP:.0%} of the "
                f"dense peak draws the TDP (derived from the datasheet)"))


def lookup(device_name: str) -> DeviceSpec | None:
    """The datasheet entry of a device name as the driver reports it, or None."""
    for spec in DEVICES:
        if spec.matches(device_name):
            return spec
    return None


def spec_by_name(name: str) -> DeviceSpec:
    """``tritonlab device --spec NAME``: an entry by its table name or a device name;
    UsageError naming the known ones otherwise."""
    for spec in DEVICES:
        if spec.name.lower() == name.strip().lower():
            return spec
    spec = lookup(name)
    if spec is None:
        raise UsageError(f"unknown device {name!r}; known devices: "
                         f"{', '.join(s.name for s in DEVICES)}")
    return spec


@dataclass(frozen=True)
class Ceilings:
    """Compute ceilings (TFLOP/s per :data:`COMPUTE_KEYS`) and memory bandwidth (GB/s, read
    + write bytes per second) of one device from one source."""

    source: str
    tflops: dict[str, float | None]
    bandwidth_gbps: float | None
    details: dict = field(default_factory=dict)

    def peak(self, key: str) -> float | None:
        return self.tflops.get(key)

    def ridge(self, key: str) -> float | None:
        peak = self.peak(key)
        if peak is None or not self.bandwidth_gbps:
            return None
        return peak * 1e3 / self.bandwidth_gbps

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> Ceilings | None:
        if not d:
            return None
        return cls(source=str(d.get("source", "")), tflops=dict(d.get("tflops") or {}),
                   bandwidth_gbps=d.get("bandwidth_gbps"), details=dict(d.get("details") or {}))


@dataclass(frozen=True)
class Peaks:
    """What a roofline is drawn against: the spec ceilings and the measured ones (either may
    be None), for one device."""

    device: str
    backend: str
    spec: Ceilings | None
    measured: Ceilings | None
    spec_name: str | None = None

    def source(self, which: str) -> Ceilings | None:
        if which not in ("spec", "measured"):
            raise ValueError(f"unknown ceiling source {which!r}; use 'spec' or 'measured'")
        return self.spec if which == "spec" else self.measured

    def to_dict(self) -> dict:
        return {"device": self.device, "backend": self.backend, "spec_name": self.spec_name,
                "spec": self.spec.to_dict() if self.spec else None,
                "measured": self.measured.to_dict() if self.measured else None}

    @classmethod
    def from_dict(cls, d: dict) -> Peaks:
        return cls(device=str(d.get("device", "")), backend=str(d.get("backend", "")),
                   spec=Ceilings.from_dict(d.get("spec")),
                   measured=Ceilings.from_dict(d.get("measured")),
                   spec_name=d.get("spec_name"))


def table_cell(value: float | None):
    """A table cell: the number (tabulate formats it) or "-" where it is unknown."""
    return "-" if value is None else value


def spec_lines(spec: DeviceSpec) -> list[str]:
    """A datasheet entry as text lines (``tritonlab device --spec``)."""
    rows = [[key, table_cell(spec.tflops.get(key)), table_cell(spec.ridge(key))] for key in COMPUTE_KEYS]
    lines = [f"{spec.name} ({spec.arch}), matched by: {', '.join(spec.patterns)}",
             f"SMs {spec.sm_count} · memory {spec.memory_gb:g} GB at "
             f"{spec.bandwidth_gbps:,.0f} GB/s · L2 {fmt_num(spec.l2_mb, 'g')} MB · "
             f"TDP {fmt_num(spec.tdp_w, 'g')} W",
             table(rows, ["dtype", "dense peak TFLOP/s", "ridge FLOP/B"], floatfmt=".5g"),
             f"source: {spec.source}"]
    if spec.notes:
        lines.append(f"note: {spec.notes}")
    return lines
