"""The head as a signed distance field: smooth-unioned ellipsoids and capsules placed from a person's parameters.

World units are EG3D's (the tri-plane box is [-0.5, 0.5]^3, FFHQ cameras look at (0, 0, 0.2) from 2.7 away):
1 unit is about 0.43 m, so the eyes sit ~0.14 apart at y ~ 0.06, the mouth ~0.15 below them, the face's front
at z ~ 0.17 and the nose tip at z ~ 0.21-0.24, which frames the head as EG3D frames FFHQ faces (eyes at ~40% of
the image height, mouth at ~70%, eye distance ~25% of the width at the frontal camera).

`layout(identity, appearance)` turns parameters in [0, 1] into positions and sizes (tensors [B]); `head_sdf`
evaluates the distance at points [R, 3] whose per-ray layout values are [R] (gathered by image index), and
`parts` gives the distance of each material so shading can tell skin, hair, eyes, lips and mouth apart.
Signed parameters (asymmetries) enter as x-offsets or as +y on the +x side and -y on the -x side, so mirroring
them (u -> 1 - u) reflects the head exactly in x.
"""
from __future__ import annotations

import torch

from headworld.params import expression

Layout = dict[str, torch.Tensor]


def _lerp(a: float, b: float, u: torch.Tensor) -> torch.Tensor:
    return a + (b - a) * u


def _signed(u: torch.Tensor) -> torch.Tensor:
    return 2.0 * u - 1.0


