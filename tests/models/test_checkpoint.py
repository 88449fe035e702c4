"""Official checkpoints load in every container layout; anything else fails clearly."""

from __future__ import annotations

import os

import pytest
import torch

from fastervit_trt.errors import CheckpointError
from fastervit_trt.models import create_model
from tests.parity import official_model, randomize_


@pytest.fixture(scope="module")
def reference_logits(official_state, images_224):
    model = create_model("faster_vit_0_224")
    model.load_state_dict({k: v for k, v in official_state.items() if k in model.state_dict()}, strict=True)
    with torch.no_grad():
        return model(images_224)


def _logits(path, images):
    with torch.no_grad():
        return create_model("faster_vit_0_224", checkpoint=path)(images)


@pytest.mark.parametrize("layout", ["top", "state_dict", "model", "state_dict_ema", "module", "encoder"])
def test_container_layouts_load(tmp_path, official_state, images_224, reference_logits, layout):
    state = dict(official_state)
    if layout == "module":
        payload = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    elif layout == "encoder":  # a detection checkpoint: backbone under encoder., plus a decoder
        payload = {f"encoder.{k}": v for k, v in state.items()} | {"decoder.w": torch.ones(3)}
    elif layout == "top":
        payload = state
    else:
        payload = {layout: state, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}, "epoch": 300}
    path = tmp_path / "ckpt.pth.tar"
    torch.save(payload, path)
    assert torch.equal(_logits(path, images_224), reference_logits)


def test_safetensors_load(tmp_path, official_state, images_224, reference_logits):
    from safetensors.torch import save_file

    path = tmp_path / "ckpt.safetensors"
    save_file(
        {k: v.contiguous() for k, v in official_state.items() if "global_tokenizer.pos_embed" not in k}, str(path)
    )
    assert torch.equal(_logits(path, images_224), reference_logits)


@pytest.mark.parametrize("form", ["save_file_with_clones", "save_model"])
def test_safetensors_in_every_form_people_write_it_loads_bitwise_as_the_pth(tmp_path, form):
    """``save_file`` refuses FasterViT's two shared tensors, so people clone them first or use
    ``save_model``, which keeps one name of each alias: both load exactly as the .pth does."""
    from safetensors.torch import save_file, save_model

    from fastervit_trt.models.checkpoint import read_checkpoint

    official = randomize_(official_model("faster_vit_0_224"), seed=5)
    with pytest.raises(RuntimeError, match="share memory"):
        save_file(official.state_dict(), str(tmp_path / "refused.safetensors"))
    path = tmp_path / "weights.safetensors"
    if form == "save_model":
        save_model(official, str(path))
    else:
        save_file({k: v.clone().contiguous() for k, v in official.state_dict().items()}, str(path))
    torch.save(official.state_dict(), tmp_path / "weights.pth")
    from_pth = create_model("faster_vit_0_224", checkpoint=tmp_path / "weights.pth")
    from_safetensors = create_model("faster_vit_0_224", checkpoint=path)
    ours, theirs = from_pth.state_dict(), from_safetensors.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    state = read_checkpoint(path).state  # the twin save_model dropped, filled from the one it kept
    twins = [k for k in state if ".global_tokenizer." in k and (".pos_embed." in k or ".to_global_feature.pos." in k)]
    assert len(twins) == 4 and all(
        torch.equal(state[k], state[k.replace("pos_embed", "to_global_feature.pos")]) for k in twins if "pos_embed" in k
    )


def test_derived_buffers_missing_or_stale_are_recomputed(tmp_path, official_state, images_224, reference_logits):
    state = {k: v for k, v in official_state.items() if not k.endswith("relative_position_index")}
    for key in state:
        if key.endswith(("relative_coords_table", "relative_bias")):
            state[key] = torch.full_like(state[key], 123.0)
    path = tmp_path / "stale.pth"
    torch.save(state, path)
    assert torch.equal(_logits(path, images_224), reference_logits)


def test_checkpoint_of_another_variant_is_one_line_naming_the_variant_flag(tmp_path):
    state = randomize_(official_model("faster_vit_1_224")).state_dict()
    path = tmp_path / "fv1.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError) as err:
        create_model("faster_vit_0_224", checkpoint=path)
    message = str(err.value)
    assert message.startswith(str(path)) and "\n" not in message and len(message) < len(str(path)) + 100
    assert message.endswith("pass --variant faster_vit_1_224")


def test_checkpoint_with_other_class_count_builds_its_own_head(tmp_path, official_state):
    state = dict(official_state)
    state["head.weight"], state["head.bias"] = torch.randn(10, 512), torch.randn(10)
    path = tmp_path / "ten.pth"
    torch.save(state, path)
    model = create_model("faster_vit_0_224", checkpoint=path)
    assert model.head.out_features == 10 and torch.equal(model.head.weight, state["head.weight"])
    assert create_model("faster_vit_0_224", checkpoint=path, num_classes=10).head.out_features == 10
    with pytest.raises(
        CheckpointError, match=r"ten\.pth: its head has 10 classes, not num_classes=1000.*--num-classes 10"
    ):
        create_model("faster_vit_0_224", checkpoint=path, num_classes=1000)


def test_truncated_checkpoint(tmp_path, official_state):
    path = tmp_path / "full.pth"
    torch.save(official_state, path)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth: truncated or corrupt"):
        create_model("faster_vit_0_224", checkpoint=cut)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        create_model("faster_vit_0_224", checkpoint=tmp_path / "nope.pth")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_with_code_is_refused_and_not_run(tmp_path, official_state):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": official_state, "hook": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="refused"):
        create_model("faster_vit_0_224", checkpoint=path)
    assert not marker.exists()


