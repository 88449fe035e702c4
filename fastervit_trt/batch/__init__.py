"""Classify or embed image collections on Ray Data (``pip install 'fastervit-trt[ray]'``).

``predict_files(inputs, model, output)`` reads image files (folders, globs, files; local or
any file system pyarrow opens) with ``ray.data.read_binary_files``, runs them through
``Predictor`` actors (``map_batches``: the model loaded once per actor) and writes the
answers to ``output`` as Parquet parts ``part-00000.parquet``, ... as they stream back; a
re-run skips the files the output already holds. ``fastervit-batch`` is its command.

Each row (one per file):
    path         string               the file (as given: s3://bucket/key, /abs/path)
    error        string               its one-line error if it did not decode, else null
  a classifier, most probable first (null on an error row):
    index        list<int32>          top-k class indices
    name         list<string>         their class names
    probability  list<float32>        their probabilities
  a headless model (pooled embedding) or a backbone (its deepest stage, averaged over H, W):
    embedding    list<float32>

Ray and pyarrow load only when a run starts; importing this package needs neither.
"""

from .files import ImageFile, list_images
from .pipeline import Summary, predict_files
from .predictor import Predictor, schema

__all__ = ["ImageFile", "Predictor", "Summary", "list_images", "predict_files", "schema"]
