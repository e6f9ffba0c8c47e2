"""Write a protocol result as the paper's tables (markdown), a JSON of every raw number, and Figure 3's plot.

Table 1 (inversion): DISTS, LPIPS, ID, Params per model. Tables 2 and 3 (synthesis by interpolation between
training / test anchors): ID, Params. Rows are the models in the order given; the FT. / L_sym / LoRA columns
are read from each adapter file's metadata (the trainer records its configuration there), '?' when absent.

Every report states what is needed to reproduce it: the command, seeds, sample counts, the identity backend,
the base model fingerprint and each adapter file's sha256. A result without a named identity backend is refused
(`IdentityBackendMissing`). The backend's label heads every ID column (dlib's and the built-in world's say
"not ArcFace"), a line under the title names it and says whether the numbers compare with the paper's ArcFace
scores, and a randomly initialised identity network is explained in the text, never presented as an identity
measure.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from formats.atomic import atomic_file

CHECK, DASH, UNKNOWN = "✓", "-", "?"


class IdentityBackendMissing(ValueError):
    """A result to report does not name the identity backend its ID scores came from."""


def require_identity(result: dict) -> dict:
    """The result's identity backend description; refuses a result that does not name one."""
    ident = result.get("identity") if isinstance(result, dict) else None
    if not isinstance(ident, dict) or not ident.get("spec") or not ident.get("label"):
        raise IdentityBackendMissing("this result names no identity backend (result['identity'] with 'spec' and "
                                     "'label'); an ID table without its backend cannot be read: rerun eval with "
                                     "--identity arcface:PATH | heads | dlib")
    return ident


def identity_line(ident: dict) -> str:
    """One sentence naming the backend and whether its numbers compare with the paper's ArcFace scores."""
    if ident.get("arcface"):
        note = "ArcFace weights: comparable in kind with the paper's ID scores"
    elif ident.get("smoke_test"):
        note = "random weights: a smoke test, not an identity measure"
    else:
        note = "not ArcFace: these ID numbers are on another scale and not comparable with the paper's"
    return f"**Identity backend:** {ident['label']} (`--identity {ident['spec']}`; {note})."


def _fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _params(n: int) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}k"
    return str(n)


def ablation_flags(model: dict) -> tuple[str, str, str]:
    """(FT., L_sym, LoRA) marks of a model row, from its adapter's metadata."""
    if model["kind"] == "pretrained":
        return DASH, DASH, DASH
    train_cfg = (model.get("adapter_extra") or {}).get("train_config")
    sym = UNKNOWN if not isinstance(train_cfg, dict) or "sym" not in train_cfg else (CHECK if train_cfg["sym"]
                                                                                     else DASH)
    return CHECK, sym, CHECK if model["kind"] == "lora" else DASH


def _id_cell(summary: dict, with_std: bool = True) -> str:
    text = _fmt(summary["mean"], 4) + (f" ± {_fmt(summary['std'], 4)}" if with_std and summary["n_scored"] else "")
    if summary["n_no_face"]:
        text += f" ({summary['n_no_face']}/{summary['n_scored'] + summary['n_no_face']} no face)"
    return text


def id_header(result: dict) -> str:
    return f"{result['identity']['label']} ↑"


def table1(result: dict) -> str:
    rows = [f"| Model | FT. | L_sym | LoRA | DISTS ↓ | LPIPS ↓ | {id_header(result)} | Params ↓ |",
            "|---|:-:|:-:|:-:|---:|---:|---:|---:|"]
    for m in result["models"]:
        s = m["inversion"]["summary"]
        ft, sym, lora = ablation_flags(m)
        rows.append(f"| {m['name']} | {ft} | {sym} | {lora} "
                    f"| {_fmt(s['dists']['mean'], 4)} ± {_fmt(s['dists']['std'], 4)} "
                    f"| {_fmt(s['lpips']['mean'], 4)} ± {_fmt(s['lpips']['std'], 4)} | {_id_cell(s['id'])} "
                    f"| {_params(m['parameters'])} |")
    return "\n".join(rows)


