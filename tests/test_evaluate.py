"""fastervit-eval: accuracy of engines / ONNX / PyTorch side by side on labelled folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fastervit_trt.cli import eval_main
from fastervit_trt.evaluate import EvaluationError, labelled_samples

CHECKPOINT = Path(__file__).parent / "fixtures" / "faster_vit_digits.pth"
PHOTOS = sorted((Path(__file__).parents[1] / "calibration").glob("*.*g"))


@pytest.fixture(scope="module")
def digits_models(tmp_path_factory, digits_folders):
    from fastervit_trt.export.pipeline import ExportOptions, export_model
    from fastervit_trt.export.quantized import CalibrationOptions, export_quantized

    out = tmp_path_factory.mktemp("eval")
    common = dict(model="faster_vit_digits", checkpoint=CHECKPOINT)
    fp32 = export_model(ExportOptions(precision="fp32", output_dir=out, **common)).onnx_path
    int8 = export_quantized(
        ExportOptions(precision="int8", output_dir=out, **common),
        CalibrationOptions(data=digits_folders["train"], images=128),
    ).onnx_path
    return fp32, int8


@pytest.mark.slow
def test_side_by_side_on_the_heldout_split(digits_models, digits_folders, capsys):
    fp32, int8 = digits_models
    code = eval_main(
        [
            "--data",
            str(digits_folders["heldout"]),
            "--model",
            str(fp32),
            "--model",
            str(int8),
            "--torch-variant",
            "faster_vit_digits",
            "--checkpoint",
            str(CHECKPOINT),
            "--json",
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["images"] == 360
    models = report["models"]
    assert models[str(fp32)]["top1"] == models["pytorch:faster_vit_digits"]["top1"] >= 95.0
    assert models[str(int8)]["top1"] >= models[str(fp32)]["top1"] - 1.0
    assert all(m["top5"] >= m["top1"] for m in models.values())
    assert [(m["provider"], m["device"]) for m in models.values()] == [("CPUExecutionProvider", "cpu")] * 2 + [
        ("pytorch eager", "cpu")
    ]
    pairs = {(p["a"], p["b"]): p for p in report["pairs"]}
    assert len(pairs) == 3
    assert pairs[(str(fp32), "pytorch:faster_vit_digits")]["top1_agreement"] == 100.0
    assert pairs[(str(fp32), str(int8))]["mean_cosine"] > 0.99


def test_table_output_and_limit(digits_models, digits_folders, capsys):
    fp32, _ = digits_models
    assert eval_main(["--data", str(digits_folders["heldout"]), "--model", str(fp32), "--limit", "50"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("50 images") and "top-1 %" in out
    assert out.splitlines()[2].endswith("CPUExecutionProvider on cpu")  # which provider ran it


def test_imagenet_synset_folders_and_label_files(tmp_path):
    for synset, photos in (("n01440764", PHOTOS[:2]), ("n02123045", PHOTOS[2:4])):
        (tmp_path / "imagenet" / synset).mkdir(parents=True)
        for photo in photos:
            shutil.copy(photo, tmp_path / "imagenet" / synset / photo.name)
    samples = labelled_samples(tmp_path / "imagenet")
    assert sorted({s.label for s in samples}) == [0, 281]  # tench, tabby cat
    (tmp_path / "custom" / "kitty").mkdir(parents=True)
    shutil.copy(PHOTOS[0], tmp_path / "custom" / "kitty" / "a.jpg")
    with pytest.raises(EvaluationError, match="kitty are neither ImageNet synsets"):
        labelled_samples(tmp_path / "custom")
    labels = tmp_path / "labels.txt"
    labels.write_text("# folder index\nkitty 281\n")
    assert [s.label for s in labelled_samples(tmp_path / "custom", labels)] == [281]
    labels.write_text("kitty tabby\n")
    with pytest.raises(EvaluationError, match="line 1 should be"):
        labelled_samples(tmp_path / "custom", labels)


def test_folder_without_classes(tmp_path, capsys):
    shutil.copy(PHOTOS[0], tmp_path / "a.jpg")
    assert eval_main(["--data", str(tmp_path), "--torch-variant", "faster_vit_digits"]) == 1
    assert "no labelled images" in capsys.readouterr().err
    assert eval_main(["--data", str(tmp_path)]) == 1
    assert "nothing to evaluate" in capsys.readouterr().err
