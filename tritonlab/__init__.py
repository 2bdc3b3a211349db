"""tritonlab: a Triton kernel performance lab.

Kernels live in :mod:`tritonlab.kernels` (importing it selects the backend first), the ops
that describe them in :mod:`tritonlab.ops`, the instruments in the rooms above them
(:mod:`tritonlab.measure`, :mod:`tritonlab.runs`, :mod:`tritonlab.hw`, ...), and the command
line in :mod:`tritonlab.cli` (docs/design.md, "Layout").
"""

__version__ = "0.1.0"
