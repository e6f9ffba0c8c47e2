"""The paper's evaluation protocol (§4.1, after MyStyle) over several models of one person.

Inversion (Table 1), per held-out test photo and per model:
  PTI-invert the photo into the model (`evaluation.pti`) -> DISTS and LPIPS between the reconstruction and the
  photo in the photo's own pose; the tuned model renders the pivot latent from a grid of poses
  (`inversion_yaws` x `inversion_pitches`) and each render gets its ID score against the reference set.

Synthesis (Tables 2 and 3, Figure 3), per model:
  anchor pairs are drawn from the training photos (Table 2) and from the test photos (Table 3); for each
  pair and each of `weights` equally spaced t in [0, 1] the latent w = (1 - t) w_a + t w_b (W space) is
  rendered from `views` random poses (yaw ~ U(+-yaw_range), pitch ~ U(+-pitch_range)) and every render gets
  its ID score. Training anchors are the latents an adapter file stores for its photos (matched by name);
  photos without a stored latent (all of them for the pretrained model) are projected into the model with
  the W projector (`anchor_steps`). Test anchors are the PTI pivots of the test photos (stage 1 of PTI is
  the same W projection the paper prescribes for test anchors, 600 instead of 500 steps).

Ground truth (optional, not in the paper): where the photos come from a world that can render the truth (the
head world), `ground_truth(i)` gives the true images, depth and mask of test photo i's person and appearance at
other cameras; the PTI-tuned model renders the pivot there and gets LPIPS, PSNR and depth error against them.

Everything random is seeded, and drawn independently of the model: every model sees the same pairs, the
same t values and the same poses, so differences between rows come from the models alone.

Photos are loaded at the generator's output resolution (`train.data.load_training_set`, Lanczos resize),
which is where DISTS/LPIPS are computed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from evaluation.identity_score import IdentityBackend, IdentityScorer, summarize
from evaluation.metrics import ImageMetrics
from evaluation.pti import PTIConfig, broadcast_ws, frozen, pti_invert
from generator.lora import attach, detach
from generator.views import camera_batch

PRETRAINED = "pretrained"


@dataclass
class EvalConfig:
    """Protocol settings. Defaults are the paper's numbers (§3.4, §4.1) where it gives them."""

    pairs: int = 10
    """Anchor pairs per synthesis table ('this procedure is repeated 10 times')."""
    views: int = 20
    """Random views per interpolation weight ('we randomly generate 20 novel views')."""
    weights: int = 10
    """Interpolation weights, equally spaced in [0, 1] ('10 equally spaced interpolation weights')."""
    seed: int = 0
    """Seed of the pairs and poses (numpy), and of PTI/projection noise."""
    yaw_range: float = 0.35
    """Random views: yaw ~ U(-yaw_range, yaw_range) radians from frontal (paper §3.4)."""
    pitch_range: float = 0.25
    """Random views: pitch ~ U(-pitch_range, pitch_range) radians (paper §3.4)."""
    inversion_yaws: tuple[float, ...] = (-0.35, -0.175, 0.0, 0.175, 0.35)
    """Inversion ID score: yaws of the rendered pose grid (the paper says 'multiple poses'; our choice spans
    the paper's yaw range)."""
    inversion_pitches: tuple[float, ...] = (-0.25, 0.0, 0.25)
    """Inversion ID score: pitches of the rendered pose grid."""
    anchor_steps: int = 500
    """W projector steps for training anchors an adapter does not store (paper §3.4: 500)."""
    max_test_photos: int | None = None
    """Use only the first N test photos (all by default)."""
    lpips_net: str = "alex"
    """LPIPS network of the Table 1 metric ('alex' | 'vgg'); the paper does not say which."""
    cross_view: bool = False
    """Also render each inversion at the OTHER test photos' cameras and compare with those photos (DISTS,
    LPIPS). Only meaningful when the test photos are views of one unchanging scene, as in the synthetic
    ground-truth setup; real photos of a person differ in expression, hair and light. Not in the paper."""
    pti: PTIConfig = field(default_factory=PTIConfig)
    """PTI settings (600 latent + 350 tuning steps by default)."""

    def validate(self) -> "EvalConfig":
        for name in ("pairs", "views", "weights", "anchor_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"eval {name}={getattr(self, name)}: must be >= 1")
        if self.weights < 2:
            raise ValueError(f"eval weights={self.weights}: need at least 2 (t = 0 and t = 1)")
        if not self.inversion_yaws or not self.inversion_pitches:
            raise ValueError("eval inversion pose grid is empty")
        if self.max_test_photos is not None and self.max_test_photos < 1:
            raise ValueError(f"eval max_test_photos={self.max_test_photos}: must be >= 1")
        self.pti.validate()
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class ModelSpec:
    """One row of the tables: a name and an adapter file, or None for the pretrained model itself."""

    name: str
    adapter: Path | None

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        """'NAME=ADAPTER_FILE' or 'NAME=pretrained'."""
        name, sep, value = text.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"--models entry {text!r}: expected NAME=ADAPTER_FILE or NAME=pretrained")
        if value.strip() == PRETRAINED:
            return cls(name.strip(), None)
        path = Path(value.strip())
        if not path.is_file():
            raise FileNotFoundError(f"--models entry {text!r}: adapter file not found: {path}")
        return cls(name.strip(), path)


