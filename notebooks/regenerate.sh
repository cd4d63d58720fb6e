#!/usr/bin/env bash
# Re-execute every notebook in place (full size, not E2LLM_FAST), so the committed copies show
# their plots. Usage: notebooks/regenerate.sh [notebook ...]
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TQDM_DISABLE=1 E2LLM_FAST=${E2LLM_FAST:-0}
files=("$@"); [ ${#files[@]} -gt 0 ] || files=(notebooks/[0-9][0-9]_*.ipynb)
for nb in "${files[@]}"; do
  echo "executing $nb"
  .venv/bin/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=900 "$nb"
done
