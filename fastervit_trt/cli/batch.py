"""``fastervit-batch``: classify or embed image collections on Ray Data, into Parquet."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .common import (
    add_decoding,
    add_model_file,
    add_quiet,
    add_runtime_options,
    command_parser,
    number,
    positive,
    progress,
    run,
    runtime_options,
)

EXAMPLES = """\
examples:
  fastervit-batch photos/ --model export/faster_vit_0_224_fp32.onnx --output results/
  fastervit-batch 's3://bucket/photos/**/*.jpg' --model engines/faster_vit_0_224_fp16.engine \\
      --output s3://bucket/results/ --address auto --actors 8 --batch-size 64

output: a folder of Parquet parts (part-00000.parquet, ...), one row per file:
  path (string), error (string: the file's one-line error, else null), and
  a classifier's top-k, most probable first: index (list<int32>), name (list<string>),
    probability (list<float32>);
  a headless model's embedding, or a backbone's deepest stage averaged over H and W:
    embedding (list<float32>).
A re-run with the same --output processes only the files it does not hold yet. Exit
status 0 once every file has its row (undecodable ones as error rows).
"""


def parser() -> argparse.ArgumentParser:
    from ..batch.pipeline import DEFAULT_RESTARTS  # importing the package needs neither Ray nor pyarrow

    parser = command_parser(
        "fastervit-batch",
        EXAMPLES,
        "Classify or embed image files with an engine or ONNX file on Ray Data: the model loaded once per "
        "actor, its recorded preprocessing and class names, the answers written as Parquet parts as they come.",
    )
    parser.add_argument(
        "images",
        nargs="+",
        help="image files, folders (read recursively) or globs (* ? **), local or on any file system pyarrow "
        "opens (s3://, gs://, hdfs://, ...)",
    )
    add_model_file(parser, ".engine or .onnx, at the same path on every Ray node")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder (or URI) of the Parquet parts")
    ray_place = parser.add_mutually_exclusive_group()
    ray_place.add_argument(
        "--address", metavar="ADDRESS", help="an existing Ray cluster (auto, host:6379, ray://host:10001)"
    )
    ray_place.add_argument(
        "--cpus", type=positive, metavar="N", help="CPUs of the local Ray started without --address (default: all)"
    )
    parser.add_argument("--actors", type=positive, default=1, metavar="N", help="model actors (each loads the model)")
    parser.add_argument(
        "--max-restarts",
        type=number(int, 0),
        default=DEFAULT_RESTARTS,
        metavar="N",
        help="times an actor whose process dies is restarted and its batch retried before the run fails "
        "(a model that crashes on every batch ends the run; transient failures are retried)",
    )
    parser.add_argument(
        "--gpus-per-actor",
        type=number(float, 0),
        metavar="G",
        help="GPUs each actor takes (fractions share one; default: 1 for an .engine or an ONNX Runtime "
        "provider other than cpu asked by name, else 0)",
    )
    parser.add_argument(
        "--cpus-per-actor",
        type=number(float, 0, low_open=True),
        default=1.0,
        metavar="C",
        help="CPUs each actor takes (it decodes its files)",
    )
    parser.add_argument("--batch-size", type=positive, default=32, metavar="N", help="files per actor call")
    parser.add_argument(
        "--rows-per-part",
        type=positive,
        default=1000,
        metavar="N",
        help="rows per Parquet part (the last may hold fewer)",
    )
    parser.add_argument("--topk", type=positive, default=5, help="classes per image (classifiers)")
    add_decoding(parser)
    add_quiet(parser)
    add_runtime_options(parser)
    return parser


def _batch(args: argparse.Namespace) -> int:
    import ray

    from ..batch import predict_files
    from ..batch.pipeline import check_runtime

    runtime = runtime_options(args)
    check_runtime(runtime)  # refused before Ray starts
    # our progress counts files and a failed job is one line; the actors' logs stay in Ray's session folder
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    if args.address:
        ray.init(address=args.address, logging_level=logging.WARNING, log_to_driver=False)
    else:
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        summary = predict_files(
            args.images,
            args.model,
            args.output,
            actors=args.actors,
            gpus_per_actor=args.gpus_per_actor,
            cpus_per_actor=args.cpus_per_actor,
            batch_size=args.batch_size,
            topk=args.topk,
            rows_per_part=args.rows_per_part,
            exif_rotate=not args.no_exif_rotate,
            exact_preprocess=args.exact_preprocess,
            progress=progress(args),
            runtime=runtime,
            max_restarts=args.max_restarts,
        )
    finally:
        ray.shutdown()
    print(
        f"{summary.rows} files written to {args.output} ({summary.errors} errors, {len(summary.parts)} parts); "
        f"{summary.skipped} of {summary.files} were there already",
        file=sys.stderr,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(_batch, parser, argv, "fastervit-batch")


if __name__ == "__main__":
    sys.exit(main())
