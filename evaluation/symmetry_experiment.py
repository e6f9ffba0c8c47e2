"""Does the symmetry loss help a person photographed from one side? (paper §3.3)

For each held-out head-world person, two reference sets of `reference_photos` photos with the same appearances:
  one_sided  yaws spread over [+yaw_min, +yaw_max]: the side seen from yaw < 0 is never photographed;
  balanced   the same |yaw| values, every other one mirrored to the other side.
Rows (evaluation.experiments.ROWS, the paper's recipe at the default length): LoRA, LoRA + L_sym, full
fine-tuning; plus W inversion (the shared anchors on the base model). Every model renders each anchor at the
cameras of three regions, under that anchor's photo's appearance, and is compared with the world's true render
(LPIPS AlexNet, PSNR) and verified against the person's enrolment photo (evaluation.verification, FAR 1e-2):
  yaw < 0   the side a one-sided set never shows;   frontal;   yaw > 0   the photographed side.
The question is answered by paired differences, LoRA + L_sym minus LoRA, per person and region, with their
standard error over people. Every trained model and every person's result is cached in WORK, so the run resumes.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from evaluation.experiments import ROWS, ExperimentConfig, claim_work, train_row
from evaluation.verification import Threshold, cached_threshold, enrolment_photo, verifies
from formats.atomic import write_text
from formats.cameras import lookat_label
from headworld.params import HELDOUT_SEEDS

SET_KINDS = ("one_sided", "balanced")
REGIONS: dict[str, tuple[tuple[float, float], ...]] = {
    "yaw < 0": ((-0.6, 0.0), (-0.35, 0.0)),
    "frontal": ((0.0, 0.0), (0.0, 0.15)),
    "yaw > 0": ((0.35, 0.0), (0.6, 0.0)),
}
"""Cameras (yaw, pitch) of each evaluation region; 'yaw < 0' is the unseen side of a one-sided set."""


@dataclass
class SymmetryConfig:
    """One run of the experiment (the defaults are the committed run)."""

    people: int = 5
    """Held-out people, seeds HELDOUT_SEEDS.start + first_person + i."""
    first_person: int = 300
    """Offset of the first person in HELDOUT_SEEDS (0 is the demo person, 200.. the Table 1-4 people)."""
    reference_photos: int = 10
    yaw_min: float = 0.05
    yaw_max: float = 0.70
    """|yaw| of the reference photos spans [yaw_min, yaw_max] (radians), evenly."""
    rows: tuple[str, ...] = ("lora", "lora_sym", "full")
    iterations: int = 2500
    """Training steps per model: the default recipe's length (train.config.TrainConfig.iterations)."""
    anchor_steps: int = 500
    """Projector steps per photo: the default (train.config.ProjectorConfig.steps)."""
    inversion_space: str = "z"
    """Where the anchors are inverted (train.config.projector_for): z, as the head-world generator needs."""
    far: float = 1e-2
    """False accept rate of the verification threshold."""
    calibration_people: int = 150
    """People whose impostor pairs set the threshold (evaluation.verification.CALIBRATION_FIRST_SEED on)."""
    seed: int = 0

    def validate(self) -> "SymmetryConfig":
        unknown = [r for r in self.rows if r not in ROWS or not ROWS[r].fine_tune]
        checks = [(not unknown, "rows", f"expected trained rows from {tuple(r for r in ROWS if r != 'pti')}"),
                  (self.people >= 1, "people", "must be >= 1"),
                  (self.first_person >= 1, "first_person", "must be >= 1 (offset 0 is the demo person)"),
                  (self.reference_photos >= 2, "reference_photos", "must be >= 2"),
                  (0 < self.yaw_min < self.yaw_max <= 0.8, "yaw_max", "needs 0 < yaw_min < yaw_max <= 0.8"),
                  (self.iterations >= 1 and self.anchor_steps >= 1, "iterations", "steps must be >= 1"),
                  (0 < self.far < 1, "far", "must be in (0, 1)"),
                  (2 <= self.calibration_people <= 1000, "calibration_people", "must be in 2..1000"),
                  (self.inversion_space in ("w", "z"), "inversion_space", "must be 'w' or 'z'")]
        for ok, name, why in checks:
            if not ok:
                raise ValueError(f"symmetry experiment {name}={getattr(self, name)!r}: {why}")
        if HELDOUT_SEEDS.start + self.first_person + self.people - 1 not in HELDOUT_SEEDS:
            raise ValueError(f"people={self.people}: seeds run past HELDOUT_SEEDS")
        return self

    def person_seeds(self) -> list[int]:
        return [HELDOUT_SEEDS.start + self.first_person + i for i in range(self.people)]

    def training(self) -> ExperimentConfig:
        """The Table 1 experiment's config with this run's length: train_row reads iterations, anchors, seed."""
        return replace(ExperimentConfig(), iterations=self.iterations, anchor_steps=self.anchor_steps,
                       inversion_space=self.inversion_space, seed=self.seed)