def skull_front_z(layout: Layout, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z of the skull ellipsoid's front surface at (x, y) (its centre plane where (x, y) is outside it)."""
    q = 1 - (x / layout["skull_rx"]) ** 2 - ((y - layout["skull_cy"]) / layout["skull_ry"]) ** 2
    return layout["skull_cz"] + layout["skull_rz"] * q.clamp_min(0).sqrt()


def layout(identity: dict[str, torch.Tensor], appearance: dict[str, torch.Tensor]) -> Layout:
    """Positions and sizes [B] of every part, from identity and appearance parameters [B] in [0, 1]."""
    i, a = identity, appearance
    L: Layout = {}
    L["skull_rx"] = _lerp(0.145, 0.172, i["skull_width"])
    L["skull_ry"] = _lerp(0.172, 0.205, i["skull_height"])
    L["skull_rz"] = _lerp(0.185, 0.212, i["skull_depth"])
    L["skull_cy"] = torch.full_like(L["skull_rx"], 0.065)
    L["skull_cz"] = 0.172 - L["skull_rz"]
    L["jaw_rx"] = _lerp(0.100, 0.135, i["jaw_width"])
    L["open"] = expression(a["mouth_open"])
    L["smile"] = expression(a["smile"])
    L["raise"] = expression(a["brows_raised"])
    L["chin_y"] = -0.168 - _lerp(0.0, 0.03, i["chin_length"]) - 0.022 * L["open"]
    L["chin_z"] = _lerp(0.100, 0.128, i["chin_projection"])
    L["cheek_r"] = _lerp(0.044, 0.060, i["cheek_fullness"]) + 0.004 * L["smile"]
    L["eye_x"] = _lerp(0.062, 0.079, i["eye_spacing"])
    L["eye_y"] = _lerp(0.045, 0.070, i["eye_height"])
    L["eye_dy"] = 0.006 * _signed(i["asym_eyes"])
    L["eye_r"] = _lerp(0.019, 0.025, i["eye_size"])
    L["eye_z"] = skull_front_z(L, L["eye_x"], L["eye_y"]) - 0.55 * L["eye_r"]
    L["nose_len"] = _lerp(0.068, 0.100, i["nose_length"])
    L["nose_w"] = _lerp(0.8, 1.25, i["nose_width"])
    L["nose_dx"] = 0.009 * _signed(i["asym_nose"])
    L["face_z"] = skull_front_z(L, torch.zeros_like(L["eye_y"]), L["eye_y"])
    L["nose_tip_y"] = L["eye_y"] - L["nose_len"]
    L["nose_tip_z"] = L["face_z"] + _lerp(0.035, 0.062, i["nose_projection"])
    L["mouth_y"] = L["nose_tip_y"] - 0.052
    L["mouth_z"] = L["face_z"] - 0.004
    L["mouth_w"] = _lerp(0.034, 0.050, i["mouth_width"]) * (1 + 0.22 * L["smile"])
    L["lip_t"] = _lerp(0.6, 1.35, i["lip_thickness"])
    L["mouth_tilt"] = 0.006 * _signed(i["asym_mouth"])
    L["ear_s"] = _lerp(0.85, 1.2, i["ear_size"])
    L["ear_x"] = L["skull_rx"] + _lerp(-0.008, 0.012, i["ear_protrusion"])
    L["brow_y"] = L["eye_y"] + _lerp(0.032, 0.046, i["brow_height"]) + 0.016 * L["raise"]
    L["brow_t"] = _lerp(0.0045, 0.0105, i["brow_thickness"])
    L["hair_vol"] = _lerp(0.004, 0.05, i["hair_volume"])
    L["hairline_y"] = _lerp(0.15, 0.215, i["hairline"])
    return L


def gather(L: Layout, index: torch.Tensor) -> Layout:
    """Per-ray layout: each [B] tensor indexed by the ray's image index [R]."""
    return {k: v[index] for k, v in L.items()}


def _ellipsoid(px, py, pz, rx, ry, rz):
    """Approximate distance to an axis-aligned ellipsoid at the origin (the k0 * (k0 - 1) / k1 bound)."""
    k0 = ((px / rx) ** 2 + (py / ry) ** 2 + (pz / rz) ** 2).sqrt()
    k1 = ((px / rx ** 2) ** 2 + (py / ry ** 2) ** 2 + (pz / rz ** 2) ** 2).sqrt()
    return k0 * (k0 - 1) / k1.clamp_min(1e-9)


def _sphere(px, py, pz, r):
    return (px * px + py * py + pz * pz).sqrt() - r


def _capsule(px, py, pz, ax, ay, az, bx, by, bz, r):
    """Distance to the segment a-b thickened by r."""
    bax, bay, baz = bx - ax, by - ay, bz - az
    pax, pay, paz = px - ax, py - ay, pz - az
    h = ((pax * bax + pay * bay + paz * baz) / (bax * bax + bay * bay + baz * baz)).clamp(0, 1)
    return _sphere(pax - bax * h, pay - bay * h, paz - baz * h, r)


def smin(a, b, k: float):
    """Polynomial smooth minimum with blend radius k."""
    h = (0.5 + 0.5 * (b - a) / k).clamp(0, 1)
    return b + (a - b) * h - k * h * (1 - h)


def smax(a, b, k: float):
    return -smin(-a, -b, k)


def parts(p: torch.Tensor, L: Layout) -> dict[str, torch.Tensor]:
    """Distances [R] of each material at points p [R, 3]: skin, hair, eyes, lips, mouth (the cavity's inside)."""
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    ax = x.abs()
    side = torch.where(x >= 0, 1.0, -1.0)
    skull = _ellipsoid(x, y - L["skull_cy"], z - L["skull_cz"], L["skull_rx"], L["skull_ry"], L["skull_rz"])
    jaw = _ellipsoid(x, y + 0.07, z - 0.045, L["jaw_rx"], torch.full_like(x, 0.125), torch.full_like(x, 0.128))
    chin = _ellipsoid(x, y - L["chin_y"] - 0.03, z - L["chin_z"] + 0.03, L["jaw_rx"] * 0.42,
                      torch.full_like(x, 0.042), torch.full_like(x, 0.042))
    cheeks = _sphere(ax - 0.072, y + 0.02, z - (0.172 - L["cheek_r"] * 0.9), L["cheek_r"])
    brow_ridge = _capsule(x, y, z, -0.085, L["brow_y"] - 0.012, L["face_z"] - 0.022,
                          0.085, L["brow_y"] - 0.012, L["face_z"] - 0.022, torch.full_like(x, 0.02))
    face = smin(skull, jaw, 0.045)
    face = smin(face, chin, 0.03)
    face = smin(face, cheeks, 0.03)
    face = smin(face, brow_ridge, 0.025)
    # Eye sockets, then the eyeballs in them.
    ey = L["eye_y"] + side * L["eye_dy"]
    r = L["eye_r"]
    socket = _ellipsoid(ax - L["eye_x"], y - ey, z - L["eye_z"] - 0.55 * r, 1.3 * r, 0.62 * r, 0.9 * r)
    face = smax(face, -socket, 0.006)
    eyes = _sphere(ax - L["eye_x"], y - ey, z - L["eye_z"], L["eye_r"])
    # Nose: a bridge, a tip and two wings.
    w = L["nose_w"]
    bridge = _capsule(x, y, z, L["nose_dx"] * 0.3, L["eye_y"] - 0.004, L["face_z"] - 0.004,
                      L["nose_dx"], L["nose_tip_y"] + 0.012, L["nose_tip_z"] - 0.014, 0.010 * w)
    tip = _sphere(x - L["nose_dx"], y - L["nose_tip_y"], z - L["nose_tip_z"] + 0.017 * w, 0.017 * w)
    wings = _sphere((x - L["nose_dx"]).abs() - 0.017 * w, y - L["nose_tip_y"] + 0.004,
                    z - L["nose_tip_z"] + 0.03, 0.0135 * w)
    nose = smin(smin(bridge, tip, 0.015), wings, 0.01)
    face = smin(face, nose, 0.012)
    # Ears.
    ears = _ellipsoid(ax - L["ear_x"], y - L["eye_y"] + 0.02, z + 0.035, torch.full_like(x, 0.016),
                      0.040 * L["ear_s"], 0.025 * L["ear_s"])
    face = smin(face, ears, 0.012)
    # Neck.
    neck = _capsule(x, y, z, 0.0, -0.10, -0.05, 0.0, -0.75, -0.08, torch.full_like(x, 0.074))
    face = smin(face, neck, 0.05)
    # Mouth: lips bent up at the corners by the smile, tilted by the asymmetry; the opening cuts the face.
    mw = L["mouth_w"]
    xn = (x / mw).clamp(-1.2, 1.2)
    yb = y - L["mouth_y"] - L["smile"] * 0.016 * xn * xn - L["mouth_tilt"] * xn
    lt = L["lip_t"]
    zl = z - L["mouth_z"]
    upper = _ellipsoid(x, yb - 0.008 * lt - 0.003 * L["open"], zl, mw, 0.0085 * lt, torch.full_like(x, 0.02))
    lower = _ellipsoid(x, yb + 0.009 * lt + 0.02 * L["open"], zl + 0.002, 0.9 * mw, 0.0095 * lt,
                       torch.full_like(x, 0.02))
    lips = smin(upper, lower, 0.004)
    cavity = _ellipsoid(x, yb + 0.009 * L["open"], zl + 0.01, 0.82 * mw, 0.0015 + 0.014 * L["open"],
                        torch.full_like(x, 0.03))
    skin = smax(smin(face, lips, 0.008), -cavity, 0.004)
    lips = smax(lips, -cavity, 0.004)
    # Hair: a shell over the skull, cut below the hairline (lower at the back).
    hv = L["hair_vol"]
    shell = _ellipsoid(x, y - L["skull_cy"] - 0.3 * hv, z - L["skull_cz"] + 0.01, L["skull_rx"] + hv,
                       L["skull_ry"] + hv, L["skull_rz"] + 1.1 * hv)
    cut_y = L["hairline_y"] - ((0.10 - z) * 1.3).clamp(0, 0.32)
    hair = smax(shell, cut_y - y, 0.01)
    return {"skin": skin, "hair": hair, "eyes": eyes, "lips": lips, "mouth": -cavity}


def head_sdf(p: torch.Tensor, L: Layout) -> torch.Tensor:
    """Signed distance [R] of points p [R, 3] to the whole head (skin, hair and eyes)."""
    d = parts(p, L)
    return torch.minimum(torch.minimum(d["skin"], d["hair"]), d["eyes"])


def landmarks(L: Layout) -> dict[str, torch.Tensor]:
    """World positions [B, 3] of points on the surface: the nose tip (used to check camera geometry)."""
    tip = torch.stack([L["nose_dx"], L["nose_tip_y"], L["nose_tip_z"]], -1)
    return {"nose_tip": tip}
