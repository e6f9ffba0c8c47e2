"""ID score (paper §4.1, after MyStyle): cosine similarity of a render to its NEAREST reference photo.

For each rendered image, identity features are compared with the features of every photo of the person's
reference set D_p; the score is the largest cosine similarity (and `nearest` says which reference gave it).

Backends (`make_identity_backend(spec)`); the only default is the identity network a model directory carries
(`model_identity_backend`: its identity.safetensors, as `models/heads` has), and a table always says which one
made it:

* ``arcface:PATH`` - a face-recognition network you bring (`model_ir_se50.pth`, arcface_torch `.pth`,
  insightface `.onnx`), via `perception.identity.IdentityEncoder.from_file`. This is the paper's ID score.
* ``heads`` - the identity network of the built-in procedural head world (`perception.heads_identity`, trained
  on that world's people; the file is `models/heads/identity.safetensors`): meaningful for the built-in model and
  its photos, not comparable with ArcFace.
* ``dlib`` - dlib's 128-d face descriptor (offline, not differentiable), labelled "not ArcFace" everywhere: its
  similarities are on another scale than the paper's ArcFace scores. It detects faces itself: a render or a
  reference in which it finds no face has no score. Such images are counted and reported
  (`ScoreBatch.no_face`, `summarize`), never silently left out of a mean.
* ``random:ARCH[:SEED]`` - a randomly initialised network of that architecture (`IdentityEncoder.random`). It
  measures nothing about identity: random convolutional features respond to colours, layout and texture. It
  exists so the protocol can run end to end where no face-recognition weights exist (CI, the synthetic
  ground-truth setup), and its table header says "smoke test only".

Every image is clamped to [-1, 1] before any backend sees it (a generator can overshoot; a saved PNG cannot).
"""
from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from formats.model_dir import IDENTITY_FILE, identity_file

CROPS = ("full", "psp", "arcface_ffhq")
SPECS = "arcface:PATH | heads | dlib"
"""The identity backends a paper-style table may name (plus random:ARCH[:SEED] for smoke tests)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


class IdentityBackend:
    """Images -> unit-length identity features, or None for an image where the backend finds no face."""

    spec: str
    """The spec it was made from (e.g. 'dlib', 'random:ir_se50:0')."""
    label: str
    """Column header in tables, e.g. 'ID (ArcFace ir_se50)' or 'ID (random-init ir_se50, smoke test only)'."""
    smoke_test: bool
    """True when the features carry no identity information (random networks)."""
    arcface: bool = False
    """True for ArcFace-family weights the user brought: the only backend whose numbers compare with the paper's."""

    def features(self, images: torch.Tensor) -> list[np.ndarray | None]:
        raise NotImplementedError

    def describe(self) -> dict:
        raise NotImplementedError


class EncoderBackend(IdentityBackend):
    """An `IdentityEncoder` (ArcFace-family network): always returns a feature (it has no face detector)."""

    def __init__(self, encoder, spec: str, label: str, smoke_test: bool, source: dict | None = None,
                 batch_size: int = 16, arcface: bool = False):
        self.encoder, self.spec, self.label, self.smoke_test = encoder, spec, label, smoke_test
        self.arcface = arcface
        self.source = source or {}
        self.batch_size = batch_size

    def features(self, images: torch.Tensor) -> list[np.ndarray | None]:
        feats = self.encoder.embed(images.detach().float().cpu(), batch_size=self.batch_size)
        return [f.astype(np.float64) for f in feats]

    def describe(self) -> dict:
        return {"spec": self.spec, "label": self.label, "network": self.encoder.arch, "crop": self.encoder.crop.name,
                "smoke_test": self.smoke_test, "arcface": self.arcface, **self.source}


