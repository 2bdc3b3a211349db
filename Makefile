# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv when it is missing and install the project into it.

PYTHON     ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.tritonlab-installed
# A machine with no NVIDIA GPU gets this torch (a CPU wheel where one is on disk); a GPU
# machine keeps the CUDA torch it has, or gets the default (CUDA) build.
TORCH_CPU  ?= torch==2.13.0
TORCH_GPU  ?= torch
HAS_GPU    := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1 || echo 0)
# The GPU check runs with the machine's own Python (which holds CUDA torch and triton).
GPU_PY     ?= python3
PYTEST_ARGS ?=
# The CPU lane runs in one pytest worker per core (a test file stays on one worker, so its
# module fixtures, the compile cache and the local Ray, are built once).
TEST_WORKERS ?= 2

.PHONY: setup demo test lint gpu-check clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(if $(filter 1,$(HAS_GPU)),--system-site-packages,) $(VENV)
	@if [ "$(HAS_GPU)" = "1" ]; then \
	  $(PY) -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null \
	    || $(PY) -m pip install -q "$(TORCH_GPU)"; \
	else \
	  $(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_CPU)"; \
	fi
	$(PY) -m pip install -q -e '.[dev,ray]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tritonlab demo --out reports/demo

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check tritonlab tests

# One command for a lent H100/H200 (fits in 8 minutes): GPU tests, the CPU lane's GEMM tests
# compiled for the GPU, a quick sweep of every op, a short contrast and a report, all under
# reports/gpu-<date>/.
gpu-check:
	PYTHONPATH=$(CURDIR) $(GPU_PY) -m tritonlab.cli gpu-check --repo $(CURDIR) --out reports/gpu-$$(date +%Y%m%d-%H%M%S)

clean:
	rm -rf $(VENV) build *.egg-info
