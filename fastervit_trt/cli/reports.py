"""The closing tables ``fastervit-export`` prints."""

from __future__ import annotations

import shlex
from pathlib import Path


def sensitivity_table(report: dict, rows: int = 15) -> str:
    """The most INT8-sensitive layers, and the mixed-precision choice when a budget was set."""
    name = report["precision"].upper()
    lines = [
        f"\n{name} sensitivity (only that layer quantized, vs FP32; {len(report['sensitivity'])} layers, "
        f"most sensitive first):",
        f"  {'cosine':>9s} {'top-1 %':>8s}  layer",
    ]
    top1 = lambda r: (
        f"{r['top1_agreement']:8.2f}" if r["top1_agreement"] is not None else f"{'-':>8s}"
    )  # backbones: none
    lines += [f"  {r['mean_cosine']:9.6f} {top1(r)}  {r['layer']}" for r in report["sensitivity"][:rows]]
    mixed = report.get("mixed_precision")
    if mixed:
        lines.append(
            f"mixed precision: {mixed['int8_layers']} of {mixed['layers']} layers stay {name}, "
            f"{len(mixed['excluded'])} left in FP16; top-1 agreement {mixed['top1_agreement']:.2f} % "
            f"(budget: drop <= {mixed['budget_points']} points)"
        )
    return "\n".join(lines)


def export_summary(report: dict, report_path: Path) -> str:
    """The closing table of ``fastervit-export``."""
    onnx_info = report["onnx"]
    shape = report["input"]["shape"]
    height, width = report["preprocess"]["input_size"]
    low, opt, high = report["batch_profile"]
    dims = "x".join(str(v) for v in shape[1:])
    trtexec = shlex.join(
        [
            "trtexec",
            f"--onnx={onnx_info['path']}",
            "--stronglyTyped",
            f"--minShapes=input:{low}x{dims}",
            f"--optShapes=input:{opt}x{dims}",
            f"--maxShapes=input:{high}x{dims}",
            f"--saveEngine={Path(onnx_info['path']).with_suffix('.engine').name}",
        ]
    )
    weights = "RANDOM (seeded)" if report["random_init"] else _weights_line(report["weights"])
    rows = [
        ("model", f"{report['model']}  {height}x{width}  weights: {weights}"),
        (
            "input",
            f"{report['input']['name']} ({'x'.join(map(str, shape))}): {report['input'].get('format', 'float32 NCHW')}",
        ),
        ("outputs", ", ".join(f"{o['name']} ({'x'.join(map(str, o['shape']))})" for o in report["outputs"])),
        *([("classes", _classes_line(report))] if report["arch"]["num_classes"] else []),
        ("preprocess", _preprocess_line(report)),
        (
            "onnx",
            f"{onnx_info['path']}  ({onnx_info['bytes'] / 1e6:.1f} MB, {onnx_info['nodes']} "
            f"nodes, opset {onnx_info['opset']}, batch {low}..{high})",
        ),
        ("report", str(report_path)),
        *([("validation", report["validation"]["verdict"])] if "validation" in report else []),
        *(
            [
                (
                    "cache",
                    f"{report['quantization']['cache']}  ("
                    f"{'reused' if report['quantization']['cache_reused'] else report['quantization']['method']})",
                ),
                ("accuracy", report["accuracy"]["summary"]),
            ]
            if "quantization" in report
            else []
        ),
        *([("speed", report["speed"]["summary"])] if "speed" in report else []),
        *([("search", _search_line(report["speed_search"]))] if "speed_search" in report else []),
        ("time", f"{sum(report['seconds'].values()):.1f} s"),
        *([("trtexec", trtexec)] if (report.get("quantization") or {}).get("target", "tensorrt") == "tensorrt" else []),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _weights_line(loaded: dict) -> str:
    """``ckpt.pth.tar [state_dict_ema: 406 tensors, 31.4 M parameters; arch ..., epoch 310]``."""
    where = loaded["key"] or "top level"
    facts = [f"{where}: {loaded['tensors']} tensors, {loaded['parameters'] / 1e6:.1f} M parameters"]
    facts += [f"{k} {loaded[k]}" for k in ("arch", "epoch") if loaded.get(k) is not None]
    return f"{loaded['path']} [{'; '.join(facts)}]"


def _classes_line(report: dict) -> str:
    """``10: cat, dog, bird, fish, ... (--class-names)``."""
    from ..runtime.labels import model_class_names

    count = report["arch"]["num_classes"]
    names = model_class_names(report, count)
    shown = ", ".join(names[:4]) + (", ..." if count > 4 else "")
    source = report.get("class_names_from") or "--class-names"
    return f"{count}: {shown}" + (f"  ({source})" if report.get("class_names") else "")


def _preprocess_line(report: dict) -> str:
    """``bicubic, center crop_pct 0.875, mean [...], std [...] (mean, std from the checkpoint's args)``."""
    p, sources = report["preprocess"], report.get("preprocess_from") or {}
    text = f"{p['interpolation']}, {p['crop_mode']} crop_pct {p['crop_pct']:g}, mean {p['mean']}, std {p['std']}"
    by_source: dict[str, list[str]] = {}
    for name, source in sources.items():
        by_source.setdefault(source, []).append(name)
    said = [f"{', '.join(names)} from the {where}" for where, names in by_source.items()]
    return text + (f"  ({'; '.join(said)})" if said else "")


def _search_line(search: dict) -> str:
    """``kept levels.0, levels.1; dropped levels.3 attention (no gain on onnxruntime ... at batch 8)``."""
    kept = ", ".join(search["kept"]) or "none"
    dropped = ", ".join(search["dropped"]) or "none"
    return (
        f"--speed-search kept Q/DQ in {kept}; dropped {dropped} (each kept region ran at least "
        f"{search['min_gain']:.2f}x faster with it on {search['runtime']} at batch {search['batch']}; "
        f"chosen: {search['chosen']})"
    )
