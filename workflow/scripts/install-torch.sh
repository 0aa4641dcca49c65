#!/usr/bin/env bash
# Install a CPU build of torch where no NVIDIA GPU is present, before the package's own requirement
# (a range) would pull a multi-GB CUDA build. Usage: install-torch.sh PYTHON
set -euo pipefail
py=${1:?usage: install-torch.sh PYTHON}
if "$py" -c "import torch" 2>/dev/null; then
  exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  "$py" -m pip install -q "torch>=2.2,<3"
elif ! "$py" -m pip install -q "torch==2.13.0+cpu" 2>/dev/null && ! "$py" -m pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu 2>/dev/null; then
  # the machines this project runs on carry a local CPU wheel of torch 2.13.0
  "$py" -m pip install -q "torch==2.13.0"
fi
