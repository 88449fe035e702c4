#!/usr/bin/env bash
# Static check of the whole package (setup.cfg [mypy] names the two modules left out, and why);
# its TensorRT-facing code (engines/, runtime/tensorrt_backend.py, runtime/cuda.py) is checked
# against TensorRT's Python API as typed by tensorrt-stubs (TensorRT 10.13).
#
# The stubs go to a folder of their own, never into the environment: they ship a stubs-only
# `tensorrt` package that would make `import tensorrt` succeed where TensorRT is absent.
# tensorrt-stubs 10.13.0.35.1 has two syntax slips that stop mypy (a parameter named `in`,
# a parameter without default after defaulted ones); tools/fix_trt_stubs.py repairs them.
# TensorRT-RTX ships no type information, so its path is checked through the same calls.
#   usage: tools/typecheck.sh [python] [root]
#     python: default .venv/bin/python (with mypy from [test]), relative to this repository
#     root:   the folder holding fastervit_trt/ and setup.cfg to check (default: this
#             repository); mypy keeps its cache in root/.mypy_cache
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-.venv/bin/python}"
if [[ "$PY" == */* ]]; then
    PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"  # absolute, the venv's link kept
fi
ROOT="${2:-.}"
STUBS="$(mktemp -d)"
trap 'rm -rf "$STUBS"' EXIT
"$PY" -m pip install -q --no-deps --target "$STUBS" "tensorrt-stubs==10.13.0.35.1"
"$PY" tools/fix_trt_stubs.py "$STUBS/tensorrt_bindings/tensorrt.pyi"
cd "$ROOT"
MYPYPATH="$STUBS" "$PY" -m mypy fastervit_trt
