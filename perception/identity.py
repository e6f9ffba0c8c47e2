"""Identity encoders: ArcFace features for the symmetry loss (differentiable) and ID scores (evaluation).

Two backends share one call shape, `embed(images) -> np.ndarray [N, D]` of unit-length features:

* `IdentityEncoder` (torch, differentiable): IR-SE50 (`model_ir_se50.pth`, the network the My3DGen authors,
  MyStyle and pSp use), arcface_torch IResNet50/100 `.pth`, or insightface ONNX (`w600k_r50.onnx`, converted
  on load). `forward(images)` keeps the autograd graph, so it serves the training loss.
* `DlibFaceDescriptor` (numpy, not differentiable): dlib's 128-d face descriptor with its own detector and
  5-point alignment, from `face-recognition-models` - the one identity model that is available offline.

Images are generator outputs: NCHW, RGB, in [-1, 1], any size (EG3D renders 512x512).

Face crop (why the numbers): recognition networks expect a 112x112 face crop, while generator images are
whole FFHQ-style portraits. `FaceCrop` reproduces the crops used by the reference code:

* "psp": pSp `criteria/id_loss.py` `IDLoss.extract_feats` (also used by e4e/ReStyle/HyperStyle): the image
  is average-pooled to 256x256 (pSp's `face_pool`), rows 35:223 and columns 32:220 are kept (188x188), and
  the crop is adaptively average-pooled to 112x112. Default for IR-SE50.
* "arcface_ffhq": the box where the insightface 112x112 alignment template (eyes, nose, mouth corners, the
  crop every arcface_torch/insightface model was trained on) falls inside an FFHQ-aligned image. It is
  derived in `arcface_box_in_ffhq` by applying FFHQ's alignment rule (ffhq-dataset `recreate_aligned_images`)
  to the template's own landmarks: rows 31:226, columns 30:226 of the 256x256 pooled image, close to pSp's
  box but slightly larger. Default for IResNet/ONNX models.
* "full": no crop, the whole image is pooled to 112x112. This is what the My3DGen authors' released code
  does (`eg3d/training/loss.py` `PersonIdentifier.get_feature`: clamp to [-1, 1], `AdaptiveAvgPool2d(112)`
  on the 512x512 render) and MyStyle's `utils/id_utils.py` (its pSp crop line is commented out).

EG3D's FFHQ images are re-cropped more loosely than the original FFHQ alignment, so on EG3D renders the
"psp"/"arcface_ffhq" boxes contain a little more than the template face; "full" reproduces the authors.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from perception.ir_se50 import IRSE50, is_ir_se50_state_dict, load_state_dict_checked, read_state_dict
from perception.iresnet import LAYERS as IRESNET_LAYERS
from perception.iresnet import IResNet, infer_iresnet_config, is_iresnet_state_dict

ARCFACE_TEMPLATE_112 = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)
"""insightface's 112x112 five-point alignment template (image-left eye, image-right eye, nose, mouth corners)."""

ARCHS = ("ir_se50",) + tuple(IRESNET_LAYERS)


def arcface_box_in_ffhq(template: Sequence[Sequence[float]] = ARCFACE_TEMPLATE_112, size: int = 112):
    """(top, bottom, left, right) of the `size`x`size` template crop, as fractions of an FFHQ-aligned image.

    FFHQ alignment maps a face to the square with centre c = eye_avg + 0.1 * eye_to_mouth and half side
    max(2.0 * |eye_to_eye|, 1.8 * |eye_to_mouth|) (oriented along eye_to_eye minus the rotated
    eye_to_mouth). Applying that rule to the template's landmarks tells where the template square lies
    inside the aligned image; the rotation involved is 0.3 degrees and is ignored.
    """
    eye_l, eye_r, _, mouth_l, mouth_r = (np.asarray(p, dtype=np.float64) for p in template)
    eye_avg, mouth_avg = (eye_l + eye_r) / 2, (mouth_l + mouth_r) / 2
    eye_to_eye, eye_to_mouth = eye_r - eye_l, mouth_avg - eye_avg
    half = max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    centre = eye_avg + eye_to_mouth * 0.1

    def frac(p: float, c: float) -> float:
        return float((p - c) / (2 * half) + 0.5)

    return frac(0, centre[1]), frac(size, centre[1]), frac(0, centre[0]), frac(size, centre[0])


