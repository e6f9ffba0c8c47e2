"""The paper's experiments (Tables 1-4, Figures 3 and 5) in miniature on the head world, with ground truth.

For each held-out head-world person (never seen by pretraining or the identity network):
  reference set  `reference_photos` photos, poses like FFHQ's (mostly |yaw| <= 0.45, every fifth a profile with
                 |yaw| in [0.55, 0.75]), each photo with its own expression, light and background;
  test set       `test_photos` photos with appearances the reference set never shows, the last
                 `profile_test_photos` of them profiles (Table 4 is computed on those).
Rows (`ROWS`): the pretrained model with PTI, full fine-tuning, full + L_sym, LoRA, LoRA + L_sym (the paper's
recipe) and the authors'-code recipe, each trained on the reference set by `train.trainer.personalize` and
evaluated by `evaluation.protocol.Protocol` (the paper's §4.1 protocol, with the ground-truth hook: the
PTI-inverted test photo rendered at `truth_poses` against the world's true renders, LPIPS / PSNR / depth error).
Figure 5 retrains LoRA + L_sym (and any other `size_rows`) on larger reference sets of the first
`size_people` people.

Everything is seeded; every person's results are written to WORK/results/ as they finish, and a rerun skips
finished people and trained adapters, so an interrupted run resumes. `evaluation.experiments_report` turns the
results into docs/EXPERIMENTS.md.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from evaluation.protocol import EvalConfig, ModelSpec, Protocol, TrueViews, load_photos
from evaluation.pti import PTIConfig
from formats.atomic import write_text
from headworld.params import HELDOUT_SEEDS
from headworld.photos import photo_pose

PROFILE_YAW = (0.55, 0.75)
"""|yaw| range of profile photos (radians)."""


@dataclass(frozen=True)
class Row:
    """One row of Table 1: how the model of a person is made."""

    name: str
    label: str
    fine_tune: bool
    sym: bool
    lora: bool
    recipe: str = "paper"


ROWS = {r.name: r for r in (
    Row("pti", "pretrained + PTI", False, False, False),
    Row("full", "full fine-tuning", True, False, False),
    Row("full_sym", "full + L_sym", True, True, False),
    Row("lora", "LoRA", True, False, True),
    Row("lora_sym", "LoRA + L_sym (My3DGen)", True, True, True),
    Row("authors", "LoRA + L_sym, authors' code recipe", True, True, True, recipe="authors"),
)}


@dataclass
class ExperimentConfig:
    """What one experiment run does (the defaults are the committed docs/EXPERIMENTS.md run)."""

    people: int = 5
    """Held-out people, seeds HELDOUT_SEEDS.start + first_person + i."""
    first_person: int = 200
    """Offset of the first person's seed in HELDOUT_SEEDS (the demo person is offset 0)."""
    reference_photos: int = 10
    """Photos each model is personalized on (the paper's reference set: ~10)."""
    test_photos: int = 5
    """Held-out photos per person for inversion (Tables 1 and 4) and test-anchor synthesis (Table 3)."""
    profile_test_photos: int = 2
    """How many of the test photos are profiles (|yaw| in PROFILE_YAW); Table 4 uses only those."""
    rows: tuple[str, ...] = tuple(ROWS)
    """Rows of the tables (keys of ROWS)."""
    iterations: int = 150
    """Personalization steps per model (the paper gives none; the default recipe uses 2,500)."""
    anchor_steps: int = 50
    """Projector steps per reference photo (the anchors)."""
    inversion_space: str = "z"
    """Where the trained rows' anchors are inverted (train.config.projector_for): z, as the head-world generator
    needs (docs/HEADS.md); w, the official projectors'. The protocol's own inversions (EvalConfig) stay W."""
    pti_latent_steps: int = 50
    """PTI stage 1 (pivot) steps per test photo (the paper's PTI: 600)."""
    pti_tune_steps: int = 30
    """PTI stage 2 (tuning) steps per test photo (the paper's PTI: 350)."""
    pairs: int = 3
    """Anchor pairs per synthesis table (the paper: 10)."""
    weights: int = 5
    """Interpolation weights per pair (the paper: 10)."""
    views: int = 4
    """Random views per weight (the paper: 20)."""
    inversion_yaws: tuple[float, ...] = (-0.35, 0.0, 0.35)
    """Yaws of the inversion ID-score pose grid."""
    inversion_pitches: tuple[float, ...] = (0.0,)
    """Pitches of the inversion ID-score pose grid."""
    truth_poses: tuple[tuple[float, float], ...] = ((-0.6, 0.0), (-0.3, 0.1), (0.3, -0.1), (0.6, 0.0))
    """Cameras (yaw, pitch) of the ground-truth columns: every test inversion is compared with the truth there."""
    size_people: int = 2
    """Figure 5: people (the first ones) retrained on larger reference sets."""
    reference_sizes: tuple[int, ...] = (10, 25, 50)
    """Figure 5: reference-set sizes (the paper: 10, 50, 100)."""
    size_rows: tuple[str, ...] = ("lora_sym",)
    """Figure 5: rows retrained at every size (the pretrained row is the same at every size)."""
    seed: int = 0
    """Seed of training, PTI and the protocol's pairs and views."""

    def validate(self) -> "ExperimentConfig":
        unknown = [r for r in self.rows + self.size_rows if r not in ROWS]
        if unknown:
            raise ValueError(f"rows {unknown}: expected names from {tuple(ROWS)}")
        if "pti" in self.size_rows:
            raise ValueError("size_rows: the pretrained row does not depend on the reference set")
        checks = [(self.people >= 1, "people", "must be >= 1"),
                  (self.reference_photos >= 2, "reference_photos", "must be >= 2"),
                  (1 <= self.profile_test_photos < self.test_photos or
                   (self.profile_test_photos == 0 and self.test_photos >= 1), "profile_test_photos",
                   "must leave at least one frontal test photo"),
                  (0 <= self.size_people <= self.people, "size_people", "must be in [0, people]"),
                  (all(n >= 2 for n in self.reference_sizes), "reference_sizes", "must all be >= 2"),
                  (self.first_person >= 1, "first_person", "must be >= 1 (offset 0 is the demo person)"),
                  (self.inversion_space in ("w", "z"), "inversion_space", "must be 'w' or 'z'")]
        for ok, name, why in checks:
            if not ok:
                raise ValueError(f"experiment {name}={getattr(self, name)!r}: {why}")
        return self

    def person_seeds(self) -> list[int]:
        seeds = [HELDOUT_SEEDS.start + self.first_person + i for i in range(self.people)]
        if seeds[-1] not in HELDOUT_SEEDS:
            raise ValueError(f"people={self.people}: seeds run past HELDOUT_SEEDS")
        return seeds

    def eval_config(self) -> EvalConfig:
        return EvalConfig(pairs=self.pairs, views=self.views, weights=self.weights, seed=self.seed,
                          inversion_yaws=self.inversion_yaws, inversion_pitches=self.inversion_pitches,
                          anchor_steps=self.anchor_steps,
                          pti=PTIConfig(latent_steps=self.pti_latent_steps, tune_steps=self.pti_tune_steps,
                                        seed=self.seed))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SMOKE = dict(people=1, reference_photos=4, test_photos=2, profile_test_photos=1, iterations=2, anchor_steps=2,
             pti_latent_steps=2, pti_tune_steps=2, pairs=1, weights=2, views=1, truth_poses=((0.6, 0.0),),
             size_people=1, reference_sizes=(4, 6), inversion_yaws=(0.0,))
