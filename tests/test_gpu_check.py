"""tools/gpu_check.py, the command for a short GPU loan: on a machine without a GPU every check
is skipped, saying so, with exit status 0; a missing compute-sanitizer is one line, exit 1."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "gpu_check.py"


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=300)


def test_without_a_gpu_every_check_is_skipped_and_says_why():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the checks run (the device machine's job)")
    result = _run()
    assert result.returncode == 0, result.stderr
    for name in ("streams", "capture", "nvjpeg", "pinned", "tensorrt engine suite"):
        assert f"| {name} | skipped | 0.0 | no CUDA GPU visible to torch |" in result.stdout


def test_sanitize_without_compute_sanitizer_is_one_line():
    if shutil.which("compute-sanitizer"):
        pytest.skip("compute-sanitizer is installed here")
    result = _run("--only", "pinned", "--sanitize")
    assert result.returncode == 1 and result.stderr.strip() == "compute-sanitizer is not on PATH; nothing sanitized"
