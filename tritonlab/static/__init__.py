"""Static inspection: what each kernel compiles to on a given GPU architecture, without a GPU.

Triton compiles for any NVIDIA target on any machine (``triton.compile`` with a
``GPUTarget``), and its wheel ships ptxas and cuobjdump. For every kernel an op declares
(:class:`~tritonlab.kernels.tuning.CompileTarget`, returned by ``OpSpec.compile_targets``)
and every launch config it would use on an architecture (its autotune list, or one given),
this package compiles the kernel and reports what a kernel engineer reads before timing it:

* registers per thread (cuobjdump ``--dump-resource-usage`` on the cubin), spill stores and
  loads and the stack frame (the ``ptxas -v`` log of the same compile), local memory;
* shared memory: the cubin's static part plus the dynamic part Triton requests at launch;
* threads per block (the PTX ``.reqntid``) and the theoretical occupancy on that
  architecture (:mod:`~tritonlab.static.arch`);
* an instruction mix from the SASS (:mod:`~tritonlab.static.sass`).

Its parts: :mod:`~tritonlab.static.arch` (architectures, limits, occupancy),
:mod:`~tritonlab.static.targets` (an op's targets, their configs, specialising a launch),
:mod:`~tritonlab.static.cache` (cache keys and entries), :mod:`~tritonlab.static.workers`
(compiling what the cache lacks, in worker processes started by
:mod:`~tritonlab.static.worker_init`, each compile done by :mod:`~tritonlab.static.compile`),
:mod:`~tritonlab.static.rows` (report rows and tables) and
:mod:`~tritonlab.static.inspect_ops` (:func:`run`, and :func:`static_facts` for the sweep).

Importing the package selects the lab's backend, so that its modules may import Triton at
their top (Triton must see the interpreter choice first). The package itself exports nothing:
a compile worker imports it before :func:`~tritonlab.static.worker_init.init_worker` has
switched the interpreter off, and loading the modules that import the lab's kernels here would
decorate them before that. Callers import :mod:`tritonlab.static.api`, which gathers the
public names.
"""

from tritonlab import backend as _backend

_backend.current()
