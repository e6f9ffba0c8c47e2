"""Why the symmetry loss does or does not help (issue 26 item 3), from the symmetry experiment's trained models.

L_sym = 1 - cos(ID(G(w, c)), ID(flip(G(w, c')))) with c' the mirror of c. It can only move a model whose two sides
disagree in the identity network's eyes, and only as strongly as its gradient weighs against L_rec's. Per person,
reference set and model, three measurements answer which of these holds:

  mirror gap     L_sym itself at the evaluation's mirrored cameras (yaw -a vs +a, pitch 0, a in MIRROR_YAWS), per
                 anchor: how far the two sides are apart for the identity network (the truth's own gap is the floor);
  identity error 1 - cos(ID(model view), ID(true view)) on the unseen side (yaw -a) and the seen side (yaw +a):
                 what L_sym would have to fix. A mirror gap much smaller than the unseen side's identity error means
                 both sides are wrong together, which a symmetry loss cannot see;
  gradients      at the trained LoRA weights: |grad L_rec| over the reference photos, |grad lambda_sym L_sym| over
                 mirrored pairs drawn as training draws them, and the cosine between the two.
Plus the training log's L_sym at the start and the end of the LoRA + L_sym runs. Cached per reference set in
WORK/results/person_SEED/KIND/diagnostics.json.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from evaluation.symmetry_experiment import SET_KINDS, SymmetryConfig, render_anchor, true_views
from formats.atomic import write_text

MIRROR_YAWS = (0.35, 0.6)
"""|yaw| of the mirrored evaluation pairs (the 'yaw < 0' and 'yaw > 0' regions' cameras)."""
PAIRS = {"unseen": tuple((-a, 0.0) for a in MIRROR_YAWS), "seen": tuple((a, 0.0) for a in MIRROR_YAWS)}
GRADIENT_ROWS = ("lora", "lora_sym")


def _cos(encoder, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity [N] of the identity embeddings of two image batches (the encoder's unit vectors)."""
    feats = encoder(torch.cat([a, b]).clamp(-1, 1))
    fa, fb = feats.chunk(2)
    return (fa * fb).sum(1)


def _gaps(encoder, views: dict[str, torch.Tensor], truth: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    from perception.identity import flip_horizontal
    return {"mirror_gap": (1 - _cos(encoder, views["unseen"], flip_horizontal(views["seen"]))).tolist(),
            "id_error_unseen": (1 - _cos(encoder, views["unseen"], truth["unseen"])).tolist(),
            "id_error_seen": (1 - _cos(encoder, views["seen"], truth["seen"])).tolist()}


def gradient_norms(G, adapter, anchors, reference: Path, encoder, train_config: dict, seed: int = 0) -> dict:
    """|grad L_rec|, |grad lambda_sym L_sym| (over the adapter's parameters) and their cosine, at the adapter's
    weights: L_rec over every reference photo at its anchor and camera, L_sym over one mirrored pair per anchor
    drawn as training draws them (train.losses.symmetric_cameras)."""
    from generator.lora import attach, detach
    from perception.lpips import LPIPS
    from train.data import load_training_set
    from train.losses import reconstruction_losses, resize_antialiased, symmetric_cameras, symmetry_term
    data = load_training_set(reference, G.img_resolution)
    ws = anchors.ws if anchors.ws.ndim == 3 else anchors.ws[:, None].expand(-1, G.num_ws, -1)
    r = G.cfg.rendering
    c1, c2, _ = symmetric_cameras(len(ws), torch.Generator().manual_seed(seed), train_config["sym_yaw_range"],
                                  train_config["sym_pitch_range"], radius=r.avg_camera_radius,
                                  pivot=tuple(r.avg_camera_pivot))
    lp = LPIPS(train_config["lpips_net"])
    adapter = copy.deepcopy(adapter).requires_grad_(True)  # the caller's adapter keeps its flags
    params = list(adapter.parameters())
    attach(G, adapter)
    try:
        out = G.synthesis(ws, data.cameras)
        rec = reconstruction_losses(out, data.images, resize_antialiased(data.images, out["image_raw"].shape[-1]),
                                    lp, train_config["lpips_weight"], train_config["l2_weight"])["rec"]
        g_rec = torch.autograd.grad(rec, params, allow_unused=True)  # some targets sit outside the render
        pair = G.synthesis(torch.cat([ws, ws]), torch.cat([c1, c2]).float())["image"].clamp(-1, 1)
        sym = symmetry_term(encoder, pair[:len(ws)], pair[len(ws):])
        g_sym = torch.autograd.grad(train_config["sym_weight"] * sym, params, allow_unused=True)
    finally:
        detach(G)
    flat_rec, flat_sym = (torch.cat([(g if g is not None else torch.zeros_like(p)).flatten().double()
                                     for g, p in zip(grads, params)]) for grads in (g_rec, g_sym))
    return {"rec": float(rec.detach()), "sym": float(sym.detach()), "grad_rec": float(flat_rec.norm()),
            "grad_sym": float(flat_sym.norm()),
            "cos": float(flat_rec @ flat_sym / (flat_rec.norm() * flat_sym.norm()).clamp_min(1e-30))}


def training_curve(log_path: Path, fraction: float = 0.1) -> dict | None:
    """Mean L_sym over the first and the last `fraction` of the steps that logged it, or None without a log."""
    if not log_path.is_file():
        return None
    sym = [r["sym"] for r in map(json.loads, log_path.read_text().splitlines()) if "sym" in r]
    if not sym:
        return None
    n = max(1, int(len(sym) * fraction))
    return {"first": float(np.mean(sym[:n])), "last": float(np.mean(sym[-n:])), "logged": len(sym)}


def diagnose_set(G, seed: int, kind: str, rows: tuple[str, ...], work: Path, cfg: SymmetryConfig, encoder) -> dict:
    """One reference set: mirror gaps and identity errors of its rows, W inversion and the truth; gradients of the
    LoRA rows; the L_sym training curve."""
    from generator.adapter_file import load_adapter
    from generator.lora import attach, detach
    photo_ids = list(range(cfg.reference_photos))
    truth = true_views(seed, photo_ids, G.img_resolution, PAIRS)
    folder = work / f"person_{seed}" / kind
    adapters = {name: load_adapter(folder / "models" / f"{name}.safetensors", G) for name in rows}
    anchors = next(iter(adapters.values()))[1]
    scored: dict[str, dict] = {}
    with torch.no_grad():
        for name, adapter in [("w_inversion", None), *((n, a[0]) for n, a in adapters.items()), ("truth", None)]:
            attach(G, adapter)
            try:  # the truth row: the true person's own mirror gap, the floor (its identity error is 0)
                per_anchor = [_gaps(encoder, {s: truth[s][k] for s in PAIRS} if name == "truth" else
                                    {s: render_anchor(G, anchors.ws, k, PAIRS[s]) for s in PAIRS},
                                    {s: truth[s][k] for s in PAIRS})
                              for k in photo_ids]
            finally:
                detach(G)
            scored[name] = {key: sum((a[key] for a in per_anchor), []) for key in per_anchor[0]}
    gradients = {name: gradient_norms(G, adapters[name][0], anchors, folder / "photos", encoder,
                                      adapters[name][2]["extra"]["train_config"], seed=seed)
                 for name in GRADIENT_ROWS if name in adapters}
    return {"seed": seed, "kind": kind, "rows": list(rows), "mirror_yaws": list(MIRROR_YAWS), "scores": scored,
            "gradients": gradients, "sym_curve": training_curve(folder / "models" / "lora_sym_run" / "log.jsonl")}


def diagnose(G, work: Path, cfg: SymmetryConfig, encoder, log: Callable[[str], None] = print) -> list[dict]:
    """Diagnostics of every reference set whose L_sym pair is evaluated (cached next to its results, and made
    again when more of its rows are done)."""
    from dataclasses import asdict

    from evaluation.experiments import claim_work
    from evaluation.symmetry_experiment import SYM_PAIR, _row_path
    claim_work(work, G, asdict(cfg))  # the models in WORK were made from G
    out = []
    for seed in cfg.person_seeds():
        for kind in SET_KINDS:
            rows = tuple(r for r in cfg.rows if _row_path(work, seed, kind, r).is_file())
            if not set(SYM_PAIR) <= set(rows):
                continue
            path = _row_path(work, seed, kind, "diagnostics")
            cached = json.loads(path.read_text()) if path.is_file() else None
            if cached is None or tuple(cached["rows"]) != rows:
                log(f"person {seed}, {kind}: symmetry diagnostics of {', '.join(rows)}")
                cached = diagnose_set(G, seed, kind, rows, Path(work), cfg, encoder)
                write_text(path, json.dumps(cached) + "\n")
            out.append(cached)
    return out


def summarize(diagnostics: list[dict]) -> dict:
    """Per reference set kind and model: mean mirror gap and identity errors over people (each person's views
    averaged); per LoRA row: median gradient norms and cosine; L_sym training curve means. Kinds without data are
    left out."""
    out = {}
    for kind in SET_KINDS:
        sets = [d for d in diagnostics if d["kind"] == kind]
        if not sets:
            continue
        names = [n for n in sets[0]["scores"] if all(n in d["scores"] for d in sets)]
        rows = {row: {key: float(np.mean([np.mean(d["scores"][row][key]) for d in sets]))
                      for key in sets[0]["scores"][row]}
                for row in names}
        grads = {row: {key: float(np.median([d["gradients"][row][key] for d in sets]))
                       for key in ("rec", "sym", "grad_rec", "grad_sym", "cos")}
                 for row in GRADIENT_ROWS if all(row in d["gradients"] for d in sets)}
        curves = [d["sym_curve"] for d in sets if d["sym_curve"]]
        curve = ({k: float(np.mean([c[k] for c in curves])) for k in ("first", "last")} if curves else None)
        out[kind] = {"people": len(sets), "rows": rows, "gradients": grads, "sym_curve": curve}
    return out
