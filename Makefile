# anime-gan-tf2: every target here works; `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL ?= 2
# Set TF_PACKAGE=tensorflow (GPU-capable build) instead of the lighter CPU-only default if you like.
TF_PACKAGE ?= tensorflow-cpu

.PHONY: help install test test-slow test-all test-kernels train data bench profile golden clean app browser

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  make %-10s %s\n", $$1, $$2}'

# The development venv holds every optional runtime, so the tests of each run (users pick extras).
DEV_EXTRAS ?= test,onnx,openvino,tflite,app,faces
$(VENV)/.installed: setup.py setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(DEV_EXTRAS)]'
	touch $@

install: $(VENV)/.installed  ## create .venv and install the package with its test extras and every runtime extra

test: $(VENV)/.installed browser  ## run the default test suite (slow tests excluded)
	$(PY) -m pytest -m "not slow" -q --durations=15 $(PYTEST_ARGS)

# tests/web/test_app.py drives Debian's chromium headless; installed here when run as root (CI), else the
# test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's chromium for the page test"; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	else echo "note: no chromium; tests/web/test_app.py's browser test will skip (apt-get install chromium)"; fi; }

app: $(VENV)/.installed  ## a local page to try a model: http://127.0.0.1:7860/ (ARGS="--model=PATH --port=N")
	$(PY) -m anime_gan.app $(ARGS)

test-slow: $(VENV)/.installed browser  ## run only the slow end-to-end tests
	$(PY) -m pytest -m slow -q $(PYTEST_ARGS)

test-all: $(VENV)/.installed  ## run every test, slow ones included
	$(PY) -m pytest -q $(PYTEST_ARGS)

# float32 sums depend on the kernels: the exactness tests (official graph, golden vectors) again under
# other ones (`make test` runs the default kernels). One configuration per word; join variables with
# commas. tools/golden_spread.py measures the spread these and other configurations cause.
KERNEL_CONFIGS ?= TF_ENABLE_ONEDNN_OPTS=0 ONEDNN_MAX_CPU_ISA=AVX2
EXACTNESS_TESTS ?= tests/nets/test_generator.py -k "not mixed_precision and not bfloat16"
test-kernels: $(VENV)/.installed  ## the exactness tests again with oneDNN off, then oneDNN capped at AVX2 (CI)
	@set -e; for cfg in $(KERNEL_CONFIGS); do \
	  echo "== exactness tests under $$cfg"; \
	  env -u TF_ENABLE_ONEDNN_OPTS -u ONEDNN_MAX_CPU_ISA -u TF_NUM_INTRAOP_THREADS $${cfg//,/ } \
	    $(PY) -m pytest -q $(EXACTNESS_TESTS) $(PYTEST_ARGS); \
	done

golden: $(VENV)/.installed  ## maintainers: regenerate anime_gan/golden/ (needs the maintainers' reference graph, not in a user's clone)
	$(PY) tools/make_golden.py

clean:  ## remove the virtualenv and caches (keeps dataset/ and checkpoints/)
	rm -rf $(VENV) .pytest_cache build *.egg-info

data: $(VENV)/.installed  ## build the training set under dataset/ (offline demo by default; ARGS="--source=official", "--source=official-v2 --style=Hayao", "--source=PATH_OR_URL")
	$(PY) -m data_prep $(ARGS)

train: $(VENV)/.installed  ## the main job: build the demo set if missing, train demo.cfg through both phases
	$(PY) -m anime_gan.train --flagfile=anime_gan/configs/demo.cfg $(ARGS)

bench: $(VENV)/.installed  ## benchmarks: prints markdown tables, writes bench/results.json (ARGS="--quick" for a short run)
	$(PY) -m bench $(ARGS)

profile: $(VENV)/.installed  ## TensorBoard profile of the generator (official graph vs ours), op-type table (ARGS="--size=720x1280")
	$(PY) -m bench.profile_generator $(ARGS)

# The PyTorch port's .pt weights (anime_gan.weights.torch_port) are read without torch; their tests compare
# against a real PyTorch model, so torch (CPU) is installed into .venv for them only, if missing.
TORCH_PACKAGE ?= torch==2.13.*
.PHONY: test-torch
test-torch: $(VENV)/.installed  ## the PyTorch-port weight tests (installs torch into .venv if missing)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet '$(TORCH_PACKAGE)'
	$(PY) -m pytest -q -m "not slow" tests/weights/test_torch_weights.py $(PYTEST_ARGS)
