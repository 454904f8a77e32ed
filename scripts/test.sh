#!/usr/bin/env bash
# Set up, then run the whole test suite (unit + slow integration tests). Exit 0 only when tests ran and passed.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python -m pytest tests -ra --durations=15 "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treated as a failure." >&2
  exit 1
fi
exit "$rc"