def test_224_checkpoint_drives_any_res_at_non_square_size(tmp_path, official_state):
    """Any-res variants reuse the 224 checkpoints; weights unused at the new size are ignored
    (as the reference does) and the logits match the reference any-res model's."""
    from fastervit_trt.compare import compare

    path = tmp_path / "fv0_224.pth"
    torch.save({"state_dict": official_state}, path)
    ours = create_model("faster_vit_0_any_res", checkpoint=path, resolution=(224, 320))
    reference = official_model("faster_vit_0_any_res", (224, 320))
    derived = ("relative_bias", "relative_coords_table", "relative_position_index")
    # the reference cannot even take its own stale derived buffers at another size: drop them
    learned = {k: v for k, v in official_state.items() if not k.endswith(derived)}
    missing, unexpected = reference.load_state_dict(learned, strict=False)
    assert all(k.endswith(derived) for k in missing) and any("hat_pos_embed" in k for k in unexpected)
    x = torch.randn(2, 3, 224, 320, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        report = compare(reference(x).numpy(), ours(x).numpy())
    assert report.relative_diff <= 1e-4, report


# ---------------------------------------------------------------- training checkpoints (timm)


def _training_args(model: str):
    """Parsed arguments the way the official train.py records them (a real argparse parser)."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="faster_vit_0_224")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--input-size", type=int, nargs=3, default=None)
    parser.add_argument("--mean", type=float, nargs="+", default=None)
    parser.add_argument("--model-ema", action="store_true")
    parser.add_argument("--sched", default="cosine")
    return parser.parse_args(["--model", model, "--lr", "0.005", "--input-size", "3", "224", "224", "--model-ema"])


def save_training_checkpoint(folder, state: dict, arch: str = "faster_vit_0_224", epoch: int = 3):
    """A checkpoint written by timm's own CheckpointSaver: args, optimizer with state, EMA, metric."""
    from timm.utils import CheckpointSaver, ModelEmaV2, NativeScaler

    model = create_model("faster_vit_0_224")
    model.load_state_dict({k: v for k, v in state.items() if k in model.state_dict()})
    ema = ModelEmaV2(model, decay=0.5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.005)
    model.train()
    model(torch.randn(2, 3, 224, 224)).logsumexp(dim=1).mean().backward()
    optimizer.step()  # the optimizer now holds exp_avg / exp_avg_sq state
    ema.update(model)  # EMA weights now differ from the model's
    model.eval()
    saver = CheckpointSaver(
        model,
        optimizer,
        args=_training_args(arch),
        model_ema=ema,
        amp_scaler=NativeScaler(device="cpu"),
        checkpoint_dir=str(folder),
    )
    saver.save_checkpoint(epoch, metric=71.5)
    files = sorted(folder.glob("checkpoint-*.pth.tar"))
    return files[-1], model.state_dict(), ema.module.state_dict()


@pytest.fixture(scope="module")
def training_checkpoint(tmp_path_factory, official_state):
    return save_training_checkpoint(tmp_path_factory.mktemp("timm"), official_state)


@pytest.mark.slow
def test_timm_training_checkpoint_loads_model_or_ema_weights(training_checkpoint, images_224):
    from fastervit_trt.models import read_checkpoint

    path, model_state, ema_state = training_checkpoint
    raw = torch.load(path, weights_only=False)  # what the file holds, read here only to check the test
    assert {"args", "optimizer", "state_dict_ema", "metric", "epoch", "arch"} <= raw.keys()
    assert raw["optimizer"]["state"], "the optimizer must carry state"
    for weights, expected, key in (("model", model_state, "state_dict"), ("ema", ema_state, "state_dict_ema")):
        loaded = read_checkpoint(path, weights)
        assert (loaded.key, loaded.arch, loaded.epoch) == (key, "faster_vit_0_224", 3)
        model = create_model("faster_vit_0_224", checkpoint=path, weights=weights)
        assert model.checkpoint["key"] == key
        for name, value in model.state_dict().items():
            if name in expected and not name.endswith(("relative_position_index", "num_batches_tracked")):
                assert torch.equal(value, expected[name].to(value.dtype)), name
    assert not torch.equal(model_state["head.weight"], ema_state["head.weight"])


@pytest.mark.slow
def test_checkpoint_trained_as_another_variant_is_refused_before_building(tmp_path, official_state):
    path, _, _ = save_training_checkpoint(tmp_path, official_state, arch="faster_vit_1_224")
    with pytest.raises(CheckpointError, match=r"trained as 'faster_vit_1_224'.*--variant faster_vit_1_224"):
        create_model("faster_vit_0_224", checkpoint=path)


def test_any_res_variant_takes_its_224_training_checkpoint(training_checkpoint):
    path, _, _ = training_checkpoint
    model = create_model("faster_vit_0_any_res", checkpoint=path, resolution=(224, 320))
    assert model.checkpoint["arch"] == "faster_vit_0_224"


def test_ema_requested_from_a_plain_state_dict_is_refused(tmp_path, official_state):
    path = tmp_path / "plain.pth"
    torch.save({"state_dict": official_state}, path)
    with pytest.raises(CheckpointError, match="no EMA weights.*--weights model"):
        create_model("faster_vit_0_224", checkpoint=path, weights="ema")


class Settings:  # a class a training script might pickle: not on the allowlist
    def __init__(self):
        self.value = 1


def test_other_pickled_globals_are_named_and_refused(tmp_path, official_state):
    path = tmp_path / "extra.pth"
    torch.save({"state_dict": official_state, "settings": Settings()}, path)
    with pytest.raises(CheckpointError) as err:
        create_model("faster_vit_0_224", checkpoint=path)
    message = str(err.value)
    assert f"{__name__}.Settings" in message and "refused" in message and "safetensors" in message
