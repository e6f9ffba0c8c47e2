"""scripts/gpu_check.sh --dry-run end to end on the CPU (the same code the GPU machine runs), plus its helpers."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from bench import gpu_record
from bench.gpu_check import CheckConfig, Report, markdown, run_check, timed
from tests.conftest import REPO, official_fixture_dir


@pytest.mark.slow
def test_dry_run_end_to_end(tmp_path):
    if official_fixture_dir() is None:
        pytest.fail("official EG3D fixture not found: set MY3DGEN_FIXTURES or place shared/ beside the checkout")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out), "GPU_WHEELS": str(tmp_path / "no_wheels"),
           "MY3DGEN_FIXTURES": str(official_fixture_dir()), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(["bash", str(REPO / "scripts/gpu_check.sh"), "--dry-run"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert (out / "gpu_check.md").read_text().startswith("# GPU check (dry run")
    assert (out / "gpu_check.log").is_file()
    s = report["sections"]
    assert report["dry_run"] and report["config"]["preset"] == "tiny"
    assert list(s) == ["env", "parity", "forward", "lora_train", "mixed", "plane_lookup", "cudagraph", "compile",
                       "tensorrt"]
    lookup = s["plane_lookup"]["rows"]
    assert [r["op"] for r in lookup] == ["novel/grid_sample", "novel/gather"] * 2 and all("ms" in r for r in lookup)
    assert all(r["max_abs_diff_vs_fp32"] <= 1e-5 for r in lookup[1::2]), lookup
    assert all(sec["ok"] for sec in s.values()), {k: v.get("error") for k, v in s.items() if not v["ok"]}
    assert s["parity"]["passed"] and max(s["parity"]["max_abs_diff_vs_official"].values()) < 1e-4
    rows = s["forward"]["rows"]
    assert {(r["op"], r["dtype"], r["batch"]) for r in rows} == {
        (op, dt, b) for op in ("full", "novel") for dt in ("fp32", "bf16") for b in (1, 2)}
    assert all("error" not in r and r["ms"] > 0 for r in rows), rows
    bf16 = [r["max_abs_diff_vs_fp32"] for r in rows if r["dtype"] == "bf16"]
    assert all(0 < d < 0.1 for d in bf16), bf16  # bf16 really ran, and stayed close
    steps = s["lora_train"]["rows"]
    assert [r["batch"] for r in steps] == [2] and steps[0]["step_median_s"] > 0, steps
    assert steps[0]["trainable_parameters"] > 0
    assert s["mixed"]["parity_passed"] and s["mixed"]["mixed_images_per_s"] > 0
    assert "CUDA" in s["cudagraph"]["skipped"]
    assert s["compile"]["rows"] and all("error" not in r for r in s["compile"]["rows"]), s["compile"]["rows"]
    assert "skipped" in s["tensorrt"] or "render" in s["tensorrt"]


def test_timed_excludes_warmup_and_reports_the_median():
    calls = []
    t = timed(lambda: calls.append(1), torch.device("cpu"), warmup=2, repeats=5)
    assert len(calls) == 7 and t["repeats"] == 5 and t["warmup"] == 2
    assert 0 <= t["min_s"] <= t["median_s"]


def test_a_failing_section_is_recorded_and_the_rest_runs(tmp_path):
    report = Report(tmp_path, dry_run=True, config={})
    report.record("env", lambda: {"device": "cpu"})
    report.record("broken", lambda: 1 / 0)
    report.record("after", lambda: {"rows": [{"op": "full", "dtype": "fp32", "batch": 1, "ms": 2.0}]})
    saved = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]
    assert not saved["broken"]["ok"] and "ZeroDivisionError" in saved["broken"]["error"]
    assert saved["after"]["ok"]
    md = markdown(report.to_dict())
    assert "FAILED: `ZeroDivisionError" in md and "| full | fp32 | 1 | 2 |" in md


def test_sections_option_runs_only_the_named_sections(tmp_path):
    report = Report(tmp_path, dry_run=True, config={}, only=("env", "mixed"))
    ran = []
    for name in ("env", "parity", "mixed"):
        report.record(name, lambda name=name: ran.append(name) or {})
    assert ran == ["env", "mixed"]
    assert list(json.loads((tmp_path / "gpu_check.json").read_text())["sections"]) == ["env", "mixed"]
    with pytest.raises(SystemExit, match="unknown section"):
        run_check(CheckConfig.dry_run(), tmp_path, dry_run=True, only=("env", "mixd"))


def _gpu_report(gpu: str, **sections) -> dict:
    return {"dry_run": False, "config": {}, "elapsed_s": 1.0,
            "sections": {"env": {"ok": True, "gpu": gpu, "tensorrt": "not importable"}, **sections}}


def test_gpu_record_merges_reruns_and_refuses_what_is_not_one_gpu_run(tmp_path):
    first = _gpu_report("Card X", mixed={"ok": False, "error": "RuntimeError: devices"},
                        forward={"ok": True, "rows": [{"op": "full", "dtype": "fp32", "batch": 1, "ms": 240.0,
                                                       "images_per_s": 4.1, "max_abs_diff_vs_fp32": 0.0}]})
    rerun = _gpu_report("Card X", mixed={"ok": True, "people": 8, "batch": 8, "mixed_images_per_s": 23.3,
                                         "same_person_images_per_s": 33.2, "mixed_over_same": 0.7,
                                         "max_abs_diff_sample_vs_single": 1e-6, "tolerance": 1e-4})
    dirs = []
    for i, r in enumerate((first, rerun)):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "gpu_check.json").write_text(json.dumps(r))
        dirs.append(str(tmp_path / str(i)))
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    assert gpu_record.main(dirs + ["--doc", str(doc), "--date", "2026-01-02"]) == 0
    text = doc.read_text()
    assert "## Other\n\nkept" in text and "**Card X**" in text
    assert "| full | fp32 | 1 | 240.0 |" in text and "23.3 images/s vs 33.2" in text and "Failed sections" not in text
    merged = json.loads((tmp_path / "gpu" / "card-x-2026-01-02.json").read_text())
    assert merged["sections"]["mixed"]["ok"] and merged["sections"]["forward"]["ok"] and merged["runs"] == 2
    assert merged["section_run"] == {"env": 2, "mixed": 2, "forward": 1}
    assert "different runs" not in text  # one mode only: nothing compared across runs
    graphs = {"ok": True, "rows": [{"op": "full", "dtype": "fp32", "batch": 1, "ms": 40.0, "images_per_s": 25.0}]}
    across = gpu_record.summary(gpu_record.merge([first, _gpu_report("Card X", cudagraph=graphs)]), "r.md", "d")
    assert "eager: run 1, CUDA graph: run 2" in across and "faster at batch 1" not in across
    with pytest.raises(SystemExit, match="different devices"):
        gpu_record.merge([first, _gpu_report("Card Y")])
    (tmp_path / "1" / "gpu_check.json").write_text(json.dumps({**rerun, "dry_run": True}))
    with pytest.raises(SystemExit, match="dry run"):
        gpu_record.main(dirs + ["--doc", str(doc)])
