"""report/pareto.py and the Pareto front: several runs on one accuracy-vs-flash chart."""

from __future__ import annotations

import json

from mnist_tflite.cli import main
from mnist_tflite.report import tables as report_mod
from tests.conftest import run_cli


def test_pareto_front():
    pts = [(10, 90.0), (20, 95.0), (30, 94.0), (5, 80.0), (20, 96.0)]
    assert sorted(report_mod.pareto_front(pts)) == [(5, 80.0), (10, 90.0), (20, 96.0)]


def test_pareto_merges_architectures_and_picks_per_budget(tmp_path):
    _fake_run(tmp_path / "seed", "seed", [("float32", 143_000, 0.987), ("int8", 42_000, 0.9871)])
    _fake_run(tmp_path / "tiny", "tiny", [("int8", 9_000, 0.978), ("float32", 19_000, 0.977)])
    code = main(["pareto", str(tmp_path / "seed"), str(tmp_path / "tiny"), "--out", str(tmp_path / "p")])
    assert code == 0
    doc = json.loads((tmp_path / "p" / "pareto.json").read_text())
    assert doc["pareto_front"] == ["tiny/int8", "seed/int8"]  # tiny/float32 and seed/float32 are beaten
    md = (tmp_path / "p" / "pareto.md").read_text()
    assert "| ≤ 8 KB | nothing fits |" in md
    assert "| ≤ 10 KB | tiny/int8 | 97.80 % | 9,000 | 4,000 |" in md
    assert "| ≤ 48 KB | seed/int8 | 98.71 % | 42,000 | 4,000 |" in md
    assert "≤ 64 KB" not in md  # larger budgets would choose the same
    assert (tmp_path / "p" / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["pareto", str(tmp_path / "seed"), "--out", str(tmp_path / "p")]) == 2  # exists, no --force


def test_pareto_on_a_directory_without_report_exits_2(tmp_path):
    res = run_cli("pareto", str(tmp_path), "--out", str(tmp_path / "p"))
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "no report.json" in res.stderr


def _fake_run(path, arch, variants):
    path.mkdir()
    rows = [
        {"name": n, "status": "ok", "size_bytes": s, "flash_bytes": s, "arena_bytes": 4000, "accuracy": a}
        for n, s, a in variants
    ]
    report = {"train": {"config": {"arch": arch}}, "variants": rows}
    (path / "report.json").write_text(json.dumps(report))


def test_pareto_lists_what_it_left_out_and_states_its_rules(tmp_path):
    _fake_run(tmp_path / "tiny", "tiny", [("int16x8", 5_000, 0.9167), ("float32", 16_000, 0.9170)])
    report = json.loads((tmp_path / "tiny" / "report.json").read_text())
    report["variants"].append({"name": "float16", "status": "ok", "flash_bytes": 8_000, "accuracy": 0.9170})
    report["variants"].append({"name": "int4", "status": "failed", "error": "converter refused"})
    (tmp_path / "tiny" / "report.json").write_text(json.dumps(report))
    assert main(["pareto", str(tmp_path / "tiny"), "--out", str(tmp_path / "p")]) == 0
    md = (tmp_path / "p" / "pareto.md").read_text()
    assert "tiny/float16 (does not run in TFLM)" in md and "tiny/int4 (converter refused)" in md
    assert "KB = 1,024 bytes" in md and "within 0.05 points" in md  # why int16x8 beats float32 here
    assert "| ≤ 8 KB | tiny/int16x8 | 91.67 % |" in md
    doc = json.loads((tmp_path / "p" / "pareto.json").read_text())
    assert {e["name"] for e in doc["excluded"]} == {"tiny/float16", "tiny/int4"}


def test_wilson_interval_is_about_a_fifth_of_a_point_at_10000_images():
    from mnist_tflite.report.plots import wilson_interval

    lo, hi = wilson_interval(0.987, 10_000)
    assert lo < 0.987 < hi and 0.0040 < hi - lo < 0.0048  # ±0.22 points
    assert wilson_interval(1.0, 100)[1] == 1.0 and wilson_interval(0.0, 100)[0] == 0.0