"""ExperimentConfig overrides of the CI smoke run: the whole pipeline, numbers meaningless."""


# ------------------------------------------------------------------------------------------ photos

def reference_poses(seed: int, count: int) -> list[tuple[float, float]]:
    """FFHQ-like poses of reference photos 0..count-1: every fifth (k % 5 == 4) a profile, the rest near-frontal."""
    return [_profile_pose(seed, k) if k % 5 == 4 else photo_pose(seed, k, yaw_max=0.45) for k in range(count)]


def test_poses(seed: int, count: int, profiles: int) -> list[tuple[float, float]]:
    """Poses of test photos: near-frontal first, then `profiles` profiles."""
    return [photo_pose(seed, 100 + j, yaw_max=0.45) if j < count - profiles else _profile_pose(seed, 100 + j)
            for j in range(count)]


def _profile_pose(seed: int, photo: int) -> tuple[float, float]:
    r = np.random.RandomState([int(seed), int(photo), 5])
    yaw = float(r.uniform(*PROFILE_YAW)) * (1 if photo % 2 else -1)
    return yaw, float(np.clip(r.randn() * 0.08, -0.2, 0.2))


TEST_PHOTO_IDS = 100
"""Test photo j uses appearance Appearance.from_seed(seed, TEST_PHOTO_IDS + j): never a reference appearance."""


