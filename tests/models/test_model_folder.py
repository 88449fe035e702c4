"""A timm / Hugging Face model folder is a checkpoint: ``timm.models.save_for_hf`` on a fine-tuned
official FasterViT (5 classes named with spaces and accents, its own transform), read back
with its variant, head, class names and transform; nothing fetched."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from fastervit_trt.cli import export_main
from fastervit_trt.errors import CheckpointError
from fastervit_trt.models import create_model
from fastervit_trt.models.checkpoint import read_checkpoint
from tests.parity import randomize_

NAMES = ["chat noir", "élan", "cheval de trait", "zèbre", "loup"]
DATA_CONFIG = {"mean": (0.52, 0.5, 0.45), "std": (0.25, 0.24, 0.26), "interpolation": "bicubic", "crop_pct": 0.9}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The official model saved by save_for_hf (pytorch_model.bin) and, since its safe
    serialization refuses the shared tensors, the same folder with save_model's safetensors."""
    from safetensors.torch import save_model
    from timm.models import save_for_hf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastervit import create_model as official_create

        official = randomize_(official_create("faster_vit_0_224", num_classes=5).eval(), seed=11)
    official.num_features = official.head.in_features  # timm reads it; the official model lacks it
    root = tmp_path_factory.mktemp("hf")
    binary, safe = root / "bin", root / "safetensors"
    save_for_hf(
        official, binary, model_config={"label_names": NAMES}, data_config={**DATA_CONFIG, "crop_mode": "center"}
    )
    with pytest.raises(RuntimeError, match="share memory"):
        save_for_hf(official, root / "refused", safe_serialization=True)
    save_for_hf(official, safe, model_config={"label_names": NAMES}, data_config={**DATA_CONFIG, "crop_mode": "center"})
    (safe / "pytorch_model.bin").unlink()
    save_model(official, str(safe / "model.safetensors"))
    return {"official": official, "bin": binary, "safetensors": safe}


@pytest.mark.parametrize("form", ["bin", "safetensors"])
def test_the_folder_gives_variant_head_names_and_transform(folders, form):
    checkpoint = read_checkpoint(folders[form])
    assert checkpoint.arch == "faster_vit_0_224" and checkpoint.num_classes == 5
    assert checkpoint.class_names == tuple(NAMES)
    assert checkpoint.transform() == {**DATA_CONFIG, "crop_mode": "center"}
    assert checkpoint.transform_source == "model folder's config.json"
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    ours = create_model("faster_vit_0_224", checkpoint=folders[form])
    with torch.no_grad():
        expected, got = folders["official"](x), ours(x)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_bin_and_safetensors_folders_load_bitwise_alike(folders):
    a = create_model("faster_vit_0_224", checkpoint=folders["bin"]).state_dict()
    b = create_model("faster_vit_0_224", checkpoint=folders["safetensors"]).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_folder_without_config_or_weights_is_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="a folder but no config.json in it"):
        read_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"no model.safetensors or pytorch_model.bin beside config.json"):
        read_checkpoint(tmp_path)


@pytest.mark.slow
def test_export_from_the_folder_alone_says_where_each_setting_came_from(folders, tmp_path, capsys):
    assert export_main(["--checkpoint", str(folders["bin"]), "--precision", "fp32", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "classes     5: chat noir, élan, cheval de trait, zèbre, ...  (config.json)" in out
    assert "(mean, std, interpolation, crop_pct, crop_mode from the model folder's config.json)" in out
    report = json.loads((tmp_path / "faster_vit_0_224_fp32.report.json").read_text())
    assert report["class_names"] == NAMES and report["preprocess"]["label_set"] is None
    assert report["preprocess"]["mean"] == list(DATA_CONFIG["mean"]) and report["preprocess"]["crop_pct"] == 0.9
    from fastervit_trt.runtime import load

    model = load(tmp_path / "faster_vit_0_224_fp32.onnx")
    assert model.names == NAMES
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        expected = folders["official"](torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.run(x), expected, rtol=1e-3, atol=1e-4)
