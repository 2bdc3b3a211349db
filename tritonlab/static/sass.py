"""Parsers for what the NVIDIA tools say about a compiled kernel: ``cuobjdump
--dump-resource-usage``, the ``ptxas -v`` log, the SASS listing (``cuobjdump -sass``) and the
PTX header. Pure functions of text, so they are tested on their own and re-run on cached
artifacts whenever the report format changes.
"""

from __future__ import annotations

import re
from collections import Counter

_RESOURCE_RE = re.compile(r"Function\s+(\S+):\s*\n?\s*(.*)")
_FIELD_RE = re.compile(r"([A-Z_]+(?:\[\d+\])?):(\d+)")


def parse_resource_usage(text: str) -> dict[str, dict[str, int]]:
    """``cuobjdump --dump-resource-usage`` -> {function: {"REG": n, "SHARED": n, ...}}.

    SHARED is the *static* shared memory of the function; Triton allocates its buffers as
    dynamic shared memory, whose size is in the kernel's metadata instead.
    """
    out: dict[str, dict[str, int]] = {}
    for m in _RESOURCE_RE.finditer(text):
        out[m.group(1)] = {k: int(v) for k, v in _FIELD_RE.findall(m.group(2))}
    return out


_PTXAS_USED_RE = re.compile(r"Used (\d+) registers")
_PTXAS_FRAME_RE = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, "
                             r"(\d+) bytes spill loads")
_PTXAS_SMEM_RE = re.compile(r"(\d+) bytes smem")


def parse_ptxas_log(text: str) -> dict[str, int] | None:
    """The ``ptxas -v`` report of one entry function: registers, stack frame, spill stores and
    loads (bytes), static smem. None when the log has no such report."""
    used = _PTXAS_USED_RE.search(text)
    frame = _PTXAS_FRAME_RE.search(text)
    if used is None or frame is None:
        return None
    smem = _PTXAS_SMEM_RE.search(text[used.start():])
    return {"registers": int(used.group(1)), "stack_frame": int(frame.group(1)),
            "spill_stores": int(frame.group(2)), "spill_loads": int(frame.group(3)),
            "smem": int(smem.group(1)) if smem else 0}


_PTX_THREADS_RE = re.compile(r"^\s*\.(?:reqntid|maxntid)\s+(\d+)(?:\s*,\s*(\d+))?(?:\s*,\s*(\d+))?",
                             re.M)


def ptx_threads(ptx: str) -> int | None:
    """Threads per block the PTX entry declares (``.reqntid`` / ``.maxntid``), or None."""
    m = _PTX_THREADS_RE.search(ptx)
    if m is None:
        return None
    n = 1
    for g in m.groups():
        if g:
            n *= int(g)
    return n


_SASS_ARCH_RE = re.compile(r"code for (sm_\w+)|\.target\s+(sm_\w+)")
# One instruction line: "/*0a30*/  @!P1 HGMMA.64x256x16.F32 R24, ... ;"
_SASS_INSN_RE = re.compile(
    r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P(?:\d|T)\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Za-z0-9_]+)*)", re.M)


def sass_arch(sass: str) -> str | None:
    """The architecture the SASS was generated for (e.g. ``sm_90a``)."""
    m = _SASS_ARCH_RE.search(sass)
    return (m.group(1) or m.group(2)) if m else None


def sass_opcodes(sass: str) -> Counter:
    """Static count of each full opcode (with modifiers, e.g. ``LDG.E.128``) in the listing."""
    return Counter(_SASS_INSN_RE.findall(sass))


TENSOR_CORE_RE = re.compile(r"^(?:[HQIBDO]G?MMA|UTC\w*MMA)$")
_WIDTH_MODS = {"128": 128, "64": 64, "U16": 16, "S16": 16, "U8": 8, "S8": 8, "32": 32}
_ASYNC = ("LDGSTS", "UTMALDG", "UTMASTG", "UTMAPF", "UBLKCP", "UTMAREDG")
_SHARED = ("LDS", "STS", "LDSM", "STSM", "ATOMS")
_BARRIERS = ("BAR", "SYNCS", "WARPGROUP", "DEPBAR", "LDGDEPBAR", "MEMBAR", "WARPSYNC", "UTCBAR")
_FP32 = ("FFMA", "FADD", "FMUL", "FMNMX", "MUFU")


def _width(opcode: str) -> int:
    for mod in opcode.split(".")[1:]:
        if mod in _WIDTH_MODS:
            return _WIDTH_MODS[mod]
    return 32


def instruction_mix(opcodes: Counter) -> dict:
    """Group a SASS opcode histogram into what a kernel engineer reads first.

    Counts are static (instructions in the binary, not executed instructions): a K loop's
    body appears once however many iterations run. ``tensor_core`` maps each tensor-core
    opcode with its shape (HMMA.16816.F32, HGMMA.64x256x16.F32, QGMMA..., UTCHMMA) to its
    count; global loads and stores are split by access width in bits (LDG.E.128 -> 128);
    ``async_copy`` counts cp.async (LDGSTS) and TMA (UTMALDG/UTMASTG) instructions;
    ``local`` counts LDL/STL, the trace of register spills and local arrays.
    """
    mix: dict = {"total": sum(opcodes.values()), "tensor_core": {}, "tensor_core_total": 0,
                 "fp32": {}, "global_load_bits": {}, "global_store_bits": {},
                 "async_copy": {}, "shared": {}, "local": {}, "barrier": {}}

    def add(group: str, name: str, n: int) -> None:
        mix[group][name] = mix[group].get(name, 0) + n

    for opcode, n in sorted(opcodes.items()):
        base = opcode.split(".")[0]
        if TENSOR_CORE_RE.match(base):
            add("tensor_core", opcode, n)
            mix["tensor_core_total"] += n
        elif base in _FP32:
            add("fp32", base, n)
        elif base == "LDG":
            add("global_load_bits", str(_width(opcode)), n)
        elif base == "STG":
            add("global_store_bits", str(_width(opcode)), n)
        elif base in _ASYNC:
            add("async_copy", base, n)
        elif base in _SHARED:
            add("shared", base, n)
        elif base in ("LDL", "STL"):
            add("local", base, n)
        elif base in _BARRIERS:
            add("barrier", base, n)
    return mix
