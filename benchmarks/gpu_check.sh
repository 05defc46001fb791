#!/usr/bin/env bash
# The GPU check of issue 17, from the source tree: every argument goes to benchmarks/gpu_check.py.
#   bash benchmarks/gpu_check.sh --out "$OUT/gpu-check"            # on the GPU machine (under 8 minutes)
#   bash benchmarks/gpu_check.sh --out /tmp/gpu-check --dry-run    # the CPU dry run that make test runs
# Uses .venv/bin/python when the checkout has one, else $PYTHON, else python3. Needs only torch, torchvision,
# onnxruntime, numpy and opencv; see docs/gpu-check.md for what it writes and how to read it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" "$ROOT/benchmarks/gpu_check.py" "$@"
