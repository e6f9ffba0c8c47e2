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
from bench.gpu_serve import PARITY_TOL, SERVE_TARGETS, _targets
from tests.conftest import REPO, official_fixture_dir
from tests.test_export import G, exports  # noqa: F401 - fixtures of mixed_export
from tests.test_mixed_batch import N, mixed_export  # noqa: F401 - fixture

SERVE_OPS = {"novel_view", "interpolate", "orbit", "render_batch", "render_batch_mixed"}


@pytest.mark.slow
def test_dry_run_end_to_end(tmp_path, mixed_export):
    if official_fixture_dir() is None:
        pytest.fail("official EG3D fixture not found: set MY3DGEN_FIXTURES or place shared/ beside the checkout")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out), "GPU_WHEELS": str(tmp_path / "no_wheels"),
           "MY3DGEN_FIXTURES": str(official_fixture_dir()), "OMP_NUM_THREADS": "2"}
    # the serve section serves the session's mixed export (tests/test_mixed_batch.py) instead of making its own:
    # the ONNX export is most of the section's time on a CPU
    proc = subprocess.run(["bash", str(REPO / "scripts/gpu_check.sh"), "--dry-run", "--serve-export",
                           str(mixed_export)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert (out / "gpu_check.md").read_text().startswith("# GPU check (dry run")
    assert (out / "gpu_check.log").is_file()
    s = report["sections"]
    assert report["dry_run"] and report["config"]["preset"] == "tiny"
    assert list(s) == ["env", "parity", "serve", "forward", "lora_train", "mixed", "plane_lookup", "cudagraph",
                       "compile", "tensorrt"]
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
    assert [(r["dtype"], r["checkpointing"], r["batch"]) for r in steps] == [
        ("fp32", "off", 2), ("fp32", "on", 2), ("bf16", "on", 2), ("fp16", "on", 2)], steps
    assert all(r["step_median_s"] > 0 and r["trainable_parameters"] > 0 and r["plan_gib"] > 0 for r in steps), steps
    assert s["mixed"]["parity_passed"] and s["mixed"]["mixed_images_per_s"] > 0
    assert "CUDA" in s["cudagraph"]["skipped"]
    assert s["compile"]["rows"] and all("error" not in r for r in s["compile"]["rows"]), s["compile"]["rows"]
    assert "skipped" in s["tensorrt"] or "render" in s["tensorrt"]
    check_serve_section(s["serve"], (out / "gpu_check.md").read_text())


def check_serve_section(sv: dict, md: str) -> None:
    """The dry run's serve section: the in-process handler on the torch backend, batched, swapping, exact."""
    assert sv["path"].startswith("in-process handler") and sv["batch"] == N and sv["people"] == 2, sv
    assert "**Path: in-process handler" in md and "## serve" in md
    [row] = sv["rows"]
    assert row["precision"] == "fp32" and "error" not in row, row
    assert row["p50_ms"] > 0 and row["p90_ms"] >= row["p50_ms"] and row["encode_ms"] > 0
    assert row["same_views_per_s"] > 0 and row["mixed_views_per_s"] > 0 and row["mixed_over_same"] > 0
    # server-side batching: each batch of N views (one person, or N people) is one render run
    assert row["same_render_runs_per_batch"] == 1 and row["mixed_render_runs_per_batch"] == 1, row
    assert row["swap_copies"] > 0 and "swap_ms" in row  # alternating people copied into the adapter slots
    assert row["captures"] == 0 and row["graphs"] >= 4 and f"render:{N}:fp32:mixed" in row["graph_keys"]
    assert {p["op"] for p in sv["parity"]} == SERVE_OPS
    assert all(p["passed"] and max(p["vs_eager_fp32"].values()) <= PARITY_TOL["fp32"] for p in sv["parity"]), \
        sv["parity"]
    assert sv["parity_passed"] and sv["budget_passed"]
    assert [(b["status"], b["type"], b["ran"]) for b in sv["budget"]] == [(503, "budget_exceeded", False)]
    assert {t["target"] for t in sv["targets"]} == set(SERVE_TARGETS)
    assert all(t["fp32"]["result"] == "n/a (dry run)" for t in sv["targets"])


def test_serve_targets_pass_and_fail_on_cuda_only():
    rows = [{"precision": "fp32", "p50_ms": 37.0, "same_views_per_s": 160.0, "mixed_over_same": 0.95,
             "swap_ms": 0.2}, {"precision": "bf16", "p50_ms": 20.0, "same_views_per_s": 90.0,
                               "mixed_over_same": 0.7, "swap_ms": 2.0}]
    got = {t["target"]: {p: t[p]["result"] for p in ("fp32", "bf16")}
           for t in _targets(rows, None, torch.device("cuda"), dry=False)}
    assert got == {"p50_ms": {"fp32": "FAIL", "bf16": "pass"}, "views_per_s": {"fp32": "pass", "bf16": "FAIL"},
                   "mixed_over_same": {"fp32": "pass", "bf16": "FAIL"}, "swap_ms": {"fp32": "pass", "bf16": "FAIL"}}
    http = {"rows": [{"precision": "fp32", "p50_ms": 24.0, "same_views_per_s": 100.0, "mixed_over_same": 1.0}]}
    over_http = {t["target"]: t["fp32"] for t in _targets(rows, http, torch.device("cuda"), dry=False)}
    assert over_http["p50_ms"] == {"value": 24.0, "result": "pass"} and over_http["swap_ms"]["value"] == 0.2
    assert all(t["fp32"]["result"] == "n/a (CPU)" for t in _targets(rows, None, torch.device("cpu"), dry=False))


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
    serve = {"ok": True, "path": "in-process handler (no Java/TorchServe here)", "batch": 8, "parity_passed": True,
             "budget_passed": True, "rows": [{"precision": "fp16", "p50_ms": 21.0, "same_views_per_s": 160.0,
                                              "mixed_over_same": 0.93, "swap_ms": 0.3,
                                              "vram_per_cached_person_mib": 27.5}],
             "targets": [{"target": "p50_ms", "fp16": {"value": 21.0, "result": "pass"}}]}
    rerun = _gpu_report("Card X", mixed={"ok": True, "people": 8, "batch": 8, "mixed_images_per_s": 23.3,
                                         "same_person_images_per_s": 33.2, "mixed_over_same": 0.7,
                                         "max_abs_diff_sample_vs_single": 1e-6, "tolerance": 1e-4}, serve=serve)
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
    assert merged["section_run"] == {"env": 2, "mixed": 2, "serve": 2, "forward": 1}
    assert "Serving, torch backend (in-process handler (no Java/TorchServe here)): fp16: p50 21.0 ms" in text
    assert "Targets: p50_ms pass." in text
    assert "**Path: in-process handler (no Java" in (tmp_path / "gpu" / "card-x-2026-01-02.md").read_text()
    assert "different runs" not in text  # one mode only: nothing compared across runs
    graphs = {"ok": True, "rows": [{"op": "full", "dtype": "fp32", "batch": 1, "ms": 40.0, "images_per_s": 25.0}]}
    across = gpu_record.summary(gpu_record.merge([first, _gpu_report("Card X", cudagraph=graphs)]), "r.md", "d")
    assert "eager: run 1, CUDA graph: run 2" in across and "faster at batch 1" not in across
    with pytest.raises(SystemExit, match="different devices"):
        gpu_record.merge([first, _gpu_report("Card Y")])
    (tmp_path / "1" / "gpu_check.json").write_text(json.dumps({**rerun, "dry_run": True}))
    with pytest.raises(SystemExit, match="dry run"):
        gpu_record.main(dirs + ["--doc", str(doc)])
