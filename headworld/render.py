"""Photos of the head world: sphere tracing of the head SDF from EG3D camera labels, shading, background.

`render(identities, appearances, labels, resolution)` returns, per photo, the RGB image in [-1, 1] (NCHW, the
generator's range), the depth (distance along the unit ray, EG3D's `image_depth` convention; BACKGROUND_DEPTH
where no surface is hit) and the coverage mask in [0, 1]. Rays come from `generator.rendering.sample_rays`, the
generator's own ray code, so a world photo and a generator render with the same label see the same rays.
With `supersample=s`, each pixel averages s x s sub-rays (a sub-pixel grid of the same camera).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from generator.rendering import sample_rays
from headworld.params import APPEARANCE_PARAMS, IDENTITY_PARAMS, Appearance, Identity, stack_params
from headworld.sdf import gather, head_sdf, layout, parts

BACKGROUND_DEPTH = 3.3
"""Depth reported where a ray misses the head: EG3D's ray_end for FFHQ."""
BOX_MIN = (-0.40, -0.80, -0.45)
BOX_MAX = (0.40, 0.45, 0.45)
"""Axis-aligned box that contains every head the parameters can make; rays are traced only inside it."""
STEPS = 72
BOUND_CENTER = (0.0, 0.03, -0.02)
BOUND_RADII = (0.26, 0.36, 0.32)
NECK_A, NECK_B, NECK_RADIUS = (0.0, -0.10, -0.05), (0.0, -0.80, -0.08), 0.1
BOUND_MARGIN = 0.02
BOUND_STEPS = 24
HIT_EPS = 4e-4
RELAX = 0.9

SKIN_PALETTE = ((0.97, 0.84, 0.74), (0.88, 0.68, 0.55), (0.72, 0.52, 0.38), (0.52, 0.35, 0.24), (0.34, 0.22, 0.15))
HAIR_PALETTE = ((0.05, 0.04, 0.035), (0.20, 0.12, 0.07), (0.38, 0.24, 0.13), (0.55, 0.25, 0.10),
                (0.85, 0.70, 0.45), (0.68, 0.68, 0.68))
IRIS_PALETTE = ((0.30, 0.17, 0.08), (0.45, 0.33, 0.15), (0.25, 0.45, 0.70), (0.30, 0.50, 0.30), (0.45, 0.50, 0.55))