def write_person_sets(folder: Path, seed: int, cfg: ExperimentConfig) -> dict[str, Path]:
    """The person's reference sets (one per size) and test set as dataset folders (written once, then reused)."""
    from headworld.photos import write_person
    sizes = sorted({cfg.reference_photos, *(cfg.reference_sizes if cfg.size_people else ())})
    out = {}
    for n in sizes:
        path = folder / f"reference_{n}"
        if not path.is_dir():
            write_person(path, seed, reference_poses(seed, n), list(range(n)),
                         note=f"experiment reference set ({n} photos)")
        out[f"reference_{n}"] = path
    path = folder / "test"
    if not path.is_dir():
        write_person(path, seed, test_poses(seed, cfg.test_photos, cfg.profile_test_photos),
                     [TEST_PHOTO_IDS + j for j in range(cfg.test_photos)], note="experiment test set")
    out["test"] = path
    return out


def truth_function(G, test_dir: Path, poses: tuple[tuple[float, float], ...]) -> Callable[[int], TrueViews]:
    """`Protocol`'s ground_truth hook for a written test set: test photo i's person and appearance at `poses`."""
    from generator.views import camera_batch
    from headworld.params import Appearance, Identity
    from headworld.render import render
    info = json.loads((test_dir / "truth.json").read_text())
    labels = camera_batch(G, list(poses)).numpy()

    def views(i: int) -> TrueViews:
        view = info["views"][i]
        n = len(poses)
        out = render([Identity.from_seed(info["seed"])] * n, [Appearance.from_seed(info["seed"], view["photo"])] * n,
                     labels, G.img_resolution)
        return TrueViews(list(poses), out["image"], out["depth"], out["mask"])
    return views


# ------------------------------------------------------------------------------------------ models

def train_config(row: Row, cfg: ExperimentConfig):
    """The TrainConfig of a row: the paper's recipe (or the authors'), its mode and L_sym switch, our step count."""
    from train.config import config_from_recipe, projector_for
    projector = projector_for(cfg.inversion_space, cfg.anchor_steps)
    return config_from_recipe(row.recipe, explicit={"iterations": cfg.iterations},
                              mode="lora" if row.lora else "full", sym=row.sym, seed=cfg.seed, projector=projector)


def train_row(G, row: Row, reference: Path, work: Path, cfg: ExperimentConfig, identity, log) -> Path:
    """The row's adapter for a reference set (trained once; an existing file is reused)."""
    from train.trainer import personalize
    out = work / f"{row.name}.safetensors"
    if out.is_file():
        return out
    t0 = time.perf_counter()
    personalize(G, reference, out, train_config(row, cfg), checkpoint_dir=work / f"{row.name}_run",
                identity=identity if row.sym else None, identity_name="heads-identity", preview=False,
                inversion_batch=10, inversion_cache_dir=work / "inversions")
    log(f"  trained {row.name} on {reference.name} in {time.perf_counter() - t0:.0f} s")
    return out


def models_for(G, rows: tuple[str, ...], reference: Path, work: Path, cfg: ExperimentConfig, identity, log
               ) -> list[ModelSpec]:
    specs = []
    for name in rows:
        row = ROWS[name]
        adapter = None if not row.fine_tune else train_row(G, row, reference, work, cfg, identity, log)
        specs.append(ModelSpec(name, adapter))
    return specs


# ------------------------------------------------------------------------------------------ the run

MADE_WITH = "made_with.json"