@dataclass
class Photos:
    """Photos at the generator's resolution with their cameras."""

    images: torch.Tensor
    """[N, 3, S, S] in [-1, 1]."""
    cameras: torch.Tensor
    """[N, 25]."""
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)

    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(self.images.detach().float().contiguous().numpy().tobytes())
        h.update(self.cameras.detach().float().contiguous().numpy().tobytes())
        h.update("\n".join(self.names).encode())
        return "sha256:" + h.hexdigest()


def load_photos(dataset_dir: str | Path, resolution: int) -> Photos:
    """A dataset folder (EG3D dataset.json + crops, as `cli.py preprocess` writes) at `resolution`."""
    from train.data import load_training_set
    data = load_training_set(dataset_dir, resolution)
    return Photos(data.images, data.cameras, list(data.names))


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def sample_pairs(n: int, count: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """`count` pairs of two different indices in [0, n), each pair drawn independently."""
    if n < 2:
        raise ValueError(f"anchor pairs need at least 2 photos, got {n}")
    return [tuple(int(i) for i in rng.choice(n, size=2, replace=False)) for _ in range(count)]


def sample_views(rng: np.random.Generator, shape: tuple[int, ...], yaw_range: float, pitch_range: float
                 ) -> np.ndarray:
    """Random (yaw, pitch) offsets, uniform in the ranges: array shape + (2,)."""
    yaw = rng.uniform(-yaw_range, yaw_range, size=shape)
    pitch = rng.uniform(-pitch_range, pitch_range, size=shape)
    return np.stack([yaw, pitch], axis=-1)


@torch.no_grad()
def render_poses(G, ws: torch.Tensor, poses, batch: int = 10) -> torch.Tensor:
    """Images [P, 3, S, S] of one latent ws [1, num_ws, w_dim] from (yaw, pitch) poses; tri-planes once."""
    planes = G.planes(ws, noise_mode="const")
    cams = camera_batch(G, [(float(y), float(p)) for y, p in poses])
    out = []
    for i in range(0, len(cams), batch):
        c = cams[i:i + batch]
        n = len(c)
        out.append(G.render_planes(planes.expand(n, -1, -1, -1, -1), ws.expand(n, -1, -1), c,
                                   sampling="deterministic")["image"])
    return torch.cat(out)


@dataclass
class TrueViews:
    """The truth of one test photo at other cameras: same person, same appearance."""

    poses: list[tuple[float, float]]
    """(yaw, pitch) of each view."""
    images: torch.Tensor
    """[P, 3, S, S] in [-1, 1] at the generator's resolution."""
    depth: torch.Tensor
    """[P, 1, S, S] depth along the unit ray (the generator's image_depth convention)."""
    mask: torch.Tensor
    """[P, 1, S, S] coverage of the true surface in [0, 1]."""


class Protocol:
    """Runs the protocol for several models on one person's test and reference photos.

    `run(models)` returns a JSON-ready dict with every raw number (see `evaluation.report` for the tables).
    """

    def __init__(self, G, test: Photos, reference: Photos, backend: IdentityBackend,
                 config: EvalConfig | None = None, cache_dir: str | Path | None = None,
                 log: Callable[[str], None] | None = None,
                 ground_truth: Callable[[int], TrueViews] | None = None):
        self.G, self.config = G, (config or EvalConfig()).validate()
        self.ground_truth = ground_truth
        self.backend, self.cache_dir = backend, cache_dir
        self.log = log or (lambda message: None)
        if self.config.max_test_photos is not None:
            test = Photos(test.images[:self.config.max_test_photos], test.cameras[:self.config.max_test_photos],
                          test.names[:self.config.max_test_photos])
        self.test, self.reference = test, reference
        self.metrics = ImageMetrics(self.config.lpips_net)
        self.scorer = IdentityScorer(backend, reference.images, reference.names)
        cfg = self.config
        self.t_values = np.linspace(0.0, 1.0, cfg.weights)
        self.inversion_poses = [(y, p) for p in cfg.inversion_pitches for y in cfg.inversion_yaws]
        self.plan = {}
        for k, (label, photos) in enumerate((("train", reference), ("test", test))):
            rng = np.random.default_rng([cfg.seed, 1000 + k])
            pairs = sample_pairs(len(photos), cfg.pairs, rng) if len(photos) >= 2 else []
            views = sample_views(rng, (len(pairs), cfg.weights, cfg.views), cfg.yaw_range, cfg.pitch_range)
            self.plan[label] = {"pairs": pairs, "views": views}
        self.reconstructions: dict[str, torch.Tensor] = {}
        """Model name -> PTI reconstructions [N_test, 3, S, S] (for pictures; not part of the JSON)."""
        self._tune_lpips = None
        self._projector_lpips = None

    def _nets(self):
        from perception.lpips import LPIPS
        if self._tune_lpips is None:
            self._tune_lpips = LPIPS(net=self.config.pti.lpips_net)
            self._projector_lpips = LPIPS(net="vgg")
        return self._tune_lpips, self._projector_lpips

    def run(self, models: list[ModelSpec]) -> dict:
        from generator.adapter_file import base_fingerprint
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        t0 = time.perf_counter()
        result = {
            "config": self.config.to_dict(),
            "identity": self.backend.describe(),
            "metrics": self.metrics.describe(),
            "base_fingerprint": base_fingerprint(self.G),
            "generator": {"img_resolution": self.G.img_resolution,
                          "parameters": sum(p.numel() for p in self.G.parameters())},
            "data": {"test": {"names": self.test.names, "digest": self.test.digest()},
                     "reference": {"names": self.reference.names, "digest": self.reference.digest(),
                                   "no_face": self.scorer.reference_no_face}},
            "t_values": self.t_values.tolist(),
            "inversion_poses": [list(p) for p in self.inversion_poses],
            "plan": {k: {"pairs": [list(p) for p in v["pairs"]], "views": v["views"].round(6).tolist()}
                     for k, v in self.plan.items()},
            "models": [],
        }
        for spec in models:
            result["models"].append(self.evaluate_model(spec))
        result["seconds"] = time.perf_counter() - t0
        return result

    def _load(self, spec: ModelSpec):
        from generator.adapter_file import load_adapter
        if spec.adapter is None:
            return None, None, {"name": spec.name, "adapter": None, "kind": PRETRAINED,
                                "parameters": sum(p.numel() for p in self.G.parameters())}
        person, anchors, meta = load_adapter(spec.adapter, self.G)
        info = {"name": spec.name, "adapter": str(spec.adapter), "adapter_sha256": file_sha256(spec.adapter),
                "kind": meta["policy"]["mode"], "policy": meta["policy"], "parameters": person.num_parameters(),
                "adapter_extra": meta.get("extra", {})}
        return person, anchors, info

    def evaluate_model(self, spec: ModelSpec) -> dict:
        t0 = time.perf_counter()
        person, anchors, info = self._load(spec)
        self.log(f"[{spec.name}] inversion of {len(self.test)} test photo(s) "
                 f"(PTI {self.config.pti.latent_steps}+{self.config.pti.tune_steps} steps)")
        info["inversion"], pivots, self.reconstructions[spec.name] = self._inversion(spec.name, person)
        self.log(f"[{spec.name}] synthesis: training-photo anchors")
        train_ws, info["train_anchor_sources"] = self._train_anchors(person, anchors)
        info["synthesis_train"] = self._synthesis("train", person, train_ws)
        self.log(f"[{spec.name}] synthesis: test-photo anchors")
        info["synthesis_test"] = self._synthesis("test", person, pivots)
        info["seconds"] = time.perf_counter() - t0
        return info

    def _inversion(self, name: str, person) -> tuple[dict, torch.Tensor, torch.Tensor]:
        tune_lpips, projector_lpips = self._nets()
        per_photo, pivots, recons = [], [], []
        for i, photo_name in enumerate(self.test.names):
            photo, cam = self.test.images[i], self.test.cameras[i]
            r = pti_invert(self.G, photo, cam, person=person, config=self.config.pti, cache_dir=self.cache_dir,
                           tune_lpips=tune_lpips, projector_lpips=projector_lpips)
            recon = r.image.unsqueeze(0)
            dists = float(self.metrics.dists(recon, photo.unsqueeze(0))[0])
            lpips = float(self.metrics.lpips(recon, photo.unsqueeze(0))[0])
            with frozen(self.G):
                attach(self.G, r.adapter)
                try:
                    renders = render_poses(self.G, r.ws, self.inversion_poses)
                finally:
                    detach(self.G)
            scores = self.scorer.score(renders)
            cross = self._cross_view(i, r) if self.config.cross_view else None
            truth = self._true_views(i, r) if self.ground_truth is not None else None
            per_photo.append({"photo": photo_name, "dists": dists, "lpips": lpips, "cross_view": cross,
                              "ground_truth": truth,
                              "lpips_latent_only": float(self.metrics.lpips(r.image_latent.unsqueeze(0),
                                                                            photo.unsqueeze(0))[0]),
                              "id_scores": _nan_to_none(scores.scores), "id_nearest": scores.nearest.tolist(),
                              "tune_steps_run": r.tune_steps_run, "seconds": r.seconds})
            self.log(f"  {photo_name}: DISTS {dists:.4f}  LPIPS {lpips:.4f}  "
                     f"ID {summarize(scores.scores)['mean']:.4f}  ({r.tune_steps_run} tuning steps)")
            pivots.append(r.w)
            recons.append(r.image)
        summary = {
            "dists": _mean_std([p["dists"] for p in per_photo]),
            "lpips": _mean_std([p["lpips"] for p in per_photo]),
            "id": summarize(np.array([_none_to_nan(p["id_scores"]) for p in per_photo])),
        }
        if self.ground_truth is not None:
            summary["ground_truth"] = {k: _mean_std(sum((p["ground_truth"][k] for p in per_photo), []))
                                       for k in ("lpips", "psnr", "depth_mae")}
        if self.config.cross_view:
            summary["cross_view"] = {k: _mean_std(sum((p["cross_view"][k] for p in per_photo), []))
                                     for k in ("dists", "lpips")}
        return {"per_photo": per_photo, "summary": summary}, torch.stack(pivots), torch.stack(recons)

    def _cross_view(self, i: int, r) -> dict:
        """DISTS/LPIPS of inversion i rendered at every other test camera vs that test photo."""
        others = [j for j in range(len(self.test)) if j != i]
        if not others:
            return {"photos": [], "dists": [], "lpips": []}
        with frozen(self.G), torch.no_grad():
            attach(self.G, r.adapter)
            try:
                renders = torch.cat([self.G.synthesis(r.ws, self.test.cameras[j:j + 1], noise_mode="const")["image"]
                                     for j in others])
            finally:
                detach(self.G)
        targets = self.test.images[others]
        return {"photos": [self.test.names[j] for j in others],
                "dists": self.metrics.dists(renders, targets).tolist(),
                "lpips": self.metrics.lpips(renders, targets).tolist()}

    def _true_views(self, i: int, r) -> dict:
        """LPIPS, PSNR and raw-depth error of inversion i (tuned model, pivot) at the true views of test photo i."""
        from evaluation.metrics import depth_error, psnr
        truth = self.ground_truth(i)
        cams = camera_batch(self.G, truth.poses)
        with frozen(self.G), torch.no_grad():
            attach(self.G, r.adapter)
            try:
                out = self.G.synthesis(r.ws.expand(len(cams), -1, -1), cams, noise_mode="const",
                                       sampling="deterministic")
            finally:
                detach(self.G)
        return {"poses": [list(p) for p in truth.poses],
                "lpips": self.metrics.lpips(out["image"], truth.images).tolist(),
                "psnr": psnr(out["image"], truth.images).tolist(),
                "depth_mae": depth_error(out["image_depth"], truth.depth, truth.mask).tolist()}

    def _train_anchors(self, person, anchors) -> tuple[torch.Tensor, list[str]]:
        """One latent per reference photo: the adapter's stored anchor of that name, else a projection."""
        ws, sources, missing = [None] * len(self.reference), [None] * len(self.reference), []
        for i, name in enumerate(self.reference.names):
            if anchors is not None and name in anchors.names:
                ws[i] = anchors.ws_plus(self.G.num_ws)[anchors.names.index(name)]
                sources[i] = "adapter anchor"
            else:
                missing.append(i)
        if missing:
            from train.config import ProjectorConfig
            from train.projector import project_batch
            self.log(f"  projecting {len(missing)} training photo(s) without a stored anchor "
                     f"({self.config.anchor_steps} steps)")
            _, projector_lpips = self._nets()
            cfg = ProjectorConfig(**{**self.config.pti.projector, "steps": self.config.anchor_steps})
            with frozen(self.G):
                attach(self.G, person)
                try:
                    w = project_batch(self.G, self.reference.images[missing], self.reference.cameras[missing],
                                      config=cfg, seed=self.config.seed, cache_dir=self.cache_dir,
                                      lpips=projector_lpips)
                finally:
                    detach(self.G)
            for j, i in enumerate(missing):
                ws[i] = broadcast_ws(self.G, w[j])[0]
                sources[i] = f"projected ({self.config.anchor_steps} steps)"
        return torch.stack(ws), sources

    def _synthesis(self, label: str, person, anchor_ws: torch.Tensor) -> dict:
        plan = self.plan[label]
        if not plan["pairs"]:
            return {"skipped": f"fewer than 2 {label} photos", "scores": [], "summary": summarize([])}
        if anchor_ws.ndim == 2:
            anchor_ws = torch.stack([broadcast_ws(self.G, w)[0] for w in anchor_ws])
        scores = np.full((len(plan["pairs"]), len(self.t_values), self.config.views), np.nan)
        with frozen(self.G):
            attach(self.G, person)
            try:
                for p, (a, b) in enumerate(plan["pairs"]):
                    for k, t in enumerate(self.t_values):
                        ws = ((1.0 - t) * anchor_ws[a] + t * anchor_ws[b]).unsqueeze(0)
                        renders = render_poses(self.G, ws, plan["views"][p, k])
                        scores[p, k] = self.scorer.score(renders).scores
            finally:
                detach(self.G)
        per_t = [summarize(scores[:, k]) for k in range(len(self.t_values))]
        s = summarize(scores)
        self.log(f"  ID {s['mean']:.4f} over {s['n_scored']} renders"
                 + (f" ({s['n_no_face']} without a face)" if s["n_no_face"] else ""))
        return {"scores": _nan_to_none(scores), "per_t": per_t, "summary": s}


def _mean_std(values: list[float]) -> dict:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std()), "n": int(a.size)}


def _nan_to_none(a: np.ndarray):
    """JSON has no NaN: a render without a face is stored as null."""
    return np.where(np.isnan(a), None, np.round(a, 6)).tolist() if np.asarray(a).size else []


def _none_to_nan(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
