"""``export_model`` is the one entry point for every precision."""

import pytest

from fastervit_trt.errors import OptionsError
from fastervit_trt.export import pipeline
from fastervit_trt.export.pipeline import CalibrationOptions, ExportOptions, export_model


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_quantized_precisions_go_through_the_quantized_driver(precision, monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(
        pipeline, "export_quantized", lambda options, calib, stream, timer: seen.append((options, calib, timer))
    )
    options = ExportOptions(precision=precision, output_dir=tmp_path)
    export_model(options)
    calib, timer = CalibrationOptions(images=16), object()
    export_model(options, calibration=calib, timer=timer)
    assert seen == [(options, CalibrationOptions(), None), (options, calib, timer)]


def test_calibration_settings_for_a_float_export_are_refused(tmp_path):
    with pytest.raises(OptionsError, match="calibration settings apply to int8 / fp8 exports, not fp16"):
        export_model(ExportOptions(output_dir=tmp_path), calibration=CalibrationOptions())
    assert not any(tmp_path.iterdir())
