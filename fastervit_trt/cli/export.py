"""``fastervit-export``: a registered variant -> validated ONNX (+ calibration) -> engine."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from .build import build_after_export, planned_engine
from .common import (
    PROFILE_TEXT,
    add_batch_profile,
    add_calibration_options,
    add_force,
    add_quiet,
    add_transform_options,
    calibration_options,
    command_parser,
    number,
    options_or_error,
    positive,
    progress,
    renamed,
    run,
    stages,
    transform_options,
)
from .reports import export_summary, sensitivity_table

MIN_OPSET, MAX_OPSET = 17, 21  # 17: LayerNormalization; up to 21 the exports validate and TensorRT-RTX builds them

EXAMPLES = """\
examples:
  fastervit-export                                         # faster_vit_0_224, random weights, FP16
  fastervit-export --variant faster_vit_2_224 --checkpoint fastervit_2_224_1k.pth.tar --precision fp32
  fastervit-export --checkpoint my_finetune/model_best.pth.tar --class-names classes.txt --precision int8 \
      --calib-data my_images/                              # your own model: variant, classes, transform read from it
  fastervit-export --checkpoint weights.safetensors --variant faster_vit_1_224 --mean 0.5 0.5 0.5 --std 0.5 0.5 0.5
  fastervit-export --checkpoint model.pth --crop-mode squash --crop-pct 1   # a plain resize (DeepStream, no crop)
  fastervit-export --variant faster_vit_0_any_res --resolution 800 1216 --batch 1,2,4
  fastervit-export --precision fp16 --io-dtype fp16 --output-dir /models --force
  fastervit-export --precision fp16 --input uint8          # the engine takes uint8 NHWC crops
  fastervit-export --precision int8 --input pixels         # float 0..255 NCHW pixels (DeepStream nvinfer)
  fastervit-export --precision int8                        # calibrate on the shipped photos
  fastervit-export --precision fp8                         # FP8 E4M3 Q/DQ (compute capability 8.9+)
  fastervit-export --precision int8 --calib-data ~/imagenet/val --calib-images 512 --calib-method percentile
  fastervit-export --precision int8 --calib-cache export/faster_vit_0_224_int8.cache   # reuse scales
  fastervit-export --variant faster_vit_2_any_res --resolution 800 1216 --features      # detection backbone
  fastervit-export --variant faster_vit_0_any_res --resolution 1024 1024 --features 2,3,4 --feature-norm
