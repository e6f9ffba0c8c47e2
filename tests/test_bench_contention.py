"""bench/contention.py (with bench/contention_workers.py and bench/cpu_signals.py): the load generator burns CPU,
the sides run interleaved in worker processes, the report has its structure (tiny preset, one repetition, on the
session's cached tiny export from tests/test_export.py)."""
import json
import time

import pytest

from bench.contention import markdown, run, verdict
from bench.contention_workers import LoadGenerator
from bench.cpu_signals import others_over, share_threads
from tests.test_export import G, exports  # noqa: F401 - fixtures (the session's tiny exports)


def test_share_threads_leaves_the_busy_cores_to_others():
    assert share_threads(0.0, 2) == 2 and share_threads(0.4, 2) == 2
    assert share_threads(0.6, 2) == 1 and share_threads(1.9, 2) == 1 and share_threads(5.0, 2) == 1
    assert share_threads(1.2, 8) == 7


def test_load_generator_burns_a_core_only_while_busy():
    gen = LoadGenerator(1)
    try:
        time.sleep(0.3)  # started, not busy
        gen.set_busy(1)
        seen = others_over(1.0)  # the generator is another process: /proc/stat sees it
        gen.set_busy(0)
        after = gen.stats()[0]["iterations"]
        time.sleep(0.3)
        gen.set_busy(0)
    finally:
        gen.close()
    st = gen.stats()[0]
    assert st["iterations"] == after > 0 and st["iterations_per_s"] > 1000
    assert st["cpu_share"] > 0.3 and seen > 0.3, (st, seen)


@pytest.mark.timeout(300)
def test_quick_run_reports_every_side_and_condition(tmp_path, exports):
    export = exports["merged_alice"]  # the torch backend serves it from its model directory, onnxruntime its graphs
    sides = ["onnxruntime", "torch-1t", "torch-share"]
    rep = run(export, sides, ["quiet", "load1"], 1, ["view"], tmp_path, log=lambda m: None)
    json.dumps(rep)  # JSON-ready
    assert {(r["side"], r["condition"]) for r in rep["results"]} == {(s, c) for s in sides for c in ("quiet", "load1")}
    assert all(r["ms"] > 0 and len(r["ms_all"]) == 1 for r in rep["results"])
    gen = rep["load_generator"][0]
    assert gen["iterations"] > 0 and gen["cpu_share"] > 0.2, gen  # the load really ran
    assert set(rep["signals"]) == {"quiet", "load1"} and "probe_ratio" in rep["signals"]["load1"]
    assert rep["image_diff"]["view"]["torch-share"] <= 1e-5 and rep["image_diff"]["view"]["onnxruntime"] <= 1e-3
    assert rep["workers"][0]["openmp_runtime"]  # which OpenMP torch loaded (libgomp on Linux wheels)
    v = verdict(rep, op="view")["load1"]
    assert set(v["sides"]) == {"torch-1t", "torch-share"} and v["onnxruntime_slowdown"] > 0
    text = "\n".join(markdown(rep))
    assert "novel view of cached planes" in text and "Load generator" in text and "torch-share" in text
