"""``tritonlab inspect``: static facts of each op's kernels, compiled without a GPU."""

from __future__ import annotations

import contextlib
import sys

import click
import torch

from tritonlab.commands import DTYPE_CHOICES, BoundedInt, interruptible, json_option
from tritonlab.errors import UsageError
from tritonlab.ops import registry
from tritonlab.output import emit_json, info, output_dir, table
from tritonlab.runs import cluster
from tritonlab.runs.store import claim_dir
from tritonlab.static import api as insp


@click.command("inspect")
@click.argument("ops", nargs=-1)
@click.option("--arch", "archs", multiple=True, help="Target architecture (repeatable): "
              "sm_80, sm_86, sm_89, sm_90a, sm_100a, sm_120a (default: this GPU's, else sm_90a).")
@click.option("--dtype", "dtypes", multiple=True, type=click.Choice(DTYPE_CHOICES),
              help="Element type (repeatable; default float16).")
@click.option("--config", "configs", multiple=True, metavar="KEY=VALUE,...",
              help="Compile this config instead of the autotune list, e.g. BLOCK_M=128,"
                   "BLOCK_N=128,BLOCK_K=64,num_warps=8,num_stages=3 (repeatable; keys left out "
                   "come from the first config of the list).")
@click.option("--first", type=BoundedInt(1, 10**6), default=None,
              help="Only the first N configs of each autotune list.")
@click.option("--dump", type=click.Path(), default=None,
              help="Write each kernel's TTIR, TTGIR, LLIR, PTX, SASS and cubin under DIR.")
@click.option("--rebuild", is_flag=True, help="Compile again instead of using the cache.")
@click.option("--ray", "ray_address", is_flag=False, flag_value=cluster.LOCAL,
              default=None, metavar="[ADDRESS]",
              help="Compile on a Ray cluster's CPUs: auto, HOST:PORT or "
              "ray://HOST:PORT; no address: a local cluster on 127.0.0.1. Needs the extra: "
              "pip install 'tritonlab[ray]' (docs/cluster.md).")
@json_option
@interruptible
def inspect_cmd(ops, archs, dtypes, configs, first, dump, rebuild, ray_address, as_json):
    """Compile each op's kernels for a GPU architecture (no GPU needed) and report registers,
    spills, shared memory, occupancy and the SASS instruction mix. Exit 1 if a config does
    not compile."""
    specs = registry.resolve_ops(ops)
    if ops:
        for op in specs:
            why = insp.inspectable(op)
            if why:
                ok = [o.name for o in registry.discover().values() if not insp.inspectable(o)]
                raise UsageError(f"{why}; ops to inspect: {', '.join(ok) or 'none'}")
    arch_list = [insp.parse_arch(a) for a in archs] or insp.default_archs()
    dtype_list = [registry.parse_dtype(d) for d in dtypes] or [torch.float16]
    config_list = [insp.parse_config(c) for c in configs]
    targets = [t for op in specs for d in dtype_list if d in op.dtypes
               for t in insp.op_targets(op, d)]
    for c in config_list:
        insp.check_config_keys(c, targets)
    dump_dir = output_dir(dump, "--dump", "the dump directory") if dump else None
    address = None if ray_address == cluster.LOCAL else ray_address
    if ray_address is not None:
        cluster.check_address(address)
        ray = cluster.import_ray()
    with contextlib.ExitStack() as stack:
        # The dump directory is claimed before anything compiles: it must be new, empty or a
        # previous dump, which is overwritten.
        if dump_dir:
            stack.enter_context(claim_dir(dump_dir, "inspect"))
        if ray_address is not None:
            stack.enter_context(cluster.session(address))
            stack.enter_context(insp.compile_on_ray(ray))
        report = insp.run(specs, arch_list, dtype_list, config_list or None, first=first,
                          dump=dump_dir, rebuild=rebuild,
                          progress=lambda done, total, label: info(f"compiled {done}/{total} "
                                                                   f"{label}"))
    for s in report.skipped:
        info(f"skipped: {s['reason']}")
    for r in report.failed:
        info(f"error: {r['op']}/{r['target']} {r['arch']} {insp.format_config(r['config'])}:\n"
             f"{r['error']}")
    summary = (f"{len(report.rows)} kernels/configs: {report.compiled} compiled now, "
               f"{report.cached} from the cache ({insp.cache_dir()}), {len(report.failed)} "
               f"failed, {report.seconds:.1f} s")
    if as_json:
        info(summary)
        emit_json(report.to_dict())
    else:
        click.echo(f"static inspection with Triton {report.to_dict()['triton_version']} "
                   f"(compiled, never run; instruction counts are static)")
        click.echo(table(insp.table_rows(report), insp.TABLE_HEADERS))
        click.echo(summary)
        if dump:
            click.echo(f"compiler outputs written under {dump}")
    if report.failed:
        sys.exit(1)
