"""docs/SYMMETRY.md from the symmetry experiment's results (evaluation/symmetry_experiment.py)."""
from __future__ import annotations

from evaluation.symmetry_experiment import REGIONS, SET_KINDS, summarize

ROW_LABELS = {"w_inversion": "W inversion (base model)", "lora": "LoRA", "lora_sym": "LoRA + L_sym (My3DGen)",
              "full": "full fine-tuning", "full_sym": "full + L_sym", "authors": "LoRA + L_sym, authors' recipe"}
KIND_LABELS = {"one_sided": "one-sided reference set (all photos from yaw > 0)",
               "balanced": "balanced reference set (same |yaw|, every other photo mirrored)"}


def _verdict(effect: dict) -> str:
    """One phrase for a paired LPIPS difference (lower is better): helps / hurts / no effect at 2 SE."""
    if effect["people"] < 2:
        return "one person: no standard error"
    if abs(effect["z"]) < 2:
        return f"no effect at 2 SE ({effect['z']:+.1f} SE)"
    return f"{'helps' if effect['mean'] < 0 else 'hurts'} ({effect['z']:+.1f} SE)"


def _diagnostics(d: dict) -> list[str]:
    """The 'why' section from evaluation.symmetry_diagnostics.summarize."""
    lines = ["## Why: what L_sym sees and how hard it pulls", "",
             "`evaluation/symmetry_diagnostics.py`, on the same models. **Mirror gap**: L_sym itself at the "
             "evaluation's mirrored cameras (yaw −a against the flipped yaw +a, a = 0.35 and 0.6): what the loss can "
             "see. **Identity error**: 1 − cos between the model's view and the true view, on the unseen (yaw < 0) "
             "and seen (yaw > 0) side: what the unseen side gets wrong. The truth row is the floor (the person under "
             "the photo's lighting is not exactly mirror-symmetric).", ""]
    for kind in d:
        lines += [f"**{KIND_LABELS[kind]}** ({d[kind]['people']} people)", "", "| model | mirror gap | identity error, yaw < 0 | "
                  "identity error, yaw > 0 |", "|---|---:|---:|---:|"]
        for row, v in d[kind]["rows"].items():
            label = "truth" if row == "truth" else ROW_LABELS.get(row, row)
            lines.append(f"| {label} | {v['mirror_gap']:.4f} | {v['id_error_unseen']:.4f} | "
                         f"{v['id_error_seen']:.4f} |")
        lines.append("")
    lines += ["Gradients at the trained weights, over the adapter's parameters (medians over people): L_rec over "
              "the 10 reference photos, λ_sym·L_sym over one mirrored pair per anchor drawn as training draws them, "
              "and the cosine between the two.", "",
              "| reference set | model | L_rec | L_sym | ‖∇L_rec‖ | ‖∇λ_sym L_sym‖ | ratio | cos |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for kind in d:
        for row, g in d[kind]["gradients"].items():
            lines.append(f"| {kind.replace('_', '-')} | {ROW_LABELS.get(row, row)} | {g['rec']:.4f} | "
                         f"{g['sym']:.2e} | {g['grad_rec']:.3e} | {g['grad_sym']:.3e} | "
                         f"{g['grad_sym'] / g['grad_rec']:.3f} | {g['cos']:+.3f} |")
    lines.append("")
    curves = [f"{kind.replace('_', '-')} {c['first']:.2e} → {c['last']:.2e}"
              for kind in d if (c := d[kind]["sym_curve"])]
    if curves:
        lines += ["L_sym in the LoRA + L_sym runs' logs, mean of the first and the last tenth of its steps: "
                  + "; ".join(curves) + ".", ""]
    return lines


def render(result: dict, command: str, machine: str, notes: str = "", diagnostics: dict | None = None) -> str:
    s = summarize(result)
    cfg, thr = result["config"], result["threshold"]
    lines = [
        "# Does the symmetry loss help a one-sided reference set?",
        "",
        "Issue 26's decisive experiment (`evaluation/symmetry_experiment.py`). Each held-out head-world person is "
        f"personalized twice from {cfg['reference_photos']} photos with the same appearances: a **one-sided** set "
        f"(yaw from +{cfg['yaw_min']} to +{cfg['yaw_max']} rad, nothing from yaw < 0) and a **balanced** one (the "
        "same |yaw| values, every other photo mirrored). Rows at the default recipe and length "
        f"({cfg['iterations']} steps, {cfg['anchor_steps']} projector steps per photo); W inversion is the shared "
        "anchors on the base model. Each anchor is rendered at the cameras of three regions under its photo's "
        "appearance and compared with the world's true render.",
        "",
        f"    {command}",
        "",
        f"People: {s['people']} (seeds {', '.join(str(p['seed']) for p in result['people'])}). Machine: {machine}.",
        "",
    ]
    done = sum(row in rows for p in result["people"] for rows in p["sets"].values() for row in cfg["rows"])
    planned = cfg["people"] * len(cfg["rows"]) * len(SET_KINDS)
    if done < planned:
        lines += [f"**Partial run: {done} of the {planned} trained models are done.** The workers take the L_sym "
                  "pair on every person's one-sided set first, then the balanced sets, then full fine-tuning "
                  "(`evaluation.symmetry_experiment.work_units`); the run resumes where it stopped.", ""]
    lines += [
        f"**Verification**: a view verifies when its cosine similarity to the person's enrolment photo (a true "
        f"frontal photo under an appearance no reference photo has) is above {thr['value']:.4f}, the heads identity "
        f"network's threshold at FAR {thr['far']:g} on {thr['people']} calibration people ({thr['impostor_pairs']:,} "
        f"impostor pairs; photo against photo it accepts {100 * thr['tar']:.1f}% of genuine pairs).",
        "",
        "Regions (yaw, pitch): " + "; ".join(f"{r}: {', '.join(f'({y:+.2f}, {p:+.2f})' for y, p in poses)}"
                                            for r, poses in REGIONS.items()) + ".",
        "",
    ]
    for kind in s["table"]:
        lines += [f"## {KIND_LABELS[kind]}", "",
                  "| model | people | " + " | ".join(f"{r}: LPIPS ↓ / verified ↑" for r in REGIONS) + " |",
                  "|---|---:|" + "---:|" * len(REGIONS)]
        for row, v in s["table"][kind]["frontal"].items():
            cells = [f"{s['table'][kind][r][row]['lpips']:.3f} / {100 * s['table'][kind][r][row]['verified']:.0f}%"
                     for r in REGIONS]
            lines.append(f"| {ROW_LABELS.get(row, row)} | {v['people']} | " + " | ".join(cells) + " |")
        lines.append("")
    if s["sym_effect"]:
        lines += ["## The effect of L_sym: (LoRA + L_sym) − LoRA, paired by person", "",
                  "Mean over people of each person's difference (its views averaged), ± the standard error over "
                  "people; negative LPIPS is better.", "",
                  "| reference set | region | people | Δ LPIPS | Δ verified | reading |", "|---|---|---:|---:|---:|---|"]
        for kind, regions in s["sym_effect"].items():
            for region, e in regions.items():
                lines.append(f"| {kind.replace('_', '-')} | {region} | {e['lpips']['people']} | "
                             f"{e['lpips']['mean']:+.4f} ± "
                             f"{e['lpips']['se']:.4f} | {100 * e['verified']['mean']:+.1f} ± "
                             f"{100 * e['verified']['se']:.1f} pt | {_verdict(e['lpips'])} |")
        lines.append("")
    losses = [(k, v.get("sym")) for p in result["people"] for k, v in p["final_losses"].items()
              if v.get("sym") is not None]
    if losses:
        sym = [v for _, v in losses]
        lines += [f"Final symmetry-loss values of the L_sym runs: median {sorted(sym)[len(sym) // 2]:.2e} "
                  f"(range {min(sym):.2e} to {max(sym):.2e}).", ""]
    if diagnostics:
        lines += _diagnostics(diagnostics)
    if notes:
        lines += ["## Reading", "", notes.strip(), ""]
    return "\n".join(lines)