class HeadsBackend(IdentityBackend):
    """The built-in head world's identity network (images in [-1, 1] -> L2-normalised embeddings)."""

    def __init__(self, network, weights: Path, batch_size: int = 16,
                 label: str = "ID (built-in heads identity network, not ArcFace)"):
        self.network, self.weights, self.batch_size = network.eval(), Path(weights), batch_size
        self.spec, self.label, self.smoke_test = "heads", label, False

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> list[np.ndarray | None]:
        x = images.detach().float().cpu()
        out = [self.network(x[i:i + self.batch_size]).float() for i in range(0, len(x), self.batch_size)]
        feats = torch.cat(out).double().numpy() if out else np.zeros((0, 0))
        return [f / max(np.linalg.norm(f), 1e-12) for f in feats]

    def describe(self) -> dict:
        # A model directory's member is named with its directory ('heads/identity.safetensors'): the bare name
        # would be the same for every model. Never a full path: reports travel.
        name = self.weights.name
        if name == IDENTITY_FILE:
            name = f"{self.weights.parent.name}/{name}"
        return {"spec": self.spec, "label": self.label, "network": "perception.heads_identity",
                "weights": name, "weights_sha256": _sha256(self.weights) if self.weights.is_file()
                else None, "smoke_test": False, "arcface": False}


class DlibBackend(IdentityBackend):
    """dlib's face descriptor; None where its HOG detector finds no face."""

    def __init__(self, descriptor=None):
        from perception.identity import DlibFaceDescriptor
        self.descriptor = descriptor or DlibFaceDescriptor()
        self.spec, self.label, self.smoke_test = "dlib", "ID (dlib face descriptor, not ArcFace)", False

    def features(self, images: torch.Tensor) -> list[np.ndarray | None]:
        out = []
        for d in self.descriptor.descriptors(images.detach().float().cpu()):
            out.append(None if d is None else (d / np.linalg.norm(d)).astype(np.float64))
        return out

    def describe(self) -> dict:
        return {"spec": self.spec, "label": self.label, "network": "dlib_face_recognition_resnet_model_v1",
                "detector": "dlib HOG frontal face detector", "smoke_test": False, "arcface": False}


class IdentityBackendUnavailable(RuntimeError):
    """A named backend cannot be built here; the one-line message says why and what to do."""


def _heads_module(what: str):
    """perception.heads_identity, imported lazily (it is built by the head-world pipeline); `what` names the
    backend in the one-line error when it cannot be imported."""
    try:  # import_module goes through sys.modules (an attribute of the perception package would not)
        return importlib.import_module("perception.heads_identity")
    except ImportError as exc:
        raise IdentityBackendUnavailable(
            f"{what}: the built-in head world's identity network is not available here "
            f"(perception.heads_identity cannot be imported: {exc}); use --identity arcface:PATH or dlib") from None


def _heads_backend(path: Path | None = None) -> HeadsBackend:
    """The built-in world's identity network (perception.heads_identity.HEADS_IDENTITY_WEIGHTS, or `path`)."""
    heads_identity = _heads_module("--identity heads")
    weights = Path(path) if path is not None else Path(heads_identity.HEADS_IDENTITY_WEIGHTS)
    if not weights.is_file():
        raise IdentityBackendUnavailable(
            f"--identity heads: the built-in head world's identity weights are missing ({weights}); build them "
            f"first or use --identity arcface:PATH or dlib")
    return HeadsBackend(heads_identity.load_heads_identity(weights), weights)


def model_identity_backend(model_dir: str | Path) -> HeadsBackend | None:
    """The default of `eval --model DIR`: the identity network DIR carries (formats.model_dir.identity_file, checked;
    a file there that is not one is an error naming it), or None if it has none."""
    path = identity_file(model_dir)
    if path is None:
        return None
    heads_identity = _heads_module(f"the identity network of model directory {model_dir}")
    return HeadsBackend(heads_identity.load_heads_identity(path), path,
                        label=f"ID (heads identity network of model {Path(model_dir).name}, not ArcFace)")


