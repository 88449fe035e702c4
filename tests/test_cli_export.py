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
    assert "examples:" in out and "fastervit-export --variant" in out and "(default: fp16)" in out


def test_unknown_model(capsys, tmp_path):
    code, _, err = _run(capsys, "--variant", "faster_vit_9_224", "--output-dir", str(tmp_path))
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
    code, _, err = _run(capsys, "--variant", "faster_vit_0_224", "--checkpoint", str(ckpt), "--output-dir", str(out))
    line = _error_line(err)
    assert code == 1 and "fv1.pth" in line and line.endswith("pass --variant faster_vit_1_224")
    assert not out.exists()  # the failed export took back the output folder it had made


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


@pytest.mark.slow
def test_validation_failure_exits_non_zero(capsys, tmp_path, monkeypatch):
    """A graph that does not reproduce PyTorch fails the command (files kept for inspection)."""
    from fastervit_trt.export import stages as pipeline

    real_attach = pipeline.attach_weights

    def corrupt(graph, model, weights):  # the classifier's weights negated on their way to ONNX
        model.head.weight.data.neg_()
        return real_attach(graph, model, weights)

    monkeypatch.setattr(pipeline, "attach_weights", corrupt)
    code, _, err = _run(capsys, "--precision", "fp32", "--output-dir", str(tmp_path), "--quiet")
    assert code == 1 and "does NOT match PyTorch" in _error_line(err)
    report = tmp_path / "faster_vit_0_224_fp32.report.json"
    assert report.exists() and '"passed": false' in report.read_text()


@pytest.mark.slow
def test_training_checkpoint_weights_are_reported(capsys, tmp_path, official_state):
    """A timm training checkpoint exports; the summary and report say which tensors were
    loaded from which key, with the run's arch and epoch."""
    import json

    from tests.models.test_checkpoint import save_training_checkpoint

    path, _, _ = save_training_checkpoint(tmp_path, official_state, epoch=7)
    out = tmp_path / "out"
    code, stdout, err = _run(
        capsys,
        "--checkpoint",
        str(path),
        "--weights",
        "ema",
        "--precision",
        "fp32",
        "--output-dir",
        str(out),
        "--no-engine",
    )
    assert code == 0, err
    assert "state_dict_ema: 406 tensors" in stdout and "arch faster_vit_0_224; epoch 7" in stdout
    report = json.loads((out / "faster_vit_0_224_fp32.report.json").read_text())
    assert report["weights"]["key"] == "state_dict_ema" and report["weights"]["epoch"] == 7
    assert report["validation"]["passed"]


@pytest.mark.slow
def test_checkpoint_of_another_arch_fails_before_any_work(capsys, tmp_path, official_state):
    from tests.models.test_checkpoint import save_training_checkpoint

    path, _, _ = save_training_checkpoint(tmp_path, official_state, arch="faster_vit_2_224")
    out = tmp_path / "out"  # without --variant the record would be taken at its word
    code, _, err = _run(capsys, "--variant", "faster_vit_0_224", "--checkpoint", str(path), "--output-dir", str(out))
    assert code == 1 and "trained as 'faster_vit_2_224'" in _error_line(err)
    assert "[1/" not in err  # refused in the preflight, before building or tracing
    assert not out.exists() or list(out.iterdir()) == []


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_engine_follows_output_dir_and_names_never_collide(capsys, in_tmp):
    from tests.conftest import has_tensorrt

    code, stdout, err = _run(
        capsys, "--variant", "faster_vit_digits", "--precision", "fp32", "--output-dir", "X", "--batch", "1,1,2"
    )
    assert code == 0, err
    names = sorted(p.name for p in (in_tmp / "X").iterdir())
    expected = ["faster_vit_digits_fp32.onnx", "faster_vit_digits_fp32.report.json"]
    if has_tensorrt():  # engine and sidecar beside the ONNX, not in ./engines
        expected = ["faster_vit_digits_fp32.engine", "faster_vit_digits_fp32.json", *expected]
    assert names == sorted(expected) and not (in_tmp / "engines").exists()
    code, _, err = _run(
        capsys, "--variant", "faster_vit_digits", "--precision", "fp32", "--output-dir", "X", "--engine-dir", "X"
    )
    assert code == 1 and "already exists; pass --force" in _error_line(err) and "[1/" not in err


def test_every_later_output_is_checked_before_any_work(capsys, in_tmp):
    from tests.conftest import has_tensorrt

    repo = in_tmp / "repo" / "faster_vit_digits_fp32"
    repo.mkdir(parents=True)
    (repo / "config.pbtxt").write_text("name: 'x'\n")
    code, _, err = _run(
        capsys,
        "--variant",
        "faster_vit_digits",
        "--precision",
        "fp32",
        "--output-dir",
        "X",
        "--no-engine",
        "--triton-repo",
        "repo",
    )
    assert code == 1 and "config.pbtxt: already exists" in _error_line(err) and "[1/" not in err
    assert not (in_tmp / "X").exists() or list((in_tmp / "X").iterdir()) == []
    if has_tensorrt():
        (in_tmp / "E").mkdir()
        (in_tmp / "E" / "faster_vit_digits_fp32.json").write_text("{}")
        code, _, err = _run(
            capsys, "--variant", "faster_vit_digits", "--precision", "fp32", "--output-dir", "X", "--engine-dir", "E"
        )
        assert code == 1 and "faster_vit_digits_fp32.json: already exists" in _error_line(err)
        assert not (in_tmp / "X").exists() or list((in_tmp / "X").iterdir()) == []