@dataclass(frozen=True)
class FaceCrop:
    """Pool to `pre_size` (if set), keep rows top:bottom and columns left:right (if set), pool to `out_size`."""

    name: str
    pre_size: int | None
    box: tuple[int, int, int, int] | None
    out_size: int = 112

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_size is not None and tuple(x.shape[-2:]) != (self.pre_size, self.pre_size):
            x = F.adaptive_avg_pool2d(x, (self.pre_size, self.pre_size))
        if self.box is not None:
            top, bottom, left, right = self.box
            x = x[:, :, top:bottom, left:right]
        if tuple(x.shape[-2:]) != (self.out_size, self.out_size):
            x = F.adaptive_avg_pool2d(x, (self.out_size, self.out_size))
        return x


def _arcface_ffhq_crop(pre_size: int = 256) -> FaceCrop:
    top, bottom, left, right = (round(f * pre_size) for f in arcface_box_in_ffhq())
    return FaceCrop("arcface_ffhq", pre_size, (top, bottom, left, right))


CROPS = {
    "psp": FaceCrop("psp", 256, (35, 223, 32, 220)),
    "arcface_ffhq": _arcface_ffhq_crop(),
    "full": FaceCrop("full", None, None),
}


def _resolve_crop(crop: str | FaceCrop | None, arch: str) -> FaceCrop:
    if isinstance(crop, FaceCrop):
        return crop
    if crop is None:
        crop = "psp" if arch == "ir_se50" else "arcface_ffhq"
    if crop not in CROPS:
        raise ValueError(f"unknown face crop {crop!r}; known: {sorted(CROPS)} or a FaceCrop")
    return CROPS[crop]


def _build(arch: str, fused_bn: bool = False) -> nn.Module:
    if arch == "ir_se50":
        return IRSE50()
    if arch in IRESNET_LAYERS:
        return IResNet(IRESNET_LAYERS[arch], fused_bn=fused_bn)
    raise ValueError(f"unknown identity arch {arch!r}; known: {list(ARCHS)}")


def images_to_tensor(images) -> torch.Tensor:
    """Generator tensor NCHW/CHW in [-1, 1] (returned as is, batched), or uint8 numpy HWC/NHWC -> NCHW [-1, 1]."""
    if isinstance(images, torch.Tensor):
        return images.unsqueeze(0) if images.dim() == 3 else images
    array = np.asarray(images)
    if array.dtype != np.uint8:
        raise TypeError(f"numpy images must be uint8 HWC/NHWC RGB, got dtype {array.dtype}")
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"numpy images must be HWC/NHWC with 3 channels, got shape {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def images_to_uint8(images) -> np.ndarray:
    """Inverse of `images_to_tensor`: NHWC uint8 RGB from a [-1, 1] tensor or a uint8 array."""
    if isinstance(images, torch.Tensor):
        x = images_to_tensor(images).detach().float().cpu()
        return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    array = np.asarray(images)
    if array.dtype != np.uint8:
        raise TypeError(f"numpy images must be uint8 HWC/NHWC RGB, got dtype {array.dtype}")
    return array[None] if array.ndim == 3 else array


