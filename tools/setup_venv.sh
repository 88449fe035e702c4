#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment at .venv/ with the toolkit, its
# exporter, TensorRT-RTX (builds engines on a CPU-only machine) and the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" --upgrade pip
# torch + torchvision first, at the versions timm and the reference `fastervit` package import with
"${pip[@]}" torch==2.14.1 torchvision==0.29.1
"${pip[@]}" -e ".[test]"