def cross_view_table(result: dict) -> str:
    rows = ["| Model | FT. | L_sym | LoRA | DISTS ↓ | LPIPS ↓ | Params ↓ |", "|---|:-:|:-:|:-:|---:|---:|---:|"]
    for m in result["models"]:
        s = m["inversion"]["summary"]["cross_view"]
        ft, sym, lora = ablation_flags(m)
        rows.append(f"| {m['name']} | {ft} | {sym} | {lora} "
                    f"| {_fmt(s['dists']['mean'], 4)} ± {_fmt(s['dists']['std'], 4)} "
                    f"| {_fmt(s['lpips']['mean'], 4)} ± {_fmt(s['lpips']['std'], 4)} | {_params(m['parameters'])} |")
    return "\n".join(rows)


def synthesis_table(result: dict, which: str) -> str:
    rows = [f"| Model | FT. | L_sym | LoRA | {id_header(result)} | Params ↓ |", "|---|:-:|:-:|:-:|---:|---:|"]
    for m in result["models"]:
        ft, sym, lora = ablation_flags(m)
        syn = m[f"synthesis_{which}"]
        cell = syn["skipped"] if "skipped" in syn else _id_cell(syn["summary"])
        rows.append(f"| {m['name']} | {ft} | {sym} | {lora} | {cell} | {_params(m['parameters'])} |")
    return "\n".join(rows)


def _counts(result: dict) -> dict:
    cfg = result["config"]
    n_test = len(result["data"]["test"]["names"])
    poses = len(result["inversion_poses"])
    return {"n_test": n_test, "poses": poses, "inv_renders": n_test * poses,
            "syn_renders": {k: len(v["pairs"]) * cfg["weights"] * cfg["views"] for k, v in result["plan"].items()},
            "pairs": {k: len(v["pairs"]) for k, v in result["plan"].items()}}


def smoke_test_note(result: dict) -> str:
    ident = result["identity"]
    return (f"**The ID column is not an identity measure.** It was computed with `{ident['spec']}`: a "
            f"face-recognition network architecture ({ident.get('network')}) with randomly initialised weights "
            f"({ident.get('weights')}). Its features respond to colours, layout and texture, not to who a face "
            f"belongs to, so its 'ID score' only shows that the protocol runs end to end (renders are produced, "
            f"embedded, matched to the nearest reference, averaged) and how close renders are to the reference "
            f"photos in a random feature space. Paper-comparable ID scores need ArcFace weights (`--identity "
            f"arcface:model_ir_se50.pth`); `--identity heads` (the built-in world's identity network) and "
            f"`--identity dlib` measure identity on other scales (not ArcFace).")


def render_markdown(result: dict, command: str | None = None, plot_path: str | None = None,
                    json_path: str | None = None, inversions_path: str | None = None,
                    title: str = "Evaluation (My3DGen §4.1 protocol)", preamble: str | None = None) -> str:
    ident = require_identity(result)
    cfg, pti = result["config"], result["config"]["pti"]
    counts = _counts(result)
    out = [f"# {title}", "", identity_line(ident), ""]
    if command:
        out += ["Produced by:", "", "```", command, "```", ""]
    if preamble:
        out += [preamble.strip(), ""]
    if ident.get("smoke_test"):
        out += [smoke_test_note(result), ""]
    out += ["## Table 1: inversion of held-out test photos (PTI)", "", table1(result), "",
            f"DISTS and LPIPS: mean ± std over {counts['n_test']} test photo(s), reconstruction vs photo in the "
            f"photo's own pose. ID: mean ± std over {counts['inv_renders']} renders ({counts['n_test']} photo(s) x "
            f"{counts['poses']} poses: yaws {list(cfg['inversion_yaws'])} x pitches {list(cfg['inversion_pitches'])}), "
            f"cosine similarity to the nearest of {len(result['data']['reference']['names'])} reference photo(s). "
            f"Params: personal parameters stored per person (the adapter's tensors; pretrained: the whole generator).",
            ""]
    if cfg.get("cross_view"):
        n = counts["n_test"]
        out += ["## Table 1b (not in the paper): inversions seen from the other test photos' cameras", "",
                cross_view_table(result), "",
                f"Each PTI inversion rendered at the camera of every other test photo and compared with that photo "
                f"(mean ± std over {n * (n - 1)} pairs). Meaningful only because these test photos are views of one "
                f"unchanging scene (the synthetic ground truth): it measures how well the inversion holds up in "
                f"poses PTI never saw, which the paper's ID score probes on real faces.", ""]
    out += ["## Table 2: synthesis by interpolation between two training photos", "", synthesis_table(result, "train"),
            "", f"ID: mean ± std over {counts['syn_renders']['train']} renders ({counts['pairs']['train']} pairs x "
            f"{cfg['weights']} weights x {cfg['views']} random views).", ""]
    out += ["## Table 3: synthesis by interpolation between two test photos", "", synthesis_table(result, "test"),
            "", f"ID: mean ± std over {counts['syn_renders']['test']} renders ({counts['pairs']['test']} pairs x "
            f"{cfg['weights']} weights x {cfg['views']} random views); test anchors are the PTI pivots "
            f"(W projection, {pti['latent_steps']} steps) of the test photos.", ""]
    if plot_path:
        out += ["## Figure 3: ID score vs interpolation weight", "",
                f"![ID score vs interpolation weight]({plot_path})",
                "", "Mean ID score of the renders at each interpolation weight t (between anchors a at t = 0 and "
                "b at t = 1); shaded: ± one standard error over pairs.", ""]
    if inversions_path:
        out += ["## Reconstructions", "", f"![test photos and their PTI reconstructions]({inversions_path})", "",
                "Each row: a test photo, then its reconstruction by each model in table order.", ""]
    out += _setup_section(result, counts, json_path)
    out += _per_photo_section(result)
    return "\n".join(out).rstrip() + "\n"