SMOKE = dict(people=2, reference_photos=3, rows=("lora", "lora_sym"), iterations=2, anchor_steps=2,
             calibration_people=6)
"""SymmetryConfig overrides of the CI smoke run: the whole pipeline, numbers meaningless."""


def reference_poses(seed: int, kind: str, count: int, cfg: SymmetryConfig) -> list[tuple[float, float]]:
    """Poses of a reference set: |yaw| evenly over [yaw_min, yaw_max]; one_sided all > 0, balanced alternating."""
    r = np.random.RandomState([int(seed), 7])
    pitches = np.clip(r.randn(count) * 0.08, -0.2, 0.2)
    yaws = np.linspace(cfg.yaw_min, cfg.yaw_max, count)
    if kind == "balanced":
        yaws = yaws * np.where(np.arange(count) % 2 == 1, -1.0, 1.0)
    elif kind != "one_sided":
        raise ValueError(f"reference set kind {kind!r}: expected one of {SET_KINDS}")
    return [(float(y), float(p)) for y, p in zip(yaws, pitches)]


def true_views(seed: int, photo_ids: list[int], resolution: int,
               regions: dict[str, tuple[tuple[float, float], ...]] = REGIONS) -> dict[str, list[torch.Tensor]]:
    """Per region, per photo: the world's true render [P, 3, R, R] of the person under that photo's appearance at
    the region's cameras. Both reference sets use the same photos' appearances, so a person's truth is made once."""
    from headworld.params import Appearance, Identity
    from headworld.render import render
    identity = Identity.from_seed(seed)
    return {region: [render([identity] * len(poses), [Appearance.from_seed(seed, photo)] * len(poses),
                            np.stack([lookat_label(y, p) for y, p in poses]), resolution)["image"]
                     for photo in photo_ids]
            for region, poses in regions.items()}


def render_anchor(G, ws: torch.Tensor, k: int, poses) -> torch.Tensor:
    """Anchor k of ws ([K, w_dim] or [K, num_ws, w_dim]) rendered at (yaw, pitch) poses: [len(poses), 3, R, R]."""
    c = torch.from_numpy(np.stack([lookat_label(y, p) for y, p in poses]))
    w = ws[k:k + 1]
    w = (w if w.ndim == 3 else w[:, None].expand(1, G.num_ws, -1)).expand(len(poses), -1, -1)
    return G.synthesis(w, c)["image"].clamp(-1, 1)


def evaluate_model(G, adapter, anchors, truths: dict[str, list[torch.Tensor]], lpips, encoder, enrol: torch.Tensor,
                   threshold: Threshold) -> dict:
    """Per region: LPIPS, PSNR and verification of every anchor's views against `truths` (`true_views`; anchor k
    is photo k), as lists with one entry per view. `adapter` None renders the base model."""
    from evaluation.metrics import psnr
    from generator.lora import attach, detach
    out = {}
    attach(G, adapter)
    try:
        with torch.no_grad():
            for region, poses in REGIONS.items():
                scores = {"lpips": [], "psnr": [], "verified": []}
                for k, truth in enumerate(truths[region]):
                    image = render_anchor(G, anchors.ws, k, poses)
                    scores["lpips"] += lpips(image, truth).tolist()
                    scores["psnr"] += psnr(image, truth).tolist()
                    scores["verified"] += verifies(encoder, image, enrol, threshold).tolist()
                out[region] = scores
    finally:
        detach(G)
    return out


