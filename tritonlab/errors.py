"""Errors the CLI turns into exit codes (docs/design.md, "The command line")."""


class UsageError(ValueError):
    """Bad usage or bad input: unknown op, malformed shape, unsupported dtype (exit 2).

    The message names the valid choices, so the user can fix the command without docs.
    """
