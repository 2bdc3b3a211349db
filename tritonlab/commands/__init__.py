"""The subcommands of :mod:`tritonlab.cli`, one module per command.

Each module imports the rooms it calls at its top; :class:`tritonlab.cli.LazyGroup` imports a
module only once its command is resolved, after ``--backend`` was applied. Only options that
several commands share live here.
"""

from __future__ import annotations

import click

DTYPE_CHOICES = ("float16", "bfloat16", "float32")

json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print one JSON document on stdout.")
