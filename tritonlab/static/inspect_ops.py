"""Inspecting ops: :func:`run` compiles every target of some ops for some architectures and
dtypes and reports each kernel and config (what ``tritonlab inspect`` prints);
:func:`static_facts` gives the sweep the same numbers for the kernel(s) behind one Triton
point."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from tritonlab.errors import UsageError
from tritonlab.ops import registry
from tritonlab.ops.contract import OpSpec, dtype_name
from tritonlab.static.arch import ArchLimits, parse_arch
from tritonlab.static.cache import Job, cache_dir, make_job
from tritonlab.static.rows import Report, dump_row, job_row
from tritonlab.static.targets import (
    OPTION_KEYS,
    applies,
    format_config,
    inspectable,
    op_targets,
    target_configs,
    target_params,
)
from tritonlab.static.workers import Progress, compile_jobs


def run(ops: Sequence[OpSpec], archs: Sequence[ArchLimits], dtypes: Sequence[torch.dtype],
        configs: Sequence[Mapping] | None = None, *, first: int | None = None,
        dump: Path | None = None, rebuild: bool = False,
        progress: Progress | None = None) -> Report:
    """Compile every target of ``ops`` for each arch and dtype, with each config of its list
    (``first``: only the first N) or with each of ``configs`` (merged onto the target's
    default config; a target that lacks one of a config's keys is skipped for it).

    Ops that cannot be inspected are listed in ``skipped``. A config that does not compile
    gives a row with ``status: "error"`` and the compiler's message. ``dump`` copies each
    kernel's compiler outputs there.
    """
    start = time.perf_counter()
    root = cache_dir()
    jobs: list[Job] = []
    skipped: list[dict] = []
    digests: dict = {}
    for op in ops:
        why = inspectable(op)
        if why:
            skipped.append({"op": op.name, "reason": why})
            continue
        for dtype in dtypes:
            if dtype not in op.dtypes:
                skipped.append({"op": op.name, "dtype": dtype_name(dtype),
                                "reason": f"{op.name} does not support {dtype_name(dtype)}"})
                continue
            for target in op_targets(op, dtype):
                for arch in archs:
                    listed = target_configs(target, arch)
                    if configs:
                        chosen = [({**listed[0], **c} if listed else dict(c), None)
                                  for c in configs if applies(c, target)]
                    else:
                        chosen = [(c, i) for i, c in enumerate(listed)][:first]
                    for config, index in chosen:
                        jobs.append(make_job(op.name, target, arch, dtype, config, index,
                                             digests))
    failures, compiled, cached = compile_jobs(jobs, root, progress, rebuild)
    rows = [job_row(j, root, failures) for j in jobs]
    if dump is not None:
        for r in rows:
            if r["status"] == "ok":
                dump_row(r, Path(dump))
    return Report(rows, skipped, compiled, cached, time.perf_counter() - start,
                  [a.name for a in archs], [dtype_name(d) for d in dtypes])


_FACT_KEYS = ("kernel", "registers", "spill_stores", "spill_loads", "local_bytes",
              "smem_bytes", "threads")


def _facts(row: Mapping) -> dict:
    if row["status"] != "ok":
        return {"target": row["target"], "error": row["error"]}
    occ = row["occupancy"]
    return {"target": row["target"], **{k: row[k] for k in _FACT_KEYS},
            "blocks_per_sm": occ["blocks_per_sm"], "occupancy": occ["occupancy"],
            "occupancy_limiter": occ["limiter"],
            "tensor_core": row["instructions"]["tensor_core"],
            "tensor_core_total": row["instructions"]["tensor_core_total"], "error": None}


def static_facts(op: OpSpec | str, impl: str | None, config: Mapping | None,
                 dtype: torch.dtype, arch: str | tuple[int, int],
                 values: Mapping | None = None) -> dict:
    """Static facts of the kernel(s) behind one Triton point, for the sweep's results rows.

    ``op``: the OpSpec or its name; ``impl``: the Triton impl's name (targets declared for
    other impls are left out); ``config``: the launch config the impl reported (flat dict as
    ``Impl.config`` returns it, keys no kernel takes, such as ``path``, are ignored; the
    targets are those taking its keys, preferring those whose configs have exactly these
    keys; None: every target with its default for ``arch``); ``arch``:
    ``"sm_90a"`` or a capability tuple such as ``torch.cuda.get_device_capability()``;
    ``values``: launch arguments that override the targets' typical ones (e.g. the point's
    M, N, K). Uses the compile cache.

    Returns ``{"arch", "config", "kernels": [facts per matching target], **facts of the
    first}`` where facts are kernel, registers, spill_stores, spill_loads (bytes),
    local_bytes, smem_bytes, threads, blocks_per_sm, occupancy, occupancy_limiter,
    tensor_core (opcode -> static count), tensor_core_total and error (None, or why that
    kernel could not be compiled). Never raises for a kernel that does not compile; returns
    ``{"error": ...}`` when no target of the op matches.
    """
    spec = registry.discover()[op] if isinstance(op, str) else op
    try:
        limits = parse_arch(arch)
    except UsageError as exc:
        return {"arch": str(arch), "error": str(exc), "kernels": []}
    why = inspectable(spec)
    if why:
        return {"arch": limits.name, "error": why, "kernels": []}
    if impl is not None and impl not in [i.name for i in spec.triton_impls]:
        return {"arch": limits.name, "kernels": [],
                "error": f"{impl!r} is not a Triton impl of {spec.name}"}
    candidates = [t for t in op_targets(spec, dtype)
                  if t.impls is None or impl is None or impl in t.impls]
    # Keys that describe the launch rather than configure a kernel ("path", "split_k") are
    # dropped; a target is one that takes every remaining key, and when several do, those
    # whose own configs have exactly these keys (a tiled GEMM's GROUP_M tells it apart from
    # a split-K kernel with the same tile names).
    taken = set(OPTION_KEYS).union(*(target_params(t) for t in candidates))
    cfg = {k: v for k, v in (config or {}).items() if k in taken}
    targets = [t for t in candidates if applies(cfg, t)]
    tunables = {k for k in cfg if k not in OPTION_KEYS}
    exact = [t for t in targets if any({k for k in c if k not in OPTION_KEYS} == tunables
                                       for c in target_configs(t, limits))]
    targets = exact if tunables and exact else targets
    if not targets:
        return {"arch": limits.name, "kernels": [],
                "error": f"no compile target of {spec.name} (impl {impl}) takes config "
                         f"{format_config(config or {})}"}
    jobs, digests = [], {}
    for t in targets:
        if values:
            names = set(target_params(t))
            t = dataclasses.replace(t, values={**t.values, **{k: v for k, v in values.items()
                                                              if k in names}})
        listed = target_configs(t, limits)
        merged = {**(listed[0] if listed else {}), **cfg}
        jobs.append(make_job(spec.name, t, limits, dtype, merged, None, digests))
    root = cache_dir()
    failures, _, _ = compile_jobs(jobs, root, None, False)
    facts = [_facts(job_row(j, root, failures)) for j in jobs]
    return {"arch": limits.name, "config": jobs[0].config, **facts[0], "kernels": facts}
