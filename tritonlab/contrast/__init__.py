"""Training vs inference on one model, ``tritonlab contrast``: which pushes the hardware
harder, and on which resource; with ``--model layer``, the decoder layer's three regimes
(train, prefill, decode) and which demands most of each resource.

The modules: :mod:`~tritonlab.contrast.plan` (options and defaults),
:mod:`~tritonlab.contrast.phases` (running the phases, NVTX ranges),
:mod:`~tritonlab.contrast.rows` (contrast.json's phase rows),
:mod:`~tritonlab.contrast.decide` (the verdict), :mod:`~tritonlab.contrast.run` (the run
and its directory, the overview in its docstring) and :mod:`~tritonlab.contrast.summary`
(the terminal summary); for the layer contrast :mod:`~tritonlab.contrast.layer` (plan,
steps, byte formulas, row metrics) and :mod:`~tritonlab.contrast.layer_verdict`.
This package exposes what the CLI, the demo and the tests use.
"""

from tritonlab.contrast.decide import impl_comparison, verdict
from tritonlab.contrast.layer import REGIMES, LayerPlan, compulsory_bytes, make_layer_plan
from tritonlab.contrast.layer_verdict import layer_verdict
from tritonlab.contrast.phases import NVTX_PREFIX, PhaseRun, lab_workloads, nvtx_ranges
from tritonlab.contrast.plan import (
    DEFAULTS,
    DTYPE_CHOICES,
    IMPLS,
    MIN_PHASE_S,
    MODES,
    Plan,
    make_plan,
)
from tritonlab.contrast.rows import PhaseRow, phase_row
from tritonlab.contrast.run import run_contrast
from tritonlab.contrast.summary import summary_text

__all__ = [
    "DEFAULTS", "DTYPE_CHOICES", "IMPLS", "MIN_PHASE_S", "MODES", "NVTX_PREFIX", "REGIMES", "LayerPlan",
    "PhaseRow", "PhaseRun", "Plan", "compulsory_bytes", "impl_comparison", "lab_workloads",
    "layer_verdict", "make_layer_plan", "make_plan", "nvtx_ranges", "phase_row",
    "run_contrast", "summary_text", "verdict",
]
