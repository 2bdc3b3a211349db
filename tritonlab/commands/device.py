"""``tritonlab device``: the present device and its ceilings."""

from __future__ import annotations

import click

from tritonlab import backend
from tritonlab.commands import json_option
from tritonlab.errors import UsageError
from tritonlab.hw import devices
from tritonlab.output import emit_json, info


@click.command("device")
@click.option("--measure", is_flag=True, help="Measure the ceilings: a large device-to-device "
              "copy and a large matmul per dtype (torch CPU copy and matmul without a GPU); "
              "cached so later sweeps use them.")
@click.option("--spec", "spec_name", metavar="NAME", help="Show a device table entry by name "
              "(e.g. 'H100 SXM5' or a driver name such as 'NVIDIA A100-SXM4-40GB').")
@json_option
def device_cmd(measure, spec_name, as_json):
    """Show the present device and its ceilings (datasheet and measured)."""
    if spec_name is not None:
        if measure:
            raise UsageError("--spec shows a table entry and --measure the present device; "
                             "give one of them")
        spec = devices.spec_by_name(spec_name)
        if as_json:
            emit_json(spec.to_dict())
        else:
            click.echo("\n".join(devices.spec_lines(spec)))
        return
    be = backend.current()
    desc = devices.describe(be)
    measured = None
    if measure:
        measured = devices.measure_ceilings(be, progress=lambda m: info(f"measuring: {m}"))
        info(f"measured ceilings cached in {devices.store_ceilings(desc, measured)}")
    peaks = devices.peaks_for(desc, measured=measured)
    if desc["kind"] == "cuda" and desc["spec_name"] is None:
        info(f"warning: {desc['name']!r} is not in the device table; its rooflines use "
             f"measured ceilings only{'' if measured else ' (run with --measure)'}")
    if as_json:
        emit_json({"device": desc, "peaks": peaks.to_dict() if peaks else None})
    else:
        click.echo("\n".join(devices.device_lines(desc, peaks)))
