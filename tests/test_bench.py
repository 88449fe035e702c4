"""bench/export_all.py in its smoke size: the table the README quotes keeps running."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_export_all_smoke(tmp_path):
    out = tmp_path / "rows.json"
    child = subprocess.run([sys.executable, str(ROOT / "bench" / "export_all.py"), "--models", "faster_vit_digits",
                            "--precisions", "fp32", "int8", "--json", str(out)],
                           capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert child.returncode == 0, child.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["precision"]) for r in rows] == [("faster_vit_digits", "fp32"), ("faster_vit_digits", "int8")]
    for row in rows:
        assert row["passed"] and row["within_bound"] and row["nodes"] > 50
        assert 0 < row["peak_rss_bytes"] < 4e9 and row["parameters"] > 5e5
    assert "| faster_vit_digits | 128x128 | fp32 |" in child.stdout
    assert out.with_suffix(".md").read_text().count("faster_vit_digits") == 2