class IdentityEncoder(nn.Module):
    """Frozen face-recognition network + face crop: images [N, 3, H, W] in [-1, 1] -> unit features [N, 512].

    Differentiable w.r.t. the images; the network's weights never train and it stays in eval mode even when
    a parent module calls `.train()` (BatchNorm must keep its running statistics).
    """

    dim = 512

    def __init__(self, backbone: nn.Module, arch: str, crop: str | FaceCrop | None = None, clamp: bool = False):
        super().__init__()
        self.backbone = backbone
        self.arch = arch
        self.crop = _resolve_crop(crop, arch)
        self.clamp = clamp
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    @property
    def name(self) -> str:
        return f"{self.arch}/{self.crop.name}"

    @classmethod
    def from_file(cls, path: str | Path, arch: str | None = None, crop: str | FaceCrop | None = None,
                  clamp: bool = False) -> "IdentityEncoder":
        """Load `model_ir_se50.pth`, an arcface_torch IResNet `.pth` or an insightface `.onnx`.

        The architecture is inferred from the file (keys or ONNX graph); an explicit `arch` must agree.
        """
        path = Path(path)
        if path.suffix.lower() == ".onnx":
            from perception.onnx_to_iresnet import onnx_to_iresnet

            backbone = onnx_to_iresnet(path)
            found = backbone.arch
        else:
            state_dict = read_state_dict(path)
            if is_ir_se50_state_dict(state_dict):
                found, backbone = "ir_se50", IRSE50()
            elif is_iresnet_state_dict(state_dict):
                layers, fused = infer_iresnet_config(state_dict)
                backbone = IResNet(layers, fused_bn=fused)
                found = backbone.arch
            else:
                raise ValueError(f"{path}: keys match neither IR-SE50 nor arcface_torch IResNet "
                                 f"(first keys: {list(state_dict)[:5]})")
            load_state_dict_checked(backbone, state_dict, str(path))
        if arch is not None and arch != found:
            raise ValueError(f"{path}: requested arch {arch!r} but the file holds {found!r}")
        return cls(backbone, found, crop=crop, clamp=clamp)

    @classmethod
    def random(cls, arch: str = "ir_se50", seed: int = 0, crop: str | FaceCrop | None = None,
               fused_bn: bool = False) -> "IdentityEncoder":
        """Randomly initialised network of the given arch (tests; no weights exist offline).

        Besides PyTorch's default init, BatchNorm affine parameters and running statistics are drawn at
        random so that features depend on the input the way a trained network's do (no layer is an exact
        identity), deterministically from `seed`.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            backbone = _build(arch, fused_bn=fused_bn)
            with torch.no_grad():
                for module in backbone.modules():
                    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                        module.running_mean.uniform_(-0.1, 0.1)
                        module.running_var.uniform_(0.5, 1.5)
                        if module.affine:
                            module.weight.uniform_(0.5, 1.5)
                            module.bias.uniform_(-0.1, 0.1)
        return cls(backbone, arch, crop=crop)

    def train(self, mode: bool = True) -> "IdentityEncoder":
        super().train(mode)
        self.backbone.eval()
        return self

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Face crop at 112x112, in the backbone's dtype; `clamp` limits values to [-1, 1] first."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [N, 3, H, W] in [-1, 1], got shape {tuple(images.shape)}")
        dtype = next(self.backbone.parameters()).dtype
        x = images.to(dtype)
        if self.clamp:
            x = x.clamp(-1.0, 1.0)
        return self.crop(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone(self.preprocess(images)), dim=1)

    @torch.no_grad()
    def embed(self, images, batch_size: int = 16) -> np.ndarray:
        """Evaluation call shape shared with `DlibFaceDescriptor`: unit features as float32 numpy [N, 512]."""
        x = images_to_tensor(images)
        device = next(self.backbone.parameters()).device
        chunks = [self(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, x.shape[0], batch_size)]
        return torch.cat(chunks).numpy()


def identity_similarity(a, b):
    """Cosine similarity of matching rows of two feature batches [N, D] -> [N] (torch or numpy in, same out)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        a, b = torch.as_tensor(a), torch.as_tensor(b)
        return F.cosine_similarity(a, b.to(a), dim=-1)
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    norms = np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
    return (a * b).sum(-1) / norms


def flip_horizontal(images: torch.Tensor) -> torch.Tensor:
    """Mirror NCHW images left-right (the width axis)."""
    return torch.flip(images, dims=[3])


