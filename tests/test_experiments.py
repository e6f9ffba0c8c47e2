"""The experiment pipeline of issue 14 (evaluation/experiments.py) end to end at smoke size: tables, figures and doc.

The numbers of a smoke run mean nothing (2 training steps); this checks that every row, table and figure is
produced, and every number is finite and in its range. The experiment's conclusions live in docs/EXPERIMENTS.md.
"""
from __future__ import annotations

import json
import math

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    from evaluation.experiments import SMOKE, ExperimentConfig, run_experiment
    from generator.model_dir import load_model_dir
    work = tmp_path_factory.mktemp("experiment")
    cfg = ExperimentConfig(**SMOKE)
    G = load_model_dir(REPO / "models" / "heads")
    logs: list[str] = []
    result = run_experiment(G, work, cfg, log=logs.append)
    return work, cfg, result, logs


@pytest.mark.slow
def test_smoke_run_fills_every_row_with_finite_numbers_in_range(smoke):
    from evaluation.experiments import ROWS
    from evaluation.experiments_report import summarize
    _, cfg, result, _ = smoke
    s = summarize(result)
    assert list(s["rows"]) == list(cfg.rows) == list(ROWS)
    for name, metrics in s["rows"].items():
        for metric, (mean, std, n) in metrics.items():
            assert n == cfg.people and math.isfinite(mean) and std >= 0, (name, metric)
            if metric.endswith(("dists", "lpips")) or metric == "gt_depth":
                assert 0 <= mean <= 2, (name, metric, mean)
            elif metric == "gt_psnr":
                assert 0 < mean < 100, (name, metric, mean)
            else:  # ID scores are cosine similarities
                assert -1 <= mean <= 1, (name, metric, mean)
    assert s["parameters"]["lora_sym"] < s["parameters"]["full"] < s["parameters"]["pti"]
    for curves in s["curves"].values():
        assert len(curves["train"]) == len(curves["test"]) == cfg.weights
    sizes = s["sizes"]["lora_sym"]
    assert sorted(sizes) == sorted(cfg.reference_sizes)


@pytest.mark.slow
def test_smoke_run_resumes_and_writes_the_doc(smoke, tmp_path):
    from evaluation.experiments import run_experiment
    from generator.model_dir import load_model_dir
    script = _script()
    work, cfg, result, _ = smoke
    logs: list[str] = []
    again = run_experiment(load_model_dir(REPO / "models" / "heads"), work, cfg, log=logs.append)
    assert any("results exist, skipped" in m for m in logs)
    assert again["people"] == json.loads(json.dumps(result["people"]))
    doc = script.write_docs(result, tmp_path, "python scripts/experiments.py run --smoke")
    text = doc.read_text()
    for heading in ("Table 1", "Tables 2 and 3", "Table 4", "ours / the paper's", "Figure 3", "Figure 5"):
        assert heading in text, heading
    assert "nan" not in text.lower().replace("mean", "")
    assert (tmp_path / "experiments" / "figure3_id_vs_weight.png").stat().st_size > 1000
    assert (tmp_path / "experiments" / "figure5_reference_size.png").stat().st_size > 1000


def test_config_refuses_bad_settings():
    from evaluation.experiments import ExperimentConfig
    with pytest.raises(ValueError, match="rows"):
        ExperimentConfig(rows=("pti", "nope")).validate()
    with pytest.raises(ValueError, match="profile_test_photos"):
        ExperimentConfig(test_photos=2, profile_test_photos=2).validate()
    with pytest.raises(ValueError, match="first_person"):
        ExperimentConfig(first_person=0).validate()
    with pytest.raises(ValueError, match="inversion_space"):
        ExperimentConfig(inversion_space="x").validate()


def test_work_folder_is_refused_for_another_model_or_other_settings(tmp_path):
    from evaluation.experiments import MADE_WITH, claim_work
    from generator.model_dir import build_generator
    G, other = build_generator(preset_name="tiny", seed=0), build_generator(preset_name="tiny", seed=1)
    claim_work(tmp_path, G, {"iterations": 150, "people": 5})
    claim_work(tmp_path, G, {"iterations": 150, "people": 7})  # more people only add results
    assert json.loads((tmp_path / MADE_WITH).read_text())["config"]["people"] == 5
    with pytest.raises(ValueError, match="made with model"):
        claim_work(tmp_path, other, {"iterations": 150, "people": 5})
    with pytest.raises(ValueError, match=r"other settings \(iterations\)"):
        claim_work(tmp_path, G, {"iterations": 2500, "people": 5})
    older, logs = tmp_path / "older", tmp_path / "logs"
    (older / "results").mkdir(parents=True)
    (older / "results" / "person_1.json").write_text("{}")
    with pytest.raises(ValueError, match="results/person_1.json but no made_with.json"):
        claim_work(older, G, {})
    (logs / "results").mkdir(parents=True)
    (logs / "worker0.out").write_text("a log is not a result")
    claim_work(logs, G, {})  # nothing a resumed run would reuse: claimed
    assert (logs / MADE_WITH).is_file()


def test_reference_and_test_poses_are_ffhq_like_and_test_appearances_unseen():
    from evaluation.experiments import PROFILE_YAW, TEST_PHOTO_IDS, reference_poses, test_poses
    ref = reference_poses(1_000_200, 10)
    profiles = [abs(y) for y, _ in ref if abs(y) > 0.5]
    assert len(profiles) == 2 and all(PROFILE_YAW[0] <= y <= PROFILE_YAW[1] for y in profiles)
    assert all(abs(y) <= 0.45 for y, _ in ref if abs(y) <= 0.5)
    test = test_poses(1_000_200, 5, 2)
    assert [abs(y) > 0.5 for y, _ in test] == [False, False, False, True, True]
    from evaluation.experiments import ExperimentConfig
    assert TEST_PHOTO_IDS >= max(ExperimentConfig().reference_sizes)  # reference photo k uses appearance id k


def _script():
    import importlib.util
    spec = importlib.util.spec_from_file_location("experiments_script", REPO / "scripts" / "experiments.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
