"""tools/typecheck.sh holds the TensorRT calls to TensorRT's API (tensorrt-stubs): a copy of the
package with one call misspelt, or given a wrong argument, fails it; the package as it is passes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # mypy over the whole package: about 20 s, then a few per case


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory) -> Path:
    """The package and its mypy settings in a folder of their own."""
    root = tmp_path_factory.mktemp("typecheck")
    shutil.copytree(REPO / "fastervit_trt", root / "fastervit_trt", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "setup.cfg", root / "setup.cfg")
    return root


def typecheck(root: Path) -> str:
    """tools/typecheck.sh on ``root``; its output, which ends with mypy's verdict."""
    result = subprocess.run(
        ["bash", str(REPO / "tools" / "typecheck.sh"), sys.executable, str(root)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    return result.stdout + result.stderr + f"\nexit status {result.returncode}"


def test_the_package_as_it_is_passes(package_copy):
    output = typecheck(package_copy)
    assert "Success: no issues found" in output and output.endswith("exit status 0"), output


@pytest.mark.parametrize(
    "module, real, wrong, error",
    [
        (
            "engines/builder.py",
            ".build_serialized_network(",
            ".build_serialised_network(",
            r'error: "Builder" has no attribute "build_serialised_network"',
        ),
        (
            "engines/builder.py",
            "ignore_mismatch=False",
            "ignore_mismatches=False",
            r'error: Unexpected keyword argument "ignore_mismatches" for "set_timing_cache" of "IBuilderConfig"',
        ),
        (
            "engines/builder.py",
            "def step_complete(self, phase_name",
            "def step_complete(self, *, phase_name",
            r'error: Signature of "step_complete" incompatible with supertype "[\w.]*IProgressMonitor"',
        ),
        (
            "engines/calibrator.py",
            "def write_calibration_cache(self, cache",
            "def write_calibration_cache(self, *, cache",
            r'error: Signature of "write_calibration_cache" incompatible with supertype "[\w.]*IInt8Calibrator"',
        ),
        (
            "runtime/tensorrt_backend.py",
            ".execute_async_v3(",
            ".execute_async_v9(",
            r'error: "IExecutionContext" has no attribute "execute_async_v9"',
        ),
    ],
)
def test_a_wrong_tensorrt_call_fails_the_check(package_copy, module, real, wrong, error):
    path = package_copy / "fastervit_trt" / module
    source = path.read_text()
    assert real in source
    path.write_text(source.replace(real, wrong))
    try:
        output = typecheck(package_copy)
    finally:
        path.write_text(source)
    assert re.search(rf"fastervit_trt/{re.escape(module)}:\d+: {error}", output), output
    assert output.endswith("exit status 1"), output