def _setup_section(result: dict, counts: dict, json_path: str | None) -> list[str]:
    cfg, pti, ident = result["config"], result["config"]["pti"], result["identity"]
    ident_desc = ", ".join(f"{k} {v}" for k, v in ident.items() if k not in ("label", "smoke_test"))
    proj = pti.get("projector") or {}
    stop = (f"early stop at LPIPS ≤ {pti['lpips_threshold']}" if pti["lpips_threshold"] is not None
            else "no early stop")
    lines = ["## Setup (everything needed to reproduce these numbers)", "",
             f"- Base model: fingerprint `{result['base_fingerprint']}` "
             f"({result['generator']['parameters']:,} parameters, {result['generator']['img_resolution']}² output).",
             f"- Identity backend: {ident['label']} ({ident_desc}).",
             f"- Test photos: {counts['n_test']} ({', '.join(result['data']['test']['names'])}), "
             f"digest `{result['data']['test']['digest']}`.",
             f"- Reference photos (the person's training photos, also the training anchors): "
             f"{len(result['data']['reference']['names'])}, digest `{result['data']['reference']['digest']}`"
             + (f"; no face found in {len(result['data']['reference']['no_face'])} of them, which therefore are "
                f"not references: {', '.join(result['data']['reference']['no_face'])}"
                if result["data"]["reference"]["no_face"] else "") + ".",
             f"- Seed {cfg['seed']}: anchor pairs and poses are drawn with numpy `default_rng([seed, 1000])` "
             f"(training pairs) and `default_rng([seed, 1001])` (test pairs), the same for every model; "
             f"PTI/projector noise seed {pti['seed']}.",
             f"- Synthesis: {cfg['pairs']} pairs per table, {cfg['weights']} weights t = linspace(0, 1), "
             f"{cfg['views']} views per weight with yaw ~ U(±{cfg['yaw_range']}), "
             f"pitch ~ U(±{cfg['pitch_range']}) rad.",
             f"- PTI: {pti['latent_steps']} W-projector steps{' ' + json.dumps(proj) if proj else ''}, then "
             f"{pti['tune_steps']} tuning steps (tune='{pti['tune']}', Adam lr {pti['lr']}, "
             f"{pti['l2_lambda']}·MSE + {pti['lpips_lambda']}·LPIPS-{pti['lpips_net']}, {stop}, locality "
             f"regularisation {'on' if pti['locality_regularization'] else 'off'}).",
             f"- Training anchors not stored in an adapter are projected with {cfg['anchor_steps']} W-projector steps.",
             f"- Metrics: {result['metrics']['lpips']}; {result['metrics']['dists']}.",
             f"- Wall time: {result['seconds']:.0f} s.",
             ]
    if json_path:
        lines.append(f"- Raw numbers (every score of every render): [{os.path.basename(json_path)}]({json_path}).")
    lines += ["", "| Model | Adapter file | sha256 | Kind | Params | Training anchors | Time (s) |",
              "|---|---|---|---|---:|---|---:|"]
    for m in result["models"]:
        sources = m.get("train_anchor_sources") or []
        src = ", ".join(f"{s}: {sources.count(s)}" for s in dict.fromkeys(sources)) or "n/a"
        adapter = Path(m["adapter"]).name if m["adapter"] else "(none: base model)"
        sha = f"`{m['adapter_sha256']}`" if m.get("adapter_sha256") else "-"
        lines.append(f"| {m['name']} | {adapter} | {sha} | {m['kind']} | {m['parameters']:,} | {src} | "
                     f"{m['seconds']:.0f} |")
    lines.append("")
    return lines


