"""bench/speed.py: the original code runs from this repository's history, cells compare images, targets are judged."""
import subprocess
from pathlib import Path

import pytest

from bench.speed import ORIGINAL_COMMIT, Cell, markdown, run_matrix, target_lines

REPO = Path(__file__).resolve().parents[1]


def _cell(allocator, formulation, full_ms, view_ms, threads=2):
    return Cell("m", allocator, threads, formulation, full_ms, view_ms, None, None, None, 100.0, "", 0.0)


def test_targets_are_judged_from_the_best_allocator_and_the_original_with_glibc():
    cells = [_cell("system", "original", 6000, 3600), _cell("system", "previous", 3000, 3000),
             _cell("system", "fast", 1950, 1300), _cell("jemalloc", "fast", 1800, 1150),
             _cell("jemalloc", "fast-bf16", 1100, 500)]
    fast, bf16 = target_lines(cells)
    assert "full 1.80 s (jemalloc; target <= 1.9 s: met)" in fast
    assert "view 1.15 s (jemalloc; target <= 1.2 s: met)" in fast
    assert "3.33x / 3.13x the original code with glibc (target >= 3x: met)" in fast
    assert "full 1.10 s (jemalloc; target <= 1.0 s: not met)" in bf16 and "5.45x / 7.20x" in bf16
    rows = markdown(cells)
    assert rows[2].startswith("| m | system | 2 | original | 6,000 | 3,600 |") and "| 1.00x / 1.00x |" in rows[2]


@pytest.mark.skipif(subprocess.run(["git", "cat-file", "-e", ORIGINAL_COMMIT], cwd=REPO).returncode != 0,
                    reason=f"commit {ORIGINAL_COMMIT} not in this clone's history (shallow clone)")
def test_original_code_runs_beside_todays_and_renders_the_same_image(tmp_path):
    cells = run_matrix("tiny", 1, (1,), ("system",), ("original", "previous", "fast"), tmp_path, log=lambda m: None)
    by = {c.formulation: c for c in cells}
    assert by["previous"].max_image_diff == 0.0
    assert by["original"].max_image_diff <= 1e-6  # the previous formulation is the original renderer's math
    assert by["fast"].max_image_diff <= 1e-5
    assert all(c.full_ms > 0 and c.view_ms > 0 and c.render_ms > 0 for c in cells)
