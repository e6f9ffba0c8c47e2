"""The one-sided symmetry experiment (evaluation/symmetry_experiment.py) and identity verification
(evaluation/verification.py): reference sets, paired statistics, thresholds, and a smoke run through the script.

A smoke run's numbers mean nothing (2 training steps); the experiment's conclusions live in docs/SYMMETRY.md.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from evaluation.symmetry_experiment import REGIONS, SET_KINDS, SymmetryConfig, paired, reference_poses, work_units
from evaluation.verification import cached_threshold, pair_scores, roc_auc, tar_at_far, threshold_at_far
from tests.conftest import REPO


def test_one_sided_sets_show_one_side_and_balanced_sets_mirror_the_same_yaws():
    cfg = SymmetryConfig()
    one = reference_poses(1_000_300, "one_sided", 10, cfg)
    both = reference_poses(1_000_300, "balanced", 10, cfg)
    assert all(cfg.yaw_min - 1e-9 <= y <= cfg.yaw_max + 1e-9 for y, _ in one)
    assert sorted(abs(y) for y, _ in both) == pytest.approx(sorted(y for y, _ in one))
    assert sum(y < 0 for y, _ in both) == 5 and [p for _, p in one] == [p for _, p in both]
    with pytest.raises(ValueError, match="kind"):
        reference_poses(1, "left", 3, cfg)
    with pytest.raises(ValueError, match="first_person"):
        SymmetryConfig(first_person=0).validate()
    with pytest.raises(ValueError, match="rows"):
        SymmetryConfig(rows=("pti",)).validate()


def test_paired_differences_and_their_standard_error():
    people = [{"sets": {"one_sided": {"lora": {"frontal": {"lpips": [0.2, 0.4]}},
                                      "lora_sym": {"frontal": {"lpips": [0.1, 0.3]}}}}},
              {"sets": {"one_sided": {"lora": {"frontal": {"lpips": [0.5]}},
                                      "lora_sym": {"frontal": {"lpips": [0.2]}}}}}]
    e = paired(people, "one_sided", "frontal", "lora", "lora_sym")
    assert e["per_person"] == pytest.approx([-0.1, -0.3])
    assert e["mean"] == pytest.approx(-0.2) and e["se"] == pytest.approx(0.1) and e["z"] == pytest.approx(-2.0)


def test_thresholds_at_a_false_accept_rate():
    rng = np.random.default_rng(0)
    impostor = rng.normal(0.0, 0.1, 100_000)
    genuine = rng.normal(0.5, 0.1, 1000)
    t = threshold_at_far(impostor, 1e-2)
    assert (impostor > t).mean() == pytest.approx(1e-2, abs=1e-3)
    assert tar_at_far(genuine, impostor, 1e-2) > 0.9 and roc_auc(genuine, impostor) > 0.99
    assert roc_auc(impostor[:1000], impostor[1000:2000]) == pytest.approx(0.5, abs=0.05)
    e = np.eye(3)[[0, 0, 1, 2]]
    g, i = pair_scores(e, np.array([0, 0, 1, 1]))
    assert g.tolist() == [1.0, 0.0] and i.tolist() == [0.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="far"):
        threshold_at_far(impostor, 0.0)


class _CountingEncoder:
    """Embeds an image as its mean colour (unit length) and counts the images it saw."""

    def __init__(self):
        self.images = 0

    def embed(self, images):
        self.images += len(images)
        e = images.mean((2, 3)).double().numpy() + 1.5
        return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_threshold_is_calibrated_once_and_again_for_another_far(tmp_path):
    enc, path = _CountingEncoder(), tmp_path / "t" / "threshold.json"
    first = cached_threshold(path, enc, far=0.1, people=3, log=lambda m: None)
    assert enc.images == 3 * 4 and json.loads(path.read_text())["value"] == first.value
    assert first.impostor_pairs == 12 * 11 // 2 - 3 * 6 and first.people == 3  # all pairs - genuine pairs
    assert cached_threshold(path, enc, far=0.1, people=3, log=lambda m: None) == first and enc.images == 12
    other = cached_threshold(path, enc, far=0.2, people=3, log=lambda m: None)
    assert enc.images == 24 and other.far == 0.2 and other.value <= first.value


@pytest.mark.slow
def test_smoke_run_through_the_script_fills_every_region_and_resumes(tmp_path):
    args = [sys.executable, str(REPO / "scripts" / "experiments.py"), "symmetry", "--smoke", "--work",
            str(tmp_path / "work"), "--docs", str(tmp_path / "docs"), "--threads", "2"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    result = json.loads((tmp_path / "docs" / "experiments" / "symmetry.json").read_text())
    assert len(result["people"]) == 2 and result["threshold"]["people"] == 6
    assert -1 <= result["threshold"]["value"] <= 1
    for person in result["people"]:
        assert set(person["sets"]) == set(SET_KINDS)
        for kind in SET_KINDS:
            assert set(person["sets"][kind]) == {"w_inversion", "lora", "lora_sym"}
            for row in person["sets"][kind].values():
                for region in REGIONS:
                    scores = row[region]
                    assert len(scores["lpips"]) == len(scores["verified"]) == 3 * len(REGIONS[region])
                    assert all(0 <= v <= 2 for v in scores["lpips"]) and all(math.isfinite(v) for v in scores["psnr"])
                    assert all(isinstance(v, bool) for v in scores["verified"])
    doc = (tmp_path / "docs" / "SYMMETRY.md").read_text()
    assert "one-sided reference set" in doc and "(LoRA + L_sym) − LoRA" in doc and "FAR 0.01" in doc
    assert "## Why: what L_sym sees" in doc and len(result["diagnostics"]) == 2 * len(SET_KINDS)
    assert {(d["seed"], d["kind"]) for d in result["diagnostics"]} == {
        (p["seed"], kind) for p in result["people"] for kind in SET_KINDS}
    for d in result["diagnostics"]:                                  # the truth row: identity error 0 by definition
        assert all(abs(v) < 1e-5 for v in d["scores"]["truth"]["id_error_unseen"])
        assert d["sym_curve"]["logged"] >= 1 and set(d["gradients"]) == {"lora", "lora_sym"}
    from evaluation import symmetry_experiment as sx                 # the resume, in this process (no re-import)
    from generator.model_dir import load_model_dir
    said: list[str] = []
    first_seed, second_seed = (p["seed"] for p in result["people"])
    pair = ("lora", "lora_sym")
    with sx._hold(sx.unit_lock(tmp_path / "work", second_seed, "balanced", pair)) as held:  # as another worker would
        assert held
        again = sx.run(load_model_dir(REPO / "models" / "heads"), tmp_path / "work", SymmetryConfig(**sx.SMOKE),
                       log=said.append)
    assert said.count(f"person {first_seed}, one_sided: lora, lora_sym done, skipped") == 1
    assert said.count(f"person {second_seed}, balanced: another worker is training lora, lora_sym, skipped") == 1
    assert sum("skipped" in m for m in said) == 4 and json.loads(json.dumps(again["people"])) == result["people"]


def test_work_units_answer_the_question_first():
    cfg = SymmetryConfig(people=3)
    seeds = cfg.person_seeds()
    units = work_units(cfg)
    pair = ("lora", "lora_sym")
    assert units[:3] == [(s, "one_sided", pair) for s in seeds] and units[3:6] == [(s, "balanced", pair) for s in seeds]
    assert units[6:] == [(s, kind, ("full",)) for kind in SET_KINDS for s in seeds]


def test_summary_of_a_partial_run_counts_the_people_of_each_row():
    from evaluation.symmetry_experiment import summarize
    views = {region: {"lpips": [0.2] * 2, "psnr": [20.0] * 2, "verified": [True, False]} for region in REGIONS}
    better = {region: dict(v, lpips=[0.1] * 2) for region, v in views.items()}
    people = [{"seed": 1, "sets": {"one_sided": {"w_inversion": views, "lora": views, "lora_sym": better}},
               "final_losses": {}},
              {"seed": 2, "sets": {"one_sided": {"w_inversion": views, "lora": views}}, "final_losses": {}}]
    s = summarize({"config": {"rows": ["lora", "lora_sym", "full"]}, "people": people})
    assert list(s["table"]) == ["one_sided"] and list(s["sym_effect"]) == ["one_sided"]   # nobody has balanced yet
    assert {row: v["people"] for row, v in s["table"]["one_sided"]["frontal"].items()} == {
        "w_inversion": 2, "lora": 2, "lora_sym": 1}
    effect = s["sym_effect"]["one_sided"]["yaw < 0"]["lpips"]      # only the person with both rows is paired
    assert effect["people"] == 1 and effect["mean"] == pytest.approx(-0.1) and math.isnan(effect["se"])
    from dataclasses import asdict

    from evaluation.symmetry_report import render
    threshold = {"value": 0.88, "far": 0.01, "people": 150, "impostor_pairs": 178800, "tar": 0.78}
    doc = render({"config": asdict(SymmetryConfig()), "threshold": threshold, "people": people}, "cmd", "cpu")
    assert "**Partial run: 3 of the 30 trained models are done.**" in doc and "## balanced" not in doc
    assert "| one-sided | yaw < 0 | 1 | -0.1000 ± nan |" in doc and "one person: no standard error" in doc


def test_a_person_is_held_by_one_worker_at_a_time(tmp_path):
    from evaluation.symmetry_experiment import _hold
    lock = tmp_path / "person_1.lock"
    with _hold(lock) as first:
        with _hold(lock) as second:                                    # a second open file: another worker
            assert first and not second
    with _hold(lock) as later:                                         # released when the first one finished
        assert later


# ------------------------------------------------------------------ why L_sym helps or not (symmetry_diagnostics)

def test_mirror_gap_is_zero_for_a_mirrored_pair_and_identity_error_zero_against_itself():
    from evaluation.symmetry_diagnostics import _gaps
    from perception.heads_identity import load_heads_identity
    from perception.identity import flip_horizontal
    torch = pytest.importorskip("torch")
    encoder = load_heads_identity()
    g = torch.Generator().manual_seed(0)
    unseen = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1          # asymmetric images: a missing flip shows
    gaps = _gaps(encoder, {"unseen": unseen, "seen": flip_horizontal(unseen)},
                 {"unseen": unseen, "seen": flip_horizontal(unseen)})
    assert max(abs(v) for v in gaps["mirror_gap"]) < 1e-5
    assert max(abs(v) for v in gaps["id_error_unseen"] + gaps["id_error_seen"]) < 1e-5
    other = _gaps(encoder, {"unseen": unseen, "seen": unseen}, {"unseen": -unseen, "seen": unseen})
    assert min(other["mirror_gap"]) > 1e-4 and min(other["id_error_unseen"]) > 1e-4


def test_gradient_norms_scale_with_the_symmetry_weight_only():
    from evaluation.symmetry_diagnostics import gradient_norms
    from fixtures.synthetic import ground_truth_person, person_latent
    from generator.adapter_file import Anchors
    from perception.heads_identity import load_heads_identity
    from train.data import load_training_set
    G, adapter = ground_truth_person()
    reference = REPO / "samples" / "tiny_person"
    cams = load_training_set(reference, G.img_resolution).cameras
    anchors = Anchors(person_latent(G).expand(len(cams), -1, -1).clone(), cams)
    config = {"sym_yaw_range": 0.35, "sym_pitch_range": 0.25, "lpips_net": "alex", "lpips_weight": 1.0,
              "l2_weight": 1.0, "sym_weight": 4.0}
    encoder = load_heads_identity()
    at4 = gradient_norms(G, adapter, anchors, reference, encoder, config)
    at8 = gradient_norms(G, adapter, anchors, reference, encoder, dict(config, sym_weight=8.0))
    assert at4["grad_rec"] > 0 and at4["grad_sym"] > 0 and -1 <= at4["cos"] <= 1
    assert at8["grad_sym"] == pytest.approx(2 * at4["grad_sym"], rel=1e-5)
    assert at8["grad_rec"] == pytest.approx(at4["grad_rec"], rel=1e-6) and at8["cos"] == pytest.approx(at4["cos"])
    from generator.lora import attachment_of
    assert attachment_of(G) is None                                   # the generator is left as it was


def test_training_curve_reads_the_symmetry_steps_of_a_log(tmp_path):
    from evaluation.symmetry_diagnostics import training_curve
    log = tmp_path / "log.jsonl"
    assert training_curve(log) is None
    rows = [{"step": s, "rec": 1.0, **({"sym": float(s)} if s % 4 == 0 else {})} for s in range(0, 80)]
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    curve = training_curve(log)                                       # sym at steps 0, 4, ..., 76: 20 values
    assert curve == {"first": 2.0, "last": 74.0, "logged": 20}
