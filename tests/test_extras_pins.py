"""cuda-python's major follows the CUDA major of the TensorRT build each extra installs
(``tools/check_extras.py``, run by CI)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cuda_pins():
    spec = importlib.util.spec_from_file_location("check_extras", ROOT / "tools" / "check_extras.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.cuda_pins


def test_the_extras_pin_cuda_python_to_their_tensorrt_cuda_major():
    assert _cuda_pins()() == []


def test_the_check_finds_a_loose_pin(tmp_path):
    cfg = tmp_path / "setup.cfg"
    cfg.write_text(
        "[options.extras_require]\n"
        "tensorrt =\n    tensorrt>=10.1\n    cuda-python>=12.6\n"
        "tensorrt-rtx =\n    tensorrt-rtx-cu12-libs>=1.0\n    cuda-python>=12.6\n"
    )
    problems = _cuda_pins()(cfg)
    assert problems == [
        "[tensorrt]: 'tensorrt' leaves the CUDA major to pip; name tensorrt-cuNN",
        "[tensorrt-rtx]: TensorRT for CUDA 12, but ['cuda-python>=12.6'] is not <13",
    ]