def make_identity_backend(spec: str | None, crop: str = "full") -> IdentityBackend:
    """'arcface:PATH' | 'heads' | 'dlib' | 'random:ARCH[:SEED]' (smoke tests); None or '' is refused.

    `crop` (ArcFace-family networks): 'full' pools the whole render to 112x112 as MyStyle's ID score and the
    My3DGen authors' code do; 'psp' / 'arcface_ffhq' use the face boxes of `perception.identity`.
    """
    from perception.identity import ARCHS, IdentityEncoder
    if not spec:
        raise ValueError(f"no identity backend named: give --identity {SPECS}, or a --model directory that "
                         f"carries its identity network (identity.safetensors, as models/heads does); an ID score "
                         f"is only meaningful with the network named beside it")
    if crop not in CROPS:
        raise ValueError(f"identity crop {crop!r}: expected one of {CROPS}")
    kind, _, rest = spec.partition(":")
    if kind == "dlib" and not rest:
        return DlibBackend()
    if kind == "heads" and not rest:
        return _heads_backend()
    if kind == "arcface" and rest:
        path = Path(rest)
        if not path.is_file():
            raise FileNotFoundError(f"--identity {spec}: weights file not found: {path}")
        encoder = IdentityEncoder.from_file(path, crop=crop)
        return EncoderBackend(encoder, spec, f"ID (ArcFace {encoder.arch})", smoke_test=False,
                              source={"weights": path.name, "weights_sha256": _sha256(path)}, arcface=True)
    if kind == "random" and rest:
        arch, _, seed = rest.partition(":")
        if arch not in ARCHS:
            raise ValueError(f"--identity {spec}: unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
        try:
            seed_value = int(seed) if seed else 0
        except ValueError:
            raise ValueError(f"--identity {spec}: seed {seed!r} is not an integer") from None
        encoder = IdentityEncoder.random(arch, seed=seed_value, crop=crop)
        return EncoderBackend(encoder, f"random:{arch}:{seed_value}",
                              f"ID (random-init {arch}, smoke test only)", smoke_test=True,
                              source={"weights": f"random init, seed {seed_value}"})
    raise ValueError(f"--identity {spec!r}: expected {SPECS} (or random:ARCH[:SEED] for smoke tests)")


@dataclass
class ScoreBatch:
    """ID scores of a batch of renders against the reference set."""

    scores: np.ndarray
    """[N] float64: cosine similarity to the nearest reference; NaN where the backend found no face."""
    nearest: np.ndarray
    """[N] int: index (into the scored references) of the nearest reference; -1 where no face."""

    @property
    def no_face(self) -> int:
        return int(np.isnan(self.scores).sum())


def nearest_reference(features: np.ndarray, references: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity of each row of `features` [N, D] to its nearest row of `references` [R, D]."""
    a = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    b = references / np.maximum(np.linalg.norm(references, axis=1, keepdims=True), 1e-12)
    sims = a @ b.T
    nearest = sims.argmax(axis=1)
    return sims[np.arange(len(a)), nearest], nearest


class IdentityScorer:
    """A backend plus the features of one person's reference photos; `score(renders)` -> `ScoreBatch`.

    Reference photos in which the backend finds no face cannot serve as references: they are listed in
    `reference_no_face` (names) and reported; if none is left, construction fails.
    """

    def __init__(self, backend: IdentityBackend, reference_images: torch.Tensor,
                 reference_names: list[str] | None = None):
        names = reference_names or [f"reference{i}" for i in range(len(reference_images))]
        if len(names) != len(reference_images):
            raise ValueError(f"{len(names)} reference names for {len(reference_images)} reference images")
        feats = backend.features(reference_images.clamp(-1.0, 1.0))
        self.backend = backend
        self.reference_names = [n for n, f in zip(names, feats) if f is not None]
        self.reference_no_face = [n for n, f in zip(names, feats) if f is None]
        if not self.reference_names:
            raise ValueError(f"identity backend {backend.spec!r} found no face in any of the {len(names)} "
                             f"reference photos; it cannot score this person")
        self.references = np.stack([f for f in feats if f is not None])

    def score(self, images: torch.Tensor) -> ScoreBatch:
        """Scores of images [N, 3, H, W] (clamped to [-1, 1] first) against the references."""
        feats = self.backend.features(images.clamp(-1.0, 1.0))
        scores = np.full(len(feats), np.nan)
        nearest = np.full(len(feats), -1, dtype=np.int64)
        found = [i for i, f in enumerate(feats) if f is not None]
        if found:
            s, n = nearest_reference(np.stack([feats[i] for i in found]), self.references)
            scores[found], nearest[found] = s, n
        return ScoreBatch(scores, nearest)


def summarize(scores) -> dict:
    """Mean/std over the renders that got a score, with how many renders had no face (never hidden)."""
    values = np.asarray(scores, dtype=np.float64).ravel()
    ok = values[~np.isnan(values)]
    return {"mean": float(ok.mean()) if ok.size else float("nan"),
            "std": float(ok.std()) if ok.size else float("nan"),
            "n_scored": int(ok.size), "n_no_face": int(values.size - ok.size)}