"""


def parser() -> argparse.ArgumentParser:
    from ..export.pipeline import ExportOptions
    from ..export.stages import DEFAULT_VARIANT, PRECISIONS
    from ..models import list_models

    d = ExportOptions(model=DEFAULT_VARIANT)
    parser = command_parser(
        "fastervit-export",
        EXAMPLES,
        "Export a FasterViT model to TensorRT-friendly ONNX (BatchNorm folded, "
        "position bias precomputed, static window reshapes, dynamic batch), "
        "validated against PyTorch with ONNX Runtime. Writes "
        "<output-dir>/<variant>_<precision>.onnx and a JSON report beside it.",
    )
    parser.add_argument(
        "--variant",
        metavar="NAME",
        help=f"registered variant ({len(list_models())} available: "
        "faster_vit_{0..6}_224, faster_vit_4_21k_{224,384,512,768}, "
        f"and *_any_res of each); default: the one --checkpoint was trained as, else {DEFAULT_VARIANT}",
    )
    renamed(parser, "--model", "--variant", metavar="NAME")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="official or fine-tuned .pth/.pth.tar/.safetensors weights (timm training checkpoint or plain "
        "state dict); its number of classes, and the transform a timm run recorded, are read from it; "
        "without one the model is randomly initialised (seeded)",
    )
    parser.add_argument(
        "--num-classes",
        type=number(int, 0),
        metavar="N",
        help="classifier width, checked against the checkpoint's head (read from it when omitted); "
        "0: headless, the pooled embedding is the output",
    )
    parser.add_argument(
        "--class-names",
        type=Path,
        metavar="FILE",
        help="one class name per line, in the head's order; stored in the ONNX and engine, used by "
        "infer, eval, serve, Triton and DeepStream (default: ImageNet-1k names for 1000-class "
        "models, else 'class <i>')",
    )
    add_transform_options(parser)
    parser.add_argument(
        "--weights",
        choices=("model", "ema"),
        default=d.weights,
        help="which weights of a training checkpoint: state_dict (as the official "
        "validate.py without --use-ema) or state_dict_ema",
    )
    parser.add_argument(
        "--resolution", type=positive, nargs=2, metavar=("H", "W"), help="input size; the variant's own when omitted"
    )
    parser.add_argument(
        "--exact-preprocess",
        action="store_true",
        help="decode every JPEG in full and resize the whole image, bitwise as timm "
        "(calibration and, through the recorded setting, inference); default: JPEGs of "
        "at least twice the resize size decode at a reduced scale and only the crop is "
        "resized, several times faster",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=d.precision,
        help="fp16: float16 graph with FP32 islands for TensorRT's strong typing; "
        "int8 / fp8: calibrated Q/DQ (FP8 E4M3: Ada, Hopper, Blackwell GPUs); the "
        "classifier head stays FP16, and for FP8 also the stem and downsampling "
        "convolutions (every path runs through them)",
    )
    parser.add_argument(
        "--features",
        type=stages,
        nargs="?",
        const=(1, 2, 3, 4),
        default=(),
        metavar="STAGES",
        help="export the backbone for detection: no head, one NCHW output per stage "
        "(stage1..stage4, strides 4..32, each taken before its downsampling); "
        "STAGES picks some, e.g. 2,3,4 (default: all four)",
    )
    parser.add_argument(
        "--feature-norm",
        action="store_true",
        help="each feature map through its level's BatchNorm, as the official detection "
        "backbones add it (stage 4: the trained classifier norm; stages 1-3: "
        "BatchNorm at its initial statistics, which detection training then learns)",
    )
    parser.add_argument(
        "--input",
        choices=("float", "uint8", "pixels"),
        default=d.input_format,
        dest="input_format",
        help="float: normalised float NCHW input; uint8: the resized, cropped uint8 "
        "NHWC image, cast and normalised inside the graph (4x fewer bytes to the "
        "GPU, no float math on the CPU; writes <variant>_<precision>_uint8in.onnx); "
        "pixels: the crop as float NCHW pixel values 0..255, normalised per channel "
        "inside the graph, as DeepStream's nvinfer sends them with net-scale-factor 1 "
        "(writes ..._pixelsin.onnx; see fastervit-deepstream)",
    )
    parser.add_argument(
        "--softmax",
        action="store_true",
        help="a classifier's output as softmax probabilities ('probabilities') instead of "
        "logits, as DeepStream's nvinfer classifier parser reads them; writes "
        "<variant>_<precision>_softmax.onnx",
    )
    add_batch_profile(parser, PROFILE_TEXT, "batch sizes of the engine's optimization profile")
    parser.add_argument(
        "--opset",
        type=number(int, MIN_OPSET, MAX_OPSET),
        default=d.opset,
        help=f"ONNX opset ({MIN_OPSET}-{MAX_OPSET}: LayerNormalization needs 17)",
    )
    parser.add_argument(
        "--io-dtype", choices=("fp32", "fp16"), default=d.io_dtype, help="dtype of the FP16 graph's input and output"
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        metavar="DIR",
        help=f"where the .onnx and its .report.json go (default: {d.output_dir}); "
        "engines go there too unless --engine-dir is given",
    )
    parser.add_argument("--seed", type=number(int, 0), default=d.seed, help="seed of random weights and inputs")
    add_calibration_options(parser)
    engine = parser.add_argument_group("engine (built at the end when TensorRT or TensorRT-RTX is installed)")
    engine.add_argument(
        "--engine-dir",
        type=Path,
        metavar="DIR",
        help="where the .engine and its .json sidecar go (default: --output-dir when given, else engines)",
    )
    engine.add_argument("--no-engine", action="store_true", help="stop after the ONNX")
    engine.add_argument(
        "--triton-repo",
        type=Path,
        metavar="DIR",
        help="also write a Triton model repository (the engine if built, else the ONNX)",
    )
    add_force(parser)
    add_quiet(parser)
    return parser


def _export(args: argparse.Namespace) -> int:
    from ..export.pipeline import ExportOptions, export_model

    options = options_or_error(
        lambda: ExportOptions(
            model=args.variant,
            checkpoint=args.checkpoint,
            weights=args.weights,
            num_classes=args.num_classes,
            class_names=args.class_names,
            transform=transform_options(args),
            resolution=tuple(args.resolution) if args.resolution else None,
            precision=args.precision,
            batch=args.batch,
            opset=args.opset,
            output_dir=args.output_dir or ExportOptions.output_dir,
            io_dtype=args.io_dtype,
            exact_preprocess=args.exact_preprocess,
            input_format=args.input_format,
            force=args.force,
            seed=args.seed,
            features=args.features,
            feature_norm=args.feature_norm,
            softmax=args.softmax,
        )
    )
    calib = calibration_options(args)
    stream = progress(args)
    engine_dir = args.engine_dir or args.output_dir or Path("engines")
    engine = None if args.no_engine else planned_engine(options.onnx_path, engine_dir)
    _preflight_outputs(engine, args.triton_repo, options.onnx_path, args.force)
    result = export_model(options, stream, calib if options.quantized else None)
    print(export_summary(result.report, result.report_path))
    if "sensitivity" in result.report:
        print(sensitivity_table(result.report))
    served = result.onnx_path
    if engine is not None:
        served = build_after_export(result.onnx_path, engine, options.batch, args.force, stream)
    elif not args.no_engine:
        print(
            f"engine      no TensorRT installed here; build later with: "
            f"{shlex.join(['fastervit-build', str(result.onnx_path)])}"
        )
    if args.triton_repo:
        from ..triton import TritonOptions, write_model_repository

        folder = write_model_repository(served, args.triton_repo, TritonOptions(force=args.force))
        print(
            f"triton      {folder}  (serve: "
            f"{shlex.join(['tritonserver', '--model-repository', str(args.triton_repo)])})"
        )
    return 0


def _preflight_outputs(engine: Path | None, triton_repo: Path | None, onnx_path: Path, force: bool) -> None:
    """Fail in the first second when a later stage's output exists (the export's own are
    checked by its preflight)."""
    from ..artifacts import check_writable
    from ..sidecar import sidecar_path

    outputs = [engine, sidecar_path(engine)] if engine is not None else []
    if triton_repo is not None:
        served = engine or onnx_path
        outputs.append(triton_repo / served.stem / "config.pbtxt")
    check_writable(outputs, force)


def main(argv: Sequence[str] | None = None) -> int:
    return run(_export, parser, argv, "fastervit-export")


if __name__ == "__main__":
    sys.exit(main())
