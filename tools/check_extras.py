#!/usr/bin/env python3
"""Install each extra in a fresh virtual environment and run what it is for.

For every install (the base package, ``[onnxruntime]``, ``[tensorrt-rtx]``): each command's
``--help`` must print help, or (for a command the install does not cover) one error line
naming the extra to add, never a traceback; then one real call per extra on an ONNX file made
here by the full environment. ``[tensorrt]`` cannot be installed from PyPI on these machines
(its libraries come from NVIDIA's own index) and is not checked. Run by ``.ci/run``:

  .venv/bin/python tools/check_extras.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("export", "build", "infer", "bench", "inspect", "triton", "eval", "serve", "deepstream", "batch")


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=900)


def venv(folder: Path, extra: str) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    spec = f"{ROOT}[{extra}]" if extra else str(ROOT)
    subprocess.run(
        [str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", spec],
        check=True,
    )
    return folder / "bin"


def cuda_pins(setup_cfg: Path = ROOT / "setup.cfg") -> list[str]:
    """Extras whose cuda-python may be another CUDA major than their TensorRT build's
    (``tensorrt-cuNN``, ``tensorrt-rtx-cuNN-*``): each must bound cuda-python to ``>=NN,<NN+1``."""
    import configparser
    import re

    parser = configparser.ConfigParser()
    parser.read(setup_cfg)
    problems = []
    for extra, text in parser["options.extras_require"].items():
        requirements = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        majors = {int(m) for r in requirements if r.startswith("tensorrt") for m in re.findall(r"-cu(\d+)", r)}
        if any(r.split(">")[0].split("=")[0] == "tensorrt" for r in requirements):
            problems.append(f"[{extra}]: 'tensorrt' leaves the CUDA major to pip; name tensorrt-cuNN")
        cuda = [r for r in requirements if r.startswith("cuda-python")]
        for major in majors:
            if cuda != [c for c in cuda if f"<{major + 1}" in c and f">={major}" in c]:
                problems.append(
                    f"[{extra}]: TensorRT for CUDA {major}, but {cuda or 'no cuda-python'} is not <{major + 1}"
                )
    return problems


def main() -> int:
    failures, passed = [], 0
    for problem in cuda_pins():
        failures.append(problem)
        print(f"FAILED {problem}", file=sys.stderr)

    def check(label: str, result: subprocess.CompletedProcess, ok: bool) -> None:
        nonlocal passed
        if ok and "Traceback" not in result.stderr:
            passed += 1
        else:
            failures.append(label)
            print(f"FAILED {label}: exit {result.returncode}\n{result.stderr[-1500:]}", file=sys.stderr)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        export = run(
            [
                str(Path(sys.executable).parent / "fastervit-export"),
                "--variant",
                "faster_vit_digits",
                "--precision",
                "fp32",
                "--output-dir",
                str(tmp),
                "--no-engine",
                "--batch",
                "1,1,2",
                "--quiet",
            ],
            tmp,
        )
        if export.returncode != 0:
            print(export.stderr, file=sys.stderr)
            return 1
        onnx_path = tmp / "faster_vit_digits_fp32.onnx"
        image = ROOT / "calibration" / "skimage_coffee.png"
        for extra in ("", "onnxruntime", "tensorrt-rtx"):
            name = extra or "base"
            print(f"extras: fresh environment with fastervit-trt[{extra}] ...", file=sys.stderr, flush=True)
            bin_dir = venv(tmp / f"venv-{name}", extra)
            for command in COMMANDS:
                result = run([str(bin_dir / f"fastervit-{command}"), "--help"], tmp)
                helped = result.returncode == 0 and "usage:" in result.stdout
                refused = (
                    result.returncode == 1
                    and len(result.stderr.strip().splitlines()) == 1
                    and "pip install 'fastervit-trt[" in result.stderr
                )
                check(f"[{name}] fastervit-{command} --help", result, helped or refused)
            if extra == "":
                result = run([str(bin_dir / "fastervit-infer"), str(image), "--model", str(onnx_path)], tmp)
                check(
                    "[base] infer names the missing extra",
                    result,
                    result.returncode == 1 and "fastervit-trt[onnxruntime]" in result.stderr,
                )
            if extra == "onnxruntime":
                result = run([str(bin_dir / "fastervit-infer"), str(image), "--model", str(onnx_path)], tmp)
                check("[onnxruntime] infer", result, result.returncode == 0 and "%" in result.stdout)
                result = run([str(bin_dir / "fastervit-inspect"), str(onnx_path)], tmp)
                check("[onnxruntime] inspect", result, result.returncode == 0)
                result = run([str(bin_dir / "fastervit-triton"), str(onnx_path), "--repo", str(tmp / "repo")], tmp)
                check("[onnxruntime] triton", result, result.returncode == 0)
            if extra == "tensorrt-rtx":
                engine = tmp / "digits.engine"
                result = run(
                    [str(bin_dir / "fastervit-build"), str(onnx_path), "--output", str(engine), "--quiet"], tmp
                )
                check("[tensorrt-rtx] build", result, result.returncode == 0 and engine.is_file())
                result = run([str(bin_dir / "fastervit-inspect"), str(engine)], tmp)
                check("[tensorrt-rtx] inspect", result, result.returncode == 0)
    print(f"extras: {passed} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
