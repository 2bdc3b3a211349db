"""The public names of static inspection, gathered from the modules that define them (see
:mod:`tritonlab.static`)."""

from tritonlab.static.arch import ARCHS, ArchLimits, default_archs, occupancy, parse_arch
from tritonlab.static.cache import cache_dir, source_digest
from tritonlab.static.inspect_ops import run, static_facts
from tritonlab.static.rows import TABLE_HEADERS, Report, dump_row, table_rows
from tritonlab.static.targets import (
    check_config_keys,
    config_slug,
    format_config,
    inspectable,
    op_targets,
    parse_config,
    short_config,
    specialise,
    target_configs,
    target_params,
)
from tritonlab.static.workers import compile_on_ray

__all__ = [
    "ARCHS",
    "ArchLimits",
    "Report",
    "TABLE_HEADERS",
    "cache_dir",
    "check_config_keys",
    "compile_on_ray",
    "config_slug",
    "default_archs",
    "dump_row",
    "format_config",
    "inspectable",
    "occupancy",
    "op_targets",
    "parse_arch",
    "parse_config",
    "run",
    "short_config",
    "source_digest",
    "specialise",
    "static_facts",
    "table_rows",
    "target_configs",
    "target_params",
]
