"""The report: one row per compiled kernel and config, derived from its cache entry's
compiler outputs each time (so a cached entry never holds stale analysis), the
:class:`Report` of a run, its table, and copies of the compiler outputs (``--dump``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import triton

from tritonlab.ops.contract import dtype_name
from tritonlab.static import sass
from tritonlab.static.arch import ArchLimits, occupancy
from tritonlab.static.cache import Job, cache_dir, entry_dir
from tritonlab.static.compile import ARTIFACTS, read_artifact
from tritonlab.static.targets import config_slug, short_config


def analyse(entry: Path, arch: ArchLimits) -> dict:
    """The report of one compiled kernel, from the cache entry's compiler outputs."""
    meta = json.loads((entry / "meta.json").read_text())
    if meta.get("error"):
        return {"status": "error", "error": meta["error"]}
    name = meta["name"]

    def text(artifact):
        return read_artifact(entry, artifact).decode()

    usage = sass.parse_resource_usage(text("resource_usage.txt"))
    if name not in usage:
        raise RuntimeError(f"cuobjdump reports no function {name!r} in {entry}")
    res = usage[name]
    ptxas = sass.parse_ptxas_log(text("ptxas.log")) or {}
    listing = text("kernel.sass")
    threads = sass.ptx_threads(text("kernel.ptx")) or meta["num_warps"] * 32
    smem_static, smem_dynamic = res.get("SHARED", 0), meta["shared"]
    opcodes = sass.sass_opcodes(listing)
    return {
        "status": "ok", "error": None,
        "kernel": name,
        "cubin_arch": sass.sass_arch(listing),
        "registers": res["REG"],
        "spill_stores": ptxas.get("spill_stores"),
        "spill_loads": ptxas.get("spill_loads"),
        "stack_bytes": res.get("STACK", 0),
        "local_bytes": res.get("LOCAL", 0),
        "smem_static": smem_static,
        "smem_dynamic": smem_dynamic,
        "smem_bytes": smem_static + smem_dynamic,
        "threads": threads,
        "num_warps": meta["num_warps"],
        "num_stages": meta["num_stages"],
        "occupancy": occupancy(arch, res["REG"], threads, smem_static + smem_dynamic),
        "instructions": sass.instruction_mix(opcodes),
        "opcodes": dict(sorted(opcodes.items())),
        "compile_s": meta.get("compile_s"),
        "triton_version": meta.get("triton_version"),
    }


def job_row(job: Job, root: Path, failures: Mapping[str, str]) -> dict:
    """The report row of ``job`` once :func:`tritonlab.static.workers.compile_jobs` ran;
    ``failures`` is what it returned."""
    row = {"op": job.op, "target": job.target.name, "kernel": job.target.kernel_name,
           "arch": job.arch.name, "dtype": dtype_name(job.dtype), "config": job.config,
           "config_index": job.config_index, "key": job.key or None}
    if job.spec is None:
        return {**row, "status": "error", "error": job.error}
    if job.key in failures:
        return {**row, "status": "error", "error": failures[job.key]}
    entry = entry_dir(root, job.key)
    return {**row, **analyse(entry, job.arch), "entry": str(entry)}


def dump_row(row: Mapping, out_dir: Path) -> list[Path]:
    """Copy one kernel's TTIR, TTGIR, LLIR, PTX, SASS (and cubin, ptxas log, resource usage)
    to ``out_dir/<op>/<target>/<arch>/<dtype>/<config>/``; returns the files written."""
    src = Path(row["entry"])
    dest = (out_dir / row["op"] / row["target"] / row["arch"] / row["dtype"]
            / config_slug(row["config"]))
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name in ARTIFACTS:
        (dest / name).write_bytes(read_artifact(src, name))
        written.append(dest / name)
    return written


@dataclass
class Report:
    """What :func:`tritonlab.static.inspect_ops.run` found: one row per (op, target, arch,
    dtype, config)."""

    rows: list[dict]
    skipped: list[dict]
    compiled: int  # distinct kernels/configs compiled by this call
    cached: int  # distinct kernels/configs found in the cache
    seconds: float
    archs: list[str]
    dtypes: list[str]

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["status"] != "ok"]

    def to_dict(self) -> dict:
        return {"triton_version": triton.__version__, "archs": self.archs,
                "dtypes": self.dtypes, "passed": not self.failed,
                "compiled": self.compiled, "cached": self.cached,
                "seconds": round(self.seconds, 3), "cache_dir": str(cache_dir()),
                "skipped": self.skipped, "kernels": self.rows}


def _counts(d: Mapping, sep: str = ":") -> str:
    return " ".join(f"{k}{sep}{v}" for k, v in d.items()) or "-"


TABLE_HEADERS = ["op/target", "arch", "dtype", "config", "regs", "spill st/ld", "smem KB",
                 "thr", "blk/SM", "occ", "limiter", "tensor core", "LDG bits", "STG bits",
                 "async", "shared", "bar"]


def table_rows(report: Report) -> list[list]:
    """One human-readable row per kernel and config (errors show the message's last line)."""
    rows = []
    for r in report.rows:
        head = [f"{r['op']}/{r['target']}", r["arch"], r["dtype"], short_config(r["config"])]
        if r["status"] != "ok":
            last = [line for line in r["error"].splitlines() if line.strip()][-1:]
            rows.append(head + ["ERROR: " + (last[0][:100] if last else "")]
                        + [""] * (len(TABLE_HEADERS) - len(head) - 1))
            continue
        occ, mix = r["occupancy"], r["instructions"]
        rows.append(head + [
            r["registers"], f"{r['spill_stores']}/{r['spill_loads']}",
            f"{r['smem_bytes'] / 1024:.1f}", r["threads"],
            occ["blocks_per_sm"] if occ["fits"] else "does not fit",
            f"{occ['occupancy']:.1%}", ",".join(occ["limiter"]) or occ["reason"],
            _counts(mix["tensor_core"], " x") if mix["tensor_core"] else "none",
            _counts(mix["global_load_bits"]), _counts(mix["global_store_bits"]),
            _counts(mix["async_copy"]),
            _counts(mix["shared"]), _counts(mix["barrier"])])
    return rows