def _per_photo_section(result: dict) -> list[str]:
    lines = ["## Inversion per test photo", "",
             "| Model | Photo | DISTS | LPIPS | LPIPS after latent only | ID (mean over poses) | tuning steps |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for m in result["models"]:
        for p in m["inversion"]["per_photo"]:
            ids = [v for v in p["id_scores"] if v is not None]
            missing = len(p["id_scores"]) - len(ids)
            id_text = _fmt(float(np.mean(ids)) if ids else None, 4) + (f" ({missing} no face)" if missing else "")
            lines.append(f"| {m['name']} | {p['photo']} | {_fmt(p['dists'], 4)} | {_fmt(p['lpips'], 4)} | "
                         f"{_fmt(p['lpips_latent_only'], 4)} | {id_text} | {p['tune_steps_run']} |")
    lines.append("")
    return lines


def plot_id_vs_t(result: dict, path: str | os.PathLike) -> Path:
    """Figure 3: mean ID score vs interpolation weight, (a) training pairs, (b) test pairs; one line per model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.asarray(result["t_values"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    panels = ((axes[0], "train", "(a) training-photo anchors"), (axes[1], "test", "(b) test-photo anchors"))
    for ax, which, title in panels:
        for m in result["models"]:
            syn = m[f"synthesis_{which}"]
            if "skipped" in syn:
                continue
            arr = np.array([[[np.nan if v is None else v for v in views] for views in pair] for pair in syn["scores"]],
                           dtype=np.float64)  # [pairs, weights, views]
            per_pair = np.nanmean(arr, axis=2)  # [pairs, weights]
            mean = np.nanmean(per_pair, axis=0)
            se = (np.nanstd(per_pair, axis=0) / math.sqrt(per_pair.shape[0])) if per_pair.shape[0] > 1 else 0 * mean
            line, = ax.plot(t, mean, marker="o", ms=3, label=m["name"])
            ax.fill_between(t, mean - se, mean + se, color=line.get_color(), alpha=0.15)
        ax.set_title(title)
        ax.set_xlabel("interpolation weight t")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(result["identity"]["label"])
    axes[1].legend(loc="best", fontsize=8)
    if result["identity"].get("smoke_test"):
        fig.suptitle("random-init identity network: smoke test, not an identity measure", fontsize=9, color="darkred")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


def jsonable(value):
    """The result with every NaN/inf float replaced by None (strict JSON has no NaN) and tuples as lists."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(result: dict, path: str | os.PathLike, command: str | None = None) -> Path:
    """All raw numbers, strict JSON (a mean over no scored render is null); refuses a result without a backend."""
    if "models" in result:
        require_identity(result)
    with atomic_file(path) as tmp:
        Path(tmp).write_text(json.dumps(jsonable({"command": command, **result}), indent=1, allow_nan=False) + "\n")
    return Path(path)


def write_markdown(text: str, path: str | os.PathLike) -> Path:
    with atomic_file(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)


def write_report(result: dict, md_path: Path, plot_path: Path, json_path: Path, inversions_path: Path | None,
                 command: str | None, title: str, preamble: str | None = None) -> Path:
    """The markdown (links relative to it) for a result whose plot, JSON and pictures are already written."""
    text = render_markdown(result, command=command, plot_path=relative_link(plot_path, md_path),
                           json_path=relative_link(json_path, md_path),
                           inversions_path=relative_link(inversions_path, md_path) if inversions_path else None,
                           title=title, preamble=preamble)
    return write_markdown(text, md_path)


def relative_link(target: str | os.PathLike, from_file: str | os.PathLike) -> str:
    """Path of `target` as a markdown link written in `from_file`."""
    return os.path.relpath(Path(target).resolve(), Path(from_file).resolve().parent).replace(os.sep, "/")