def symmetry_loss(encoder: IdentityEncoder, img_a: torch.Tensor, img_b_mirrored_pair: torch.Tensor) -> torch.Tensor:
    """My3DGen L_sym (paper eq. 2): 1 - cos(ID(G(w, c_k1)), ID(flip(G(w, c_k2)))), averaged over the batch.

    `img_a` and `img_b_mirrored_pair` are renders of the same latents from camera poses mirrored about the
    face's symmetry plane; the second is flipped horizontally before comparison (as in the authors'
    `loss.py`, `torch.flip(gen_img_2, [3])`). Both go through the encoder in one batch.
    """
    if img_a.shape != img_b_mirrored_pair.shape:
        raise ValueError(f"symmetric renders differ in shape: {tuple(img_a.shape)} vs "
                         f"{tuple(img_b_mirrored_pair.shape)}")
    feats = encoder(torch.cat([img_a, flip_horizontal(img_b_mirrored_pair)], dim=0))
    feat_a, feat_b = feats.chunk(2, dim=0)
    return (1.0 - (feat_a * feat_b).sum(dim=1)).mean()


class NoFaceError(ValueError):
    """dlib found no face in some images; `indices` lists them."""

    def __init__(self, indices: list[int]):
        super().__init__(f"no face detected in image(s) {indices}")
        self.indices = indices


def face_recognition_models_dir() -> Path:
    """Folder holding dlib's `.dat` models from the `face-recognition-models` package.

    Located without importing the package (its `__init__` needs `pkg_resources`, which is missing here).
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("package 'face-recognition-models' is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


class DlibFaceDescriptor:
    """dlib ResNet face descriptor (evaluation only; numpy, not differentiable).

    Per image: HOG face detection (largest-score face), 5-point landmarks, 150x150 aligned chip, 128-d
    descriptor. dlib's descriptors are compared by Euclidean distance (same person below 0.6); `embed`
    returns them L2-normalised for cosine scores like `IdentityEncoder`, `descriptors` returns them raw.
    """

    dim = 128
    name = "dlib"

    def __init__(self, models_dir: str | Path | None = None, upsample: int = 1, num_jitters: int = 0):
        import dlib

        folder = Path(models_dir) if models_dir is not None else face_recognition_models_dir()
        files = {k: folder / v for k, v in (("shape", "shape_predictor_5_face_landmarks.dat"),
                                            ("rec", "dlib_face_recognition_resnet_model_v1.dat"))}
        for path in files.values():
            if not path.is_file():
                raise FileNotFoundError(f"dlib model file missing: {path}")
        self._detector = dlib.get_frontal_face_detector()
        self._shape = dlib.shape_predictor(str(files["shape"]))
        self._rec = dlib.face_recognition_model_v1(str(files["rec"]))
        self.upsample = upsample
        self.num_jitters = num_jitters

    def describe(self, image: np.ndarray) -> np.ndarray | None:
        """Raw 128-d descriptor of the most confident face in one uint8 HWC RGB image, or None."""
        image = np.ascontiguousarray(image)
        boxes, scores, _ = self._detector.run(image, self.upsample, 0.0)
        if len(boxes) == 0:
            return None
        best = boxes[int(np.argmax(scores))]
        shape = self._shape(image, best)
        return np.asarray(self._rec.compute_face_descriptor(image, shape, self.num_jitters), dtype=np.float32)

    def descriptors(self, images) -> list[np.ndarray | None]:
        """Raw descriptors (None where no face) for [-1, 1] NCHW tensors or uint8 HWC/NHWC arrays."""
        return [self.describe(image) for image in images_to_uint8(images)]

    def embed(self, images) -> np.ndarray:
        """Unit-length descriptors [N, 128]; raises NoFaceError naming every image without a face."""
        found = self.descriptors(images)
        missing = [i for i, d in enumerate(found) if d is None]
        if missing:
            raise NoFaceError(missing)
        feats = np.stack(found)
        return feats / np.linalg.norm(feats, axis=1, keepdims=True)
