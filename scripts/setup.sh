#!/usr/bin/env bash
# Create .venv (Python 3.10+) and install hf_ifbeta with its test dependencies. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# torch first: on the reference machine these two versions install from local disk; elsewhere the package
# install below picks a torch in setup.py's range. The filter may print nothing (grep then exits 1): `|| true`
# guards grep only, so with pipefail a failed package install stops the script.
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" 2>&1 | { grep -v "^WARNING: Location" || true; } \
  || echo "torch 2.14.1 / torchvision 0.29.1 not installable here: using the torch that setup.py's range resolves to." >&2
.venv/bin/python -m pip install -q -e ".[testing]" 2>&1 | { grep -v "^WARNING: Location" || true; }
.venv/bin/python -c "import hf_ifbeta, torch, transformers, timm; print('hf_ifbeta', hf_ifbeta.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__, '| timm', timm.__version__)"