SYM_PAIR = ("lora", "lora_sym")
"""The rows whose paired difference is the experiment's answer: trained first, on every person, set by set."""


def work_units(cfg: SymmetryConfig) -> list[tuple[int, str, tuple[str, ...]]]:
    """(person seed, set kind, rows) in the order the workers take them: the L_sym pair on every person's one-sided
    set, then on the balanced sets, then the other rows (full fine-tuning). Partial runs answer the question first."""
    pair = tuple(r for r in cfg.rows if r in SYM_PAIR)
    rest = tuple(r for r in cfg.rows if r not in SYM_PAIR)
    return [(seed, kind, rows) for rows in (pair, rest) if rows
            for kind in SET_KINDS for seed in cfg.person_seeds()]


def unit_lock(work: Path, seed: int, kind: str, rows: tuple[str, ...]) -> Path:
    """The file a worker locks while it trains a work unit."""
    return Path(work) / "results" / f"person_{seed}_{kind}_{'_'.join(rows)}.lock"


def _row_path(work: Path, seed: int, kind: str, row: str) -> Path:
    return Path(work) / "results" / f"person_{seed}" / kind / f"{row}.json"


def run_unit(G, seed: int, kind: str, rows: tuple[str, ...], work: Path, cfg: SymmetryConfig, identity,
             threshold: Threshold, lpips, log) -> None:
    """Train one reference set's rows and evaluate them and W inversion; each row's scores are cached in
    WORK/results/person_SEED/KIND/ROW.json as soon as it is done."""
    from generator.adapter_file import load_adapter
    from headworld.photos import write_person
    todo = [r for r in (*rows, "w_inversion") if not _row_path(work, seed, kind, r).is_file()]
    if not todo:
        log(f"person {seed}, {kind}: {', '.join(rows)} done, skipped")
        return
    photo_ids = list(range(cfg.reference_photos))
    enrol, truths = enrolment_photo(seed, G.img_resolution), true_views(seed, photo_ids, G.img_resolution)
    folder = work / f"person_{seed}" / kind
    reference = folder / "photos"
    if not reference.is_dir():
        write_person(reference, seed, reference_poses(seed, kind, cfg.reference_photos, cfg), photo_ids,
                     note=f"symmetry experiment, {kind} reference set")
    anchors = None
    for name in rows:
        t0 = time.perf_counter()
        log(f"person {seed}, {kind}: {name}")
        adapter, anchors, meta = load_adapter(
            train_row(G, ROWS[name], reference, folder / "models", cfg.training(), identity, log), G)
        if name in todo:
            scores = evaluate_model(G, adapter, anchors, truths, lpips, identity, enrol, threshold)
            _write_row(work, seed, kind, name, scores, meta["extra"]["final_losses"], time.perf_counter() - t0)
    if "w_inversion" in todo:
        scores = evaluate_model(G, None, anchors, truths, lpips, identity, enrol, threshold)
        _write_row(work, seed, kind, "w_inversion", scores, None, 0.0)


def _write_row(work: Path, seed: int, kind: str, row: str, scores: dict, losses: dict | None, seconds: float):
    path = _row_path(work, seed, kind, row)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps({"scores": scores, "final_losses": losses, "seconds": seconds,
                                 "torch_threads": torch.get_num_threads()}) + "\n")


