"""fastervit-export's contract: one error line, non-zero exit, nothing half-written."""
from __future__ import annotations

import os

import pytest
import torch

from fastervit_trt.cli import export_main


def _run(capsys, *argv):
    code = export_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        export_main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "fastervit-export --model" in out and "(default: fp16)" in out


def test_unknown_model(capsys, tmp_path):
    code, _, err = _run(capsys, "--model", "faster_vit_9_224", "--output-dir", str(tmp_path))
    assert code == 1 and "faster_vit_0_224" in _error_line(err)
    assert list(tmp_path.iterdir()) == []


def test_resolution_the_windows_cannot_take(capsys, tmp_path):
    code, _, err = _run(capsys, "--resolution", "250", "250", "--output-dir", str(tmp_path))
    assert code == 1 and "any_res" in _error_line(err)
    assert list(tmp_path.iterdir()) == []


def test_wrong_checkpoint(capsys, tmp_path):
    from fastervit_trt.models import create_model
    ckpt = tmp_path / "fv1.pth"
    torch.save(create_model("faster_vit_1_224").state_dict(), ckpt)
    out = tmp_path / "out"
    code, _, err = _run(capsys, "--checkpoint", str(ckpt), "--output-dir", str(out))
    line = _error_line(err)
    assert code == 1 and "fv1.pth" in line and "faster_vit_1_224" in line
    assert not out.exists() or list(out.iterdir()) == []


def test_unwritable_output_dir(capsys, tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)  # enough for ordinary users; root ignores mode bits, so ask os.access too
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(locked) else real_access(p, mode))
    code, _, err = _run(capsys, "--output-dir", str(locked))
    locked.chmod(0o700)
    assert code == 1 and "not writable" in _error_line(err)
    assert list(locked.iterdir()) == []


def test_output_dir_that_is_a_file(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = _run(capsys, "--output-dir", str(blocker / "sub"))
    assert code == 1 and "cannot create the output folder" in _error_line(err)


def test_existing_output_needs_force(capsys, tmp_path):
    target = tmp_path / "faster_vit_0_224_fp32.onnx"
    target.write_bytes(b"old")
    code, _, err = _run(capsys, "--precision", "fp32", "--output-dir", str(tmp_path))
    assert code == 1 and "--force" in _error_line(err)
    assert target.read_bytes() == b"old"


def test_validation_failure_exits_non_zero(capsys, tmp_path, monkeypatch):
    """A graph that does not reproduce PyTorch fails the command (files kept for inspection)."""
    from onnx import numpy_helper

    from fastervit_trt.export import pipeline
    real_simplify = pipeline.simplify

    def corrupt(model):
        model = real_simplify(model)
        head = next(t for t in model.graph.initializer if "head" in t.name and len(t.dims) == 2)
        head.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(head), head.name))
        return model
    monkeypatch.setattr(pipeline, "simplify", corrupt)
    code, _, err = _run(capsys, "--precision", "fp32", "--output-dir", str(tmp_path), "--quiet")
    assert code == 1 and "does NOT match PyTorch" in _error_line(err)
    report = tmp_path / "faster_vit_0_224_fp32.json"
    assert report.exists() and '"passed": false' in report.read_text()
