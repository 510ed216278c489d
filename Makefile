# wmkernels: every set-up step lives here, so a fresh machine needs only `make demo` or `make test`.
#
#   make demo        virtual environment + torch 2.13.0 (CPU) + the package, then the main job
#   make test        the same set-up, the whole test suite, then the CUDA build check
#   make cuda-check  build against torch 2.14.1+cu130 with WMK_CUDA=ON (sm_90a) and verify the kernels
#   make install-check  `pip install .` (isolated build, no flags) into a clean venv holding only torch
#   make bench       micro-benchmarks (pytest-benchmark)

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
CUDA_VENV ?= .venv-cuda
TORCH_CPU ?= 2.13.0
TORCH_CUDA ?= 2.14.1
CUDA_CHECK_ARCHS ?= 90a
PYTEST_ARGS ?=
BUILD_DEPS := 'scikit-build-core>=0.10' 'pybind11>=2.12' 'cmake>=3.26' ninja

PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
CUDA_PY := $(CUDA_VENV)/bin/python
CUDA_PIP := $(CUDA_PY) -m pip --disable-pip-version-check -q
# Builds run one at a time on this machine (2 cores); concurrent `make` calls wait for each other.
LOCK := flock /tmp/wmkernels-build.lock

.PHONY: demo test test-cpu cuda-check install install-check bench clean

# --- environments ---------------------------------------------------------------------------
$(VENV)/.torch-$(TORCH_CPU):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install "torch==$(TORCH_CPU)" $(BUILD_DEPS)
	touch $@

$(CUDA_VENV)/.torch-$(TORCH_CUDA):
	$(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_PIP) install --upgrade pip
	$(CUDA_PIP) install "torch==$(TORCH_CUDA)" numpy nvidia-cuda-cuobjdump $(BUILD_DEPS)
	touch $@

# The package and its test/bench extras, built against the venv's torch (incremental: build/<tag>).
install: $(VENV)/.torch-$(TORCH_CPU)
	$(LOCK) $(PIP) install --no-build-isolation -Cbuild-dir=build/cpu ".[test,bench,triton]" "torch==$(TORCH_CPU)"

# --- the two README commands --------------------------------------------------------------------
demo: install
	$(PY) -m wmkernels
	$(VENV)/bin/wmk-bench --preset tiny --out out/demo

test: test-cpu cuda-check

test-cpu: install
	$(PY) -m pytest $(PYTEST_ARGS)

# --- CUDA: compile and link against a CUDA torch, verify without a GPU -------------------------------
cuda-check: $(CUDA_VENV)/.torch-$(TORCH_CUDA)
	TORCH_CUDA_ARCH_LIST=9.0a WMK_CUDA=ON WMK_CUDA_ARCHS="$(CUDA_CHECK_ARCHS)" \
	  $(LOCK) $(CUDA_PIP) install --no-build-isolation --no-deps -Cbuild-dir=build/cuda-check .
	cd /tmp && $(abspath $(CUDA_PY)) $(abspath tools/check_cuda_build.py) --archs "$(subst ;,$(comma),$(CUDA_CHECK_ARCHS))"

comma := ,

# --- a user's plain `pip install .` --------------------------------------------------------------
install-check:
	rm -rf build/install-check-venv
	$(PYTHON) -m venv build/install-check-venv
	build/install-check-venv/bin/pip install -q "torch==$(TORCH_CPU)"
	$(LOCK) build/install-check-venv/bin/pip install -q .
	cd /tmp && $(abspath build/install-check-venv/bin/python) -m wmkernels

bench: install
	$(PY) -m pytest benchmarks --benchmark-only

clean:
	rm -rf build dist $(VENV) $(CUDA_VENV)