def run(G, work: Path, cfg: SymmetryConfig, identity=None, log: Callable[[str], None] = print) -> dict:
    """Every unfinished work unit (`work_units`) that no other worker holds; returns the results so far. Start the
    command once per core: each worker locks the unit it trains (`_hold`), so workers share them as they free up."""
    from perception.heads_identity import load_heads_identity
    from perception.lpips import LPIPS
    cfg.validate()
    work = Path(work)
    (work / "results").mkdir(parents=True, exist_ok=True)
    claim_work(work, G, asdict(cfg))
    identity = identity or load_heads_identity()
    threshold = cached_threshold(work / "threshold.json", identity, cfg.far, cfg.calibration_people, log)
    lpips = LPIPS("alex")
    for seed, kind, rows in work_units(cfg):
        with _hold(unit_lock(work, seed, kind, rows)) as held:
            if held:
                run_unit(G, seed, kind, rows, work, cfg, identity, threshold, lpips, log)
            else:
                log(f"person {seed}, {kind}: another worker is training {', '.join(rows)}, skipped")
    return collect(work, cfg)


@contextlib.contextmanager
def _hold(path: Path):
    """An exclusive lock on `path` for as long as this process works on it (released when the process dies)."""
    import fcntl
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def collect(work: Path, cfg: SymmetryConfig) -> dict:
    """Every person with at least one evaluated row, with the rows done so far, the config and threshold."""
    people = []
    for seed in cfg.person_seeds():
        person = {"seed": seed, "sets": {}, "poses": {}, "final_losses": {}, "seconds": 0.0}
        for kind in SET_KINDS:
            for row in ("w_inversion", *cfg.rows):
                path = _row_path(work, seed, kind, row)
                if path.is_file():
                    done = json.loads(path.read_text())
                    person["sets"].setdefault(kind, {})[row] = done["scores"]
                    person["poses"][kind] = reference_poses(seed, kind, cfg.reference_photos, cfg)
                    person["seconds"] += done["seconds"]
                    if done["final_losses"] is not None:
                        person["final_losses"][f"{kind}/{row}"] = done["final_losses"]
        if person["sets"]:
            people.append(person)
    threshold = json.loads((Path(work) / "threshold.json").read_text())
    return {"config": asdict(cfg), "threshold": threshold, "people": people}


def paired(people: list[dict], kind: str, region: str, a: str, b: str, metric: str = "lpips") -> dict:
    """Mean over the people who have both rows of (b - a), each person's value the mean over its views, with the
    standard error."""
    both = [p for p in people if {a, b} <= set(p["sets"].get(kind, {}))]
    diffs = np.array([np.mean(p["sets"][kind][b][region][metric]) - np.mean(p["sets"][kind][a][region][metric])
                      for p in both], dtype=np.float64)
    se = float(diffs.std(ddof=1) / np.sqrt(len(diffs))) if len(diffs) > 1 else float("nan")
    mean = float(diffs.mean()) if len(diffs) else float("nan")
    return {"mean": mean, "se": se, "z": mean / se if se and np.isfinite(se) and se > 0 else float("nan"),
            "people": len(diffs), "per_person": diffs.tolist()}


def summarize(result: dict) -> dict:
    """Per set kind, region and row: mean LPIPS, PSNR and verification rate over the people who have the row, and
    how many they are; paired L_sym differences where some person has both rows. Kinds and rows nobody has yet are
    left out."""
    people = result["people"]
    table, effects = {}, {}
    for kind in SET_KINDS:
        rows = [r for r in ("w_inversion", *result["config"]["rows"])
                if any(r in p["sets"].get(kind, {}) for p in people)]
        if not rows:
            continue
        table[kind] = {region: {row: {"people": len(have := [p for p in people if row in p["sets"].get(kind, {})]),
                                      **{m: float(np.mean([np.mean(p["sets"][kind][row][region][m]) for p in have]))
                                         for m in ("lpips", "psnr", "verified")}}
                                for row in rows}
                       for region in REGIONS}
        if set(SYM_PAIR) <= set(rows) and paired(people, kind, "frontal", *SYM_PAIR)["people"]:
            effects[kind] = {region: {m: paired(people, kind, region, *SYM_PAIR, m) for m in ("lpips", "verified")}
                             for region in REGIONS}
    return {"people": len(people), "table": table, "sym_effect": effects}
