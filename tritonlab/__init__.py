"""tritonlab: a Triton kernel performance lab.

Kernels live in :mod:`tritonlab.kernels` (importing it selects the backend first), the
instruments in :mod:`tritonlab.harness`, and the command line in :mod:`tritonlab.cli`.
"""

__version__ = "0.1.0"
