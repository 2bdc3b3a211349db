"""The GPU architectures static inspection compiles for, their per-SM limits, and the
theoretical occupancy of a compiled kernel on one of them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tritonlab import backend
from tritonlab.errors import UsageError


@dataclass(frozen=True)
class ArchLimits:
    """The per-SM and per-block limits that bound occupancy on one compute capability.

    Values from the CUDA C++ Programming Guide, "Technical Specifications per Compute
    Capability", and the allocation rules of the CUDA occupancy calculator
    (``cuda_occupancy.h``): registers are allocated per warp in units of
    ``reg_alloc_unit`` registers, in each of ``sub_partitions`` register-file partitions;
    shared memory per block is rounded up to ``smem_alloc_unit`` bytes after adding the
    ``smem_reserved_per_block`` bytes the driver keeps for each block.
    """

    name: str
    capability: tuple[int, int]
    gpus: str
    regs_per_sm: int = 65536
    max_regs_per_block: int = 65536
    max_regs_per_thread: int = 255
    reg_alloc_unit: int = 256
    sub_partitions: int = 4
    smem_per_sm: int = 167936
    smem_per_block_optin: int = 166912
    smem_reserved_per_block: int = 1024
    smem_alloc_unit: int = 128
    max_threads_per_sm: int = 2048
    max_warps_per_sm: int = 64
    max_blocks_per_sm: int = 32
    max_threads_per_block: int = 1024

    @property
    def cc(self) -> int:
        """The capability as Triton's ``GPUTarget`` takes it (80, 90, ...)."""
        return self.capability[0] * 10 + self.capability[1]


_KB = 1024
ARCHS: dict[str, ArchLimits] = {
    a.name: a for a in (
        ArchLimits("sm_80", (8, 0), "A100", smem_per_sm=164 * _KB,
                   smem_per_block_optin=163 * _KB),
        ArchLimits("sm_86", (8, 6), "RTX 30xx, A10, A40", smem_per_sm=100 * _KB,
                   smem_per_block_optin=99 * _KB, max_threads_per_sm=1536,
                   max_warps_per_sm=48, max_blocks_per_sm=16),
        ArchLimits("sm_89", (8, 9), "L4, L40S, RTX 40xx", smem_per_sm=100 * _KB,
                   smem_per_block_optin=99 * _KB, max_threads_per_sm=1536,
                   max_warps_per_sm=48, max_blocks_per_sm=24),
        ArchLimits("sm_90a", (9, 0), "H100, H200", smem_per_sm=228 * _KB,
                   smem_per_block_optin=227 * _KB),
        ArchLimits("sm_100a", (10, 0), "B200", smem_per_sm=228 * _KB,
                   smem_per_block_optin=227 * _KB),
        ArchLimits("sm_120a", (12, 0), "RTX 50xx, RTX PRO 6000 Blackwell",
                   smem_per_sm=100 * _KB, smem_per_block_optin=99 * _KB,
                   max_threads_per_sm=1536, max_warps_per_sm=48, max_blocks_per_sm=32),
    )
}
# Triton compiles every capability from 9.0 on for its architecture-specific target
# (sm_90a, sm_100a, sm_120a: wgmma and tcgen05 exist only in the first two).
ARCH_ALIASES = {"sm_90": "sm_90a", "sm_100": "sm_100a", "sm_120": "sm_120a"}


def parse_arch(name: str | tuple[int, int]) -> ArchLimits:
    """``"sm_90a"`` (or an alias such as ``"sm_90"``, or a capability tuple like ``(9, 0)``)
    -> its limits; UsageError naming the supported architectures otherwise."""
    if isinstance(name, tuple):
        for a in ARCHS.values():
            if a.capability == tuple(name):
                return a
        key = f"sm_{name[0]}{name[1]}"
    else:
        key = ARCH_ALIASES.get(name.strip().lower(), name.strip().lower())
        if key in ARCHS:
            return ARCHS[key]
    raise UsageError(f"unsupported architecture {key!r}; supported: {', '.join(ARCHS)} "
                     f"(aliases: {', '.join(f'{k}={v}' for k, v in ARCH_ALIASES.items())})")


def default_archs() -> list[ArchLimits]:
    """The GPU's own architecture on the cuda backend, else sm_90a (the lab's H100/H200)."""
    if backend.current().is_gpu:
        try:
            return [parse_arch(tuple(torch.cuda.get_device_capability()))]
        except UsageError:
            pass
    return [ARCHS["sm_90a"]]


def _round_up(x: int, unit: int) -> int:
    return -(-x // unit) * unit


def occupancy(arch: ArchLimits, registers: int, threads: int, smem_bytes: int) -> dict:
    """Theoretical occupancy of a kernel on ``arch`` (the CUDA occupancy calculator's rules).

    ``registers`` per thread, ``threads`` per block, ``smem_bytes`` of shared memory per
    block (static + dynamic). Returns the blocks that fit on one SM under each limit
    (``limits``: registers, shared_memory, warps, blocks), the binding one(s) (``limiter``),
    ``blocks_per_sm``, ``warps_per_sm``, ``occupancy`` (active warps / the SM's maximum) and
    ``fits`` with ``reason`` when the kernel cannot launch at all.
    """
    warps = max(1, math.ceil(threads / 32))
    reasons = []
    if threads > arch.max_threads_per_block:
        reasons.append(f"{threads} threads per block > {arch.max_threads_per_block}")
    if registers > arch.max_regs_per_thread:
        reasons.append(f"{registers} registers per thread > {arch.max_regs_per_thread}")
    if smem_bytes > arch.smem_per_block_optin:
        reasons.append(f"{smem_bytes} bytes of shared memory per block > "
                       f"{arch.smem_per_block_optin} on {arch.name}")

    regs_per_warp = _round_up(registers * 32, arch.reg_alloc_unit)
    # The hardware checks a block's registers as if its warps filled every partition.
    regs_checked = regs_per_warp * _round_up(warps, arch.sub_partitions)
    if regs_per_warp == 0:
        by_regs = arch.max_blocks_per_sm
    elif regs_checked > arch.max_regs_per_block or registers > arch.max_regs_per_thread:
        by_regs = 0
        if regs_checked > arch.max_regs_per_block:
            reasons.append(f"{regs_checked} registers per block > {arch.max_regs_per_block}")
    else:
        warps_per_partition = (arch.regs_per_sm // arch.sub_partitions) // regs_per_warp
        by_regs = warps_per_partition * arch.sub_partitions // warps

    smem_alloc = _round_up(smem_bytes + arch.smem_reserved_per_block, arch.smem_alloc_unit)
    by_smem = 0 if smem_bytes > arch.smem_per_block_optin else arch.smem_per_sm // smem_alloc
    limits = {"registers": by_regs, "shared_memory": by_smem,
              "warps": arch.max_warps_per_sm // warps, "blocks": arch.max_blocks_per_sm}
    blocks = 0 if reasons else min(limits.values())
    return {
        "blocks_per_sm": blocks,
        "warps_per_sm": blocks * warps,
        "occupancy": blocks * warps / arch.max_warps_per_sm,
        "limiter": [k for k, v in limits.items() if v == blocks] if not reasons else [],
        "limits": limits,
        "fits": not reasons,
        "reason": "; ".join(reasons) or None,
    }