def _palette(colours, u: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear colour [B, 3] along a palette for u [B] in [0, 1]."""
    pal = torch.tensor(colours, dtype=torch.float32)
    s = u.clamp(0, 1) * (len(colours) - 1)
    lo = s.floor().long().clamp(max=len(colours) - 2)
    f = (s - lo.float())[:, None]
    return pal[lo] * (1 - f) + pal[lo + 1] * f


def _hsv(h: torch.Tensor, s: float, v: torch.Tensor) -> torch.Tensor:
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], -1)
    return v[:, None] * (1 - s * (torch.minimum(k, 4 - k).clamp(0, 1)))


def _colours(idn: dict[str, torch.Tensor], app: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-photo colours and light [B, 3] (albedos in linear RGB)."""
    skin = _palette(SKIN_PALETTE, idn["skin_tone"])
    skin = skin * torch.stack([1 + 0.06 * (idn["skin_warmth"] - 0.5), torch.ones_like(skin[:, 0]),
                               1 - 0.08 * (idn["skin_warmth"] - 0.5)], -1)
    hair = _palette(HAIR_PALETTE, idn["hair_colour"])
    iris = _palette(IRIS_PALETTE, idn["iris_colour"])
    warm = app["light_warmth"][:, None]
    light = (torch.tensor([1.0, 0.86, 0.70]) * warm + torch.tensor([0.78, 0.87, 1.0]) * (1 - warm))
    light = light * (0.9 + 0.9 * app["light_intensity"])[:, None]
    az = (2 * app["light_azimuth"] - 1) * 1.1
    el = -0.15 + 1.0 * app["light_elevation"]
    ldir = torch.stack([torch.sin(az) * torch.cos(el), torch.sin(el), torch.cos(az) * torch.cos(el)], -1)
    bg_v = 0.30 + 0.6 * app["bg_brightness"]
    return {"skin": skin ** 2.2, "hair": hair ** 2.2, "iris": iris ** 2.2, "light": light, "light_dir": ldir,
            "ambient": (0.25 + 0.35 * app["ambient"])[:, None],
            "bg_a": _hsv(app["bg_hue"], 0.35, bg_v), "bg_b": _hsv(app["bg_hue2"], 0.35, 0.75 * bg_v),
            "bg_angle": (2 * app["bg_direction"] - 1) * 0.8}


def _box_interval(o: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lo = torch.tensor(BOX_MIN, dtype=o.dtype)
    hi = torch.tensor(BOX_MAX, dtype=o.dtype)
    inv = 1.0 / torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
    t0, t1 = (lo - o) * inv, (hi - o) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp_min(0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far


def _bound(p: torch.Tensor) -> torch.Tensor:
    """A lower bound of the distance to any head the parameters can make: an ellipsoid around the head and a
    capsule around the neck (cheap; used to cross empty space before the full SDF is evaluated)."""
    q = (p - torch.tensor(BOUND_CENTER)) / torch.tensor(BOUND_RADII)
    head = (q.norm(dim=-1) - 1) * min(BOUND_RADII)
    a, b = torch.tensor(NECK_A), torch.tensor(NECK_B)
    ab = b - a
    h = (((p - a) * ab).sum(-1) / (ab * ab).sum()).clamp(0, 1)
    neck = (p - a - h[:, None] * ab).norm(dim=-1) - NECK_RADIUS
    return torch.minimum(head, neck)


def _trace(o: torch.Tensor, d: torch.Tensor, L: dict[str, torch.Tensor], near: torch.Tensor,
           far: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sphere-trace rays [R, 3] (layout gathered per ray); returns (t [R], hit [R] bool).

    Rays first advance by the cheap `_bound` until they come within BOUND_MARGIN of it, then by the head SDF.
    """
    t = near.clone()
    active = torch.arange(len(t))
    for _ in range(BOUND_STEPS):
        if len(active) == 0:
            break
        ta = t[active]
        dist = _bound(o[active] + d[active] * ta[:, None])
        step = (dist - 0.5 * BOUND_MARGIN).clamp_min(0)
        t[active] = ta + step
        active = active[(step > 0) & (ta + step <= far[active])]
    hit = torch.zeros_like(t, dtype=torch.bool)
    active = torch.nonzero(t <= far).squeeze(1)
    for step in range(STEPS):
        if len(active) == 0:
            break
        La = gather(L, active)
        ta = t[active]
        dist = head_sdf(o[active] + d[active] * ta[:, None], La)
        ta = ta + RELAX * dist
        t[active] = ta
        done = dist.abs() < HIT_EPS * (1 + ta)
        gone = ta > far[active]
        hit[active[done & ~gone]] = True
        if step % 2 == 1 or step == STEPS - 1:
            active = active[~(done | gone)]
    # Rays that ran out of steps close to the surface count as hits (grazing rays converge slowly).
    if len(active):
        La = gather(L, active)
        dist = head_sdf(o[active] + d[active] * t[active, None], La)
        hit[active[(dist.abs() < 3e-3) & (t[active] < far[active])]] = True
    return t, hit


def _normals(p: torch.Tensor, L: dict[str, torch.Tensor], eps: float = 8e-4) -> torch.Tensor:
    """Central differences (symmetric under x -> -x, so mirrored heads get mirrored normals)."""
    cols = []
    for axis in range(3):
        e = torch.zeros(3, dtype=p.dtype)
        e[axis] = eps
        cols.append(head_sdf(p + e, L) - head_sdf(p - e, L))
    return F.normalize(torch.stack(cols, -1), dim=-1)


def _shade(p, n, view, L, C, img) -> torch.Tensor:
    """Linear RGB [R, 3] of surface points p [R, 3] with normals n, per-ray colours C (indexed by img)."""
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    part = parts(p, L)
    names = ("skin", "hair", "eyes", "lips")
    which = torch.stack([part[k] for k in names], -1).argmin(-1)
    skin = C["skin"][img]
    # Brows are painted on the skin: an arch above each eye, tapering outwards.
    ax = x.abs()
    side = torch.where(x >= 0, 1.0, -1.0)
    xb = ax - L["eye_x"] + 0.004
    yb = L["brow_y"] + side * L["eye_dy"] - 7.0 * xb * xb
    half = L["brow_t"] * (1 - 0.45 * ((xb + 0.034) / 0.068).clamp(0, 1))
    brow = ((half - (y - yb).abs()) / 0.002).clamp(0, 1) * ((0.034 - xb.abs()) / 0.004).clamp(0, 1)
    brow = brow * (z > 0.05).float()
    skin = skin * (1 - brow[:, None]) + 0.8 * C["hair"][img] * brow[:, None]
    cheek = torch.exp(-(((ax - 0.075) ** 2 + (y + 0.03) ** 2) / 0.0012))
    skin = skin * (1 + cheek[:, None] * torch.tensor([0.08, -0.04, -0.04]))
    hair = C["hair"][img] * (0.82 + 0.18 * torch.cos(45 * torch.atan2(x, z + 0.03)) * torch.cos(30 * y))[:, None]
    lips = skin * torch.tensor([0.78, 0.42, 0.42])
    # Eyes: pupil and iris where the eyeball faces forward (+z), sclera elsewhere.
    ey = L["eye_y"] + side * L["eye_dy"]
    q = F.normalize(torch.stack([ax - L["eye_x"], y - ey, z - L["eye_z"]], -1), dim=-1)[:, 2]
    iris_w = ((q - 0.86) / 0.02).clamp(0, 1)[:, None]
    pupil_w = ((q - 0.965) / 0.01).clamp(0, 1)[:, None]
    eye = torch.tensor([0.80, 0.78, 0.74]) * (1 - iris_w) + C["iris"][img] * iris_w
    eye = eye * (1 - pupil_w) + 0.01 * pupil_w
    # Inside the open mouth: dark, with the upper teeth.
    inside = (part["mouth"] > -0.003).float()[:, None]
    teeth = ((y - L["mouth_y"] + 0.006 * L["open"]) > 0).float()[:, None] * (L["open"] > 0.15).float()[:, None]
    mouth = torch.tensor([0.10, 0.02, 0.02]) * (1 - teeth) + torch.tensor([0.75, 0.72, 0.65]) * teeth
    albedo = torch.stack([skin, hair, eye, lips], 0)[which, torch.arange(len(p))]
    is_skin_or_lips = ((which == 0) | (which == 3)).float()[:, None]
    albedo = albedo * (1 - inside * is_skin_or_lips) + mouth * inside * is_skin_or_lips
    # Light: key light (Lambert + a little specular), hemispheric ambient, a cheap occlusion term.
    ldir = C["light_dir"][img]
    diff = (n * ldir).sum(-1).clamp_min(0)[:, None]
    occl = (head_sdf(p + 0.02 * n, L) / 0.02).clamp(0, 1)[:, None]
    amb = C["ambient"][img] * (0.6 + 0.4 * n[:, 1:2]).clamp_min(0.2) * (0.35 + 0.65 * occl)
    h = F.normalize(ldir - view, dim=-1)
    shiny = torch.tensor([0.10, 0.05, 0.5, 0.25])[which][:, None]
    spec = shiny * (n * h).sum(-1).clamp_min(0)[:, None] ** 24 * (diff > 0).float()
    return albedo * (amb + diff * C["light"][img]) + spec * C["light"][img]


def _background(C, img, u, v) -> torch.Tensor:
    a = C["bg_angle"][img]
    s = (0.5 + (v - 0.5) * torch.cos(a) + (u - 0.5) * torch.sin(a)).clamp(0, 1)[:, None]
    return C["bg_a"][img] * (1 - s) + C["bg_b"][img] * s


@torch.no_grad()
def render(identities: Sequence[Identity], appearances: Sequence[Appearance], labels, resolution: int = 128,
           supersample: int = 1) -> dict[str, torch.Tensor]:
    """Photos of people under appearances from EG3D camera labels [B, 25].

    Returns {'image': [B, 3, R, R] in [-1, 1], 'depth': [B, 1, R, R], 'mask': [B, 1, R, R] in [0, 1]}.
    """
    labels = torch.as_tensor(np.asarray(labels, dtype=np.float32))
    if labels.ndim != 2 or labels.shape[1] != 25:
        raise ValueError(f"labels must be [B, 25] EG3D camera labels, got shape {tuple(labels.shape)}")
    b = len(labels)
    if len(identities) != b or len(appearances) != b:
        raise ValueError(f"{len(identities)} identities and {len(appearances)} appearances for {b} labels")
    idn = stack_params(identities, IDENTITY_PARAMS)
    app = stack_params(appearances, APPEARANCE_PARAMS)
    L = layout(idn, app)
    C = _colours(idn, app)
    s = int(supersample)
    res = resolution * s
    origins, dirs = sample_rays(labels[:, :16].reshape(b, 4, 4).double(), labels[:, 16:].reshape(b, 3, 3).double(),
                                res)
    o = origins.reshape(-1, 3).float()
    d = dirs.reshape(-1, 3).float()
    img = torch.arange(b).repeat_interleave(res * res)
    centers = (torch.arange(res, dtype=torch.float32) + 0.5) / res
    vv, uu = torch.meshgrid(centers, centers, indexing="ij")
    u, v = uu.reshape(-1).repeat(b), vv.reshape(-1).repeat(b)
    near, far = _box_interval(o, d)
    colour = _background(C, img, u, v)
    depth = torch.full((len(o),), BACKGROUND_DEPTH)
    hit = torch.zeros(len(o), dtype=torch.bool)
    rays = torch.nonzero(near < far).squeeze(1)
    if len(rays):
        Lr = gather(L, img[rays])
        t, h = _trace(o[rays], d[rays], Lr, near[rays], far[rays])
        sel = rays[h]
        Lh = gather(L, img[sel])
        p = o[sel] + d[sel] * t[h, None]
        n = _normals(p, Lh)
        colour[sel] = _shade(p, n, d[sel], Lh, C, img[sel])
        depth[sel] = t[h]
        hit[sel] = True
    colour = colour.clamp(0, 1) ** (1 / 2.2)

    def pool(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(b, res, res, -1).permute(0, 3, 1, 2)
        return F.avg_pool2d(x, s) if s > 1 else x

    mask = pool(hit.float())
    depth_sum = pool(torch.where(hit, depth, torch.zeros_like(depth)))
    depth_img = torch.where(mask > 0, depth_sum / mask.clamp_min(1e-6), torch.full_like(mask, BACKGROUND_DEPTH))
    return {"image": pool(colour) * 2 - 1, "depth": depth_img, "mask": mask}

