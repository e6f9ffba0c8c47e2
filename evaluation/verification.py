"""Identity verification on the head world: would a face-verification system accept a generated view as the
true person?

A verification system compares two face embeddings by cosine similarity and accepts the pair above a threshold.
The threshold is fixed on impostor pairs (two different people) of held-out calibration people so that a
fraction `far` of them is accepted (the false accept rate, FAR). A generated view *verifies* when its similarity
to an enrolment photo of the true person (a true frontal photo under an appearance no reference photo has) is
above that threshold. Unlike LPIPS against the truth, this asks the question users ask: is it the same person?
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from headworld.params import HELDOUT_SEEDS

CALIBRATION_FIRST_SEED = HELDOUT_SEEDS.start + 500
"""First of the calibration people (held out from pretraining and the identity network; the experiments' people
start at offsets 200 and 300, so no calibration person is evaluated)."""
CALIBRATION_PEOPLE = 150
CALIBRATION_PHOTOS = 4
CALIBRATION_PHOTO_IDS = tuple(range(200, 200 + CALIBRATION_PHOTOS))
"""Appearance ids of the calibration photos (each photo its own expression, light, background and camera)."""
ENROL_PHOTO = 300
"""Appearance id of a person's enrolment photo (no reference, test or calibration photo uses it)."""


def render_people(seeds, photos: list[int], resolution: int, supersample: int = 1) -> dict[str, torch.Tensor]:
    """uint8 images [N, 3, R, R] and person indices [N] of each seed's photos (own appearance and pose each)."""
    from formats.cameras import lookat_label
    from headworld.params import Appearance, Identity
    from headworld.photos import photo_pose
    from headworld.render import render
    ids, apps, labels, person = [], [], [], []
    for i, seed in enumerate(seeds):
        ident = Identity.from_seed(seed)
        for k in photos:
            ids.append(ident)
            apps.append(Appearance.from_seed(seed, k))
            labels.append(lookat_label(*photo_pose(seed, k)))
            person.append(i)
    images = []
    for j in range(0, len(ids), 16):
        out = render(ids[j:j + 16], apps[j:j + 16], np.stack(labels[j:j + 16]), resolution, supersample)
        images.append(((out["image"] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))
    return {"image": torch.cat(images), "person": torch.tensor(person)}


def pair_scores(embeddings: np.ndarray, person: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities of every unordered pair of unit embeddings: (genuine pairs, impostor pairs)."""
    sim = embeddings @ embeddings.T
    iu = np.triu_indices(len(person), 1)
    same = person[iu[0]] == person[iu[1]]
    return sim[iu][same], sim[iu][~same]


def roc_auc(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """Probability that a genuine pair scores above an impostor pair (ties count half): the ROC AUC."""
    scores = np.concatenate([genuine, impostor])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for v in np.unique(scores[np.r_[False, np.diff(scores[order]) == 0]]) if len(scores) else []:
        same = scores == v
        ranks[same] = ranks[same].mean()
    g = len(genuine)
    return float((ranks[:g].sum() - g * (g + 1) / 2) / (g * len(impostor)))


def threshold_at_far(impostor: np.ndarray, far: float) -> float:
    """The similarity above which a fraction `far` of impostor pairs lies."""
    if not 0 < far < 1:
        raise ValueError(f"far={far}: must be in (0, 1)")
    return float(np.quantile(impostor, 1 - far))


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float) -> float:
    """Fraction of genuine pairs above the threshold that lets `far` of impostor pairs through."""
    return float((genuine > threshold_at_far(impostor, far)).mean())


@dataclass(frozen=True)
class Threshold:
    """A verification threshold and how it was set."""

    far: float
    value: float
    """Cosine similarity: pairs above it are accepted."""
    tar: float
    """Genuine pairs of the calibration people accepted at this threshold (photo against photo)."""
    people: int
    impostor_pairs: int

    def to_dict(self) -> dict:
        return asdict(self)


def calibrate(encoder, far: float = 1e-2, first_seed: int = CALIBRATION_FIRST_SEED,
              people: int = CALIBRATION_PEOPLE, resolution: int = 128) -> Threshold:
    """The threshold at `far` from `people` calibration people x CALIBRATION_PHOTOS true photos each.
    `encoder.embed(images in [-1, 1]) -> unit embeddings [N, D]` (numpy), as evaluation.identity_score's."""
    data = render_people(range(first_seed, first_seed + people), list(CALIBRATION_PHOTO_IDS), resolution)
    embeddings = np.asarray(encoder.embed(data["image"].float() / 127.5 - 1))
    genuine, impostor = pair_scores(embeddings, data["person"].numpy())
    return Threshold(far=far, value=threshold_at_far(impostor, far), tar=tar_at_far(genuine, impostor, far),
                     people=people, impostor_pairs=len(impostor))


def cached_threshold(path: Path, encoder, far: float = 1e-2, people: int = CALIBRATION_PEOPLE,
                     log=print) -> Threshold:
    """The threshold at `far` from `people` calibration people, calibrated once and kept in the JSON file `path`
    (recalibrated when the file was made with another far or number of people)."""
    from formats.atomic import write_text
    path = Path(path)
    if path.is_file():
        saved = json.loads(path.read_text())
        if (saved["far"], saved["people"]) == (far, people):
            return Threshold(**saved)
    log(f"calibrating the verification threshold at FAR {far:g} on {people} people")
    threshold = calibrate(encoder, far=far, people=people)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(threshold.to_dict()) + "\n")
    return threshold


def enrolment_photo(seed: int, resolution: int = 128) -> torch.Tensor:
    """The true frontal photo [1, 3, R, R] in [-1, 1] that a person enrols with (appearance ENROL_PHOTO)."""
    from formats.cameras import lookat_label
    from headworld.params import Appearance, Identity
    from headworld.render import render
    out = render([Identity.from_seed(seed)], [Appearance.from_seed(seed, ENROL_PHOTO)],
                 lookat_label(0.0, 0.0)[None], resolution)
    return out["image"]


def verifies(encoder, views: torch.Tensor, enrolment: torch.Tensor, threshold: Threshold) -> np.ndarray:
    """Per view [N]: is its similarity to the enrolment photo above the threshold? (bool)"""
    e = np.asarray(encoder.embed(torch.cat([enrolment, views.clamp(-1, 1)])))
    return (e[1:] @ e[0]) > threshold.value