def claim_work(work: Path, G, config: dict) -> None:
    """Tie WORK to one model and config: its cached models and results are reused on resume, so a WORK made with
    other weights or settings is refused (naming what differs) instead of silently mixed into the tables. The
    number of people may change: more people only add results."""
    from generator.model_dir import weights_fingerprint
    config = json.loads(json.dumps(config))  # as the file will hold it (tuples become lists)
    want = {"model": weights_fingerprint(G.state_dict()), "config": config}
    path = Path(work) / MADE_WITH
    if not path.is_file():
        Path(work).mkdir(parents=True, exist_ok=True)
        older = sorted(str(p.relative_to(work)) for p in Path(work).rglob("*")
                       if p.is_file() and p.suffix in (".json", ".safetensors"))  # what a resumed run reuses
        if older:
            raise ValueError(f"{work}: holds {', '.join(older[:3])} but no {MADE_WITH} (made by older code, with "
                             f"unknown weights): use another --work or delete that folder")
        write_text(path, json.dumps(want, indent=1) + "\n")
        return
    have = json.loads(path.read_text())
    if have.get("model") != want["model"]:
        raise ValueError(f"{work}: made with model {have.get('model')}, not this one ({want['model']}); "
                         f"use another --work or delete that folder")
    changed = sorted(k for k in set(config) | set(have.get("config", {}))
                     if k != "people" and config.get(k) != have.get("config", {}).get(k))
    if changed:
        raise ValueError(f"{work}: made with other settings ({', '.join(changed)}); use another --work or delete "
                         f"that folder")


def run_person(G, seed: int, index: int, work: Path, cfg: ExperimentConfig, backend, identity, log) -> dict:
    """Tables 1-4 of one person (and Figure 5's sizes when index < size_people); cached in WORK/results/."""
    result_path = work / "results" / f"person_{seed}.json"
    if result_path.is_file():
        log(f"person {seed}: results exist, skipped")
        return json.loads(result_path.read_text())
    t0 = time.perf_counter()
    folder = work / f"person_{seed}"
    sets = write_person_sets(folder, seed, cfg)
    reference = sets[f"reference_{cfg.reference_photos}"]
    test = load_photos(sets["test"], G.img_resolution)
    truth = truth_function(G, sets["test"], cfg.truth_poses)
    log(f"person {seed}: training {len(cfg.rows)} rows on {cfg.reference_photos} photos")
    models = models_for(G, cfg.rows, reference, folder / "models", cfg, identity, log)
    protocol = Protocol(G, test, load_photos(reference, G.img_resolution), backend, cfg.eval_config(),
                        cache_dir=folder / "eval_cache", log=log, ground_truth=truth)
    tables = protocol.run(models)
    result = {"seed": seed, "profile_photos": list(range(cfg.test_photos - cfg.profile_test_photos,
                                                         cfg.test_photos)),
              "test_poses": test_poses(seed, cfg.test_photos, cfg.profile_test_photos),
              "reference_poses": reference_poses(seed, cfg.reference_photos), "tables": tables, "sizes": {},
              "torch_threads": torch.get_num_threads()}
    if index < cfg.size_people:
        for n in cfg.reference_sizes:
            if n == cfg.reference_photos:
                continue  # the main tables are this size's
            ref_n = sets[f"reference_{n}"]
            log(f"person {seed}: Figure 5, {n} reference photos")
            specs = models_for(G, cfg.size_rows, ref_n, folder / f"models_{n}", cfg, identity, log)
            sized = Protocol(G, test, load_photos(ref_n, G.img_resolution), backend, cfg.eval_config(),
                             cache_dir=folder / "eval_cache", log=log, ground_truth=truth)
            result["sizes"][str(n)] = sized.run(specs)
    result["seconds"] = time.perf_counter() - t0
    write_text(result_path, json.dumps(result) + "\n")
    return result


def run_experiment(G, work: Path, cfg: ExperimentConfig, backend=None, identity=None,
                   log: Callable[[str], None] = print) -> dict:
    """Every person of `cfg` (resuming finished ones); returns {"config", "people": [per-person results]}."""
    from evaluation.identity_score import make_identity_backend
    from perception.heads_identity import load_heads_identity
    cfg.validate()
    work = Path(work)
    (work / "results").mkdir(parents=True, exist_ok=True)
    claim_work(work, G, cfg.to_dict())
    backend = backend or make_identity_backend("heads")
    identity = identity or load_heads_identity()
    t0 = time.perf_counter()
    people = [run_person(G, seed, i, work, cfg, backend, identity, log)
              for i, seed in enumerate(cfg.person_seeds())]
    return {"config": cfg.to_dict(), "people": people, "seconds": time.perf_counter() - t0,
            "torch_threads": torch.get_num_threads()}
