"""Keep a GPU check's results in the repository: raw report under docs/gpu/, summary in docs/BENCHMARKS.md.

    python -m bench.gpu_record RESULT_DIR [RESULT_DIR ...] [--doc docs/BENCHMARKS.md]

Each RESULT_DIR holds a gpu_check.json (what scripts/gpu_check.sh wrote to $OUT). Several dirs from the same card
are merged section by section, later dirs winning: a rerun of one section (`--sections mixed`) replaces that
section only. The merged report is written to docs/gpu/<card>-<date>.json and .md, and the section
GPU_HEADING of the benchmarks doc is replaced by a summary of it.
"""
from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from pathlib import Path

from bench.gpu_check import markdown
from bench.gpu_serve import summary_lines
from bench.run import GPU_HEADING, REPO, replace_section
from formats.atomic import write_text

DOC = REPO / "docs" / "BENCHMARKS.md"


def merge(reports: list[dict]) -> dict:
    """One report from several runs on one card; sections of later runs replace earlier ones."""
    cards = {r["sections"].get("env", {}).get("gpu") for r in reports}
    if len(cards) != 1:
        raise SystemExit(f"error: the reports come from different devices {sorted(map(str, cards))}; "
                         "record each card on its own")
    merged = {"dry_run": any(r["dry_run"] for r in reports), "config": reports[0]["config"],
              "elapsed_s": round(sum(r["elapsed_s"] for r in reports), 1), "sections": {}, "runs": len(reports),
              "section_run": {}}
    for i, r in enumerate(reports, 1):
        merged["sections"].update(r["sections"])
        merged["section_run"].update({name: i for name in r["sections"]})
    return merged


def _rows(report: dict, section: str) -> dict[tuple, dict]:
    sec = report["sections"].get(section, {})
    return {(r["op"], r["dtype"], r["batch"]): r for r in sec.get("rows", []) if "ms" in r}


def summary(report: dict, raw: str, day: str) -> str:
    """The BENCHMARKS.md section: latency by mode side by side, training and mixed batches, parity."""
    s = report["sections"]
    env = s.get("env", {})
    lines = [GPU_HEADING, "",
             f"Measured {day} on **{env.get('gpu')}** (torch {env.get('torch')}, CUDA {env.get('torch_cuda')}) "
             f"by `bash scripts/gpu_check.sh` ({report['runs']} run(s), {report['elapsed_s']} s); the whole "
             f"report is [{raw}]({raw}). Random ffhq512-128 weights (timings do not depend on values), TF32 off, "
             "const noise. ms per call, median after warm-up; max |image diff| against fp32 eager in brackets.", ""]
    par = s.get("parity", {})
    if par.get("ok"):
        lines += [f"- Parity (official EG3D fixture): CUDA vs official max |diff| "
                  f"{max(par['max_abs_diff_vs_official'].values()):.2g}, CUDA vs CPU fp32 "
                  f"{max(par['max_abs_diff_vs_cpu_fp32'].values()):.2g}; passed: {par['passed']}.", ""]
    modes = [("eager", _rows(report, "forward")), ("CUDA graph", _rows(report, "cudagraph")),
             ("torch.compile", _rows(report, "compile"))]
    keys = sorted({k for _, rows in modes for k in rows}, key=lambda k: (k[0], ("fp32", "fp16", "bf16").index(k[1])
                                                                           if k[1] in ("fp32", "fp16", "bf16")
                                                                           else 9, k[2]))
    lines += ["| op | precision | batch | " + " | ".join(m for m, _ in modes) + " | best images/s |",
              "|---|---|---:|" + "---:|" * len(modes) + "---:|"]
    for k in keys:
        cells, best = [], 0.0
        for _, rows in modes:
            r = rows.get(k)
            if r is None:
                cells.append("")
                continue
            diff = r.get("max_abs_diff_vs_fp32", r.get("max_abs_diff_vs_fp32_eager"))
            cells.append(f"{r['ms']:.1f}" + (f" ({diff:.1g})" if diff else ""))
            best = max(best, r.get("images_per_s", 0.0))
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | " + " | ".join(cells) + f" | {best:.1f} |")
    lines.append("")
    lines.append("*full*: mapping + tri-planes + render + super-resolution; *novel*: render + super-resolution "
                 "from cached tri-planes. Empty cells were not measured (the compile section stops at its time "
                 "budget).")
    eager, graph, comp = (rows for _, rows in modes)
    run_of = report.get("section_run", {})
    same_run = lambda name: run_of.get(name) == run_of.get("forward")  # noqa: E731 - ratios only within one run
    if len({run_of.get(n) for n in ("forward", "cudagraph", "compile") if n in s}) > 1:
        lines.append("The columns come from different runs (" + ", ".join(
            f"{m}: run {run_of[n]}" for m, n in (("eager", "forward"), ("CUDA graph", "cudagraph"),
                                                 ("torch.compile", "compile")) if n in run_of)
            + "): compare across columns loosely.")
        lines.append("")
    k1, k8 = ("full", "fp32", 1), ("full", "fp32", 8)
    if k1 in eager and k8 in eager:
        lines.append(f"Reading: eager is bound by kernel launches on this card (batch 8 costs "
                     f"{eager[k8]['ms'] / eager[k1]['ms']:.2f}x batch 1)"
                     + (f"; replaying a CUDA graph makes the fp32 full forward {eager[k1]['ms'] / graph[k1]['ms']:.1f}x "
                        "faster at batch 1" if k1 in graph and same_run("cudagraph") else "")
                     + (f", torch.compile {eager[k1]['ms'] / comp[k1]['ms']:.1f}x (exact to "
                        f"{comp[k1].get('max_abs_diff_vs_fp32_eager', 0):.1g}; its first call compiles for "
                        f"{comp[k1].get('compile_s', 0):.0f} s)" if k1 in comp and same_run("compile") else "")
                     + ".")
        lines.append("")
    tr = s.get("lora_train", {})
    if tr.get("ok"):
        steps = tr.get("rows") or [tr]  # reports before 2026-11-27's second run held one batch, unrowed
        for r in steps:
            if "error" in r:
                lines.append(f"- LoRA training step at batch {r['batch']}: failed ({r['error'][:120]}).")
                continue
            switches = f"{r.get('dtype', 'fp32')}, checkpointing {r.get('checkpointing', 'off')}"
            what = "largest batch the plan fits in " + r["op"][5:].replace("gib", " GiB") + ", " \
                if r.get("op", "").startswith("fits_") else ""
            sym = r.get("step_median_s_with_sym")
            plan = f" (plan {r['plan_gib']:.1f})" if "plan_gib" in r else ""
            lines.append(f"- LoRA training step (512², {what}batch {r['batch']}, {r['trainable_parameters']:,} "
                         f"trainable parameters, {switches}): {r['step_median_s_without_sym']:.2f} s without the "
                         f"symmetry term" + (f", {sym:.2f} s with it (every 4th step)" if sym else "") +
                         f"; peak memory {r.get('peak_memory_gib', float('nan')):.1f} GiB{plan}.")
    pl = s.get("plane_lookup", {})
    if pl.get("ok"):
        rows = {(r["op"].split("/")[1], r["batch"]): r for r in pl["rows"] if "ms" in r}
        parts = [f"batch {b}: grid_sample {rows[('grid_sample', b)]['ms']:.1f} ms, gather "
                 f"{rows[('gather', b)]['ms']:.1f} ms (max diff {rows[('gather', b)]['max_abs_diff_vs_fp32']:.1g})"
                 for b in sorted({b for _, b in rows}) if ("grid_sample", b) in rows and ("gather", b) in rows]
        lines.append("- Tri-plane lookup, eager fp32 novel view (CUDA takes grid_sample, the CPU the gather): "
                     + "; ".join(parts) + ".")
    mx = s.get("mixed", {})
    if mx.get("ok"):
        lines.append(f"- Mixed-person batch ({mx['people']} people in a batch of {mx['batch']}, eager fp32): "
                     f"{mx['mixed_images_per_s']:.1f} images/s vs {mx['same_person_images_per_s']:.1f} for one "
                     f"person ({mx['mixed_over_same']:.2f}x); each sample matches its single-person render to "
                     f"{mx['max_abs_diff_sample_vs_single']:.1g} (tolerance {mx['tolerance']:g}).")
    lines += summary_lines(s.get("serve", {}))
    trt = s.get("tensorrt", {})
    if env.get("tensorrt") == "not importable":
        lines.append("- TensorRT: not installed on the lent machine (`import tensorrt` fails), so not measured.")
    elif trt.get("ok"):
        lines.append(f"- TensorRT: {trt.get('skipped') or 'measured, see the report'}.")
    failed = [k for k, v in s.items() if not v.get("ok")]
    if failed:
        lines.append(f"- Failed sections: {', '.join(failed)} (errors in the report).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", type=Path, help="folders holding gpu_check.json, oldest first")
    ap.add_argument("--doc", type=Path, default=DOC, help="benchmarks markdown to update")
    ap.add_argument("--date", default=datetime.date.today().isoformat(), help="day of the run (default today)")
    args = ap.parse_args(argv)
    reports = []
    for d in args.dirs:
        f = d / "gpu_check.json"
        if not f.is_file():
            raise SystemExit(f"error: {f} not found (pass the folder scripts/gpu_check.sh wrote to)")
        reports.append(json.loads(f.read_text()))
    report = merge(reports)
    if report["dry_run"]:
        raise SystemExit("error: a dry run (CPU, tiny preset) is not a GPU measurement; not recorded")
    card = re.sub(r"[^a-z0-9]+", "-", report["sections"]["env"]["gpu"].lower()).strip("-")
    raw_dir = args.doc.parent / "gpu"
    stem = f"{card}-{args.date}"
    write_text(raw_dir / f"{stem}.json", json.dumps(report, indent=1) + "\n")
    write_text(raw_dir / f"{stem}.md", markdown(report) + "\n")
    section = summary(report, f"gpu/{stem}.md", args.date)
    text = args.doc.read_text() if args.doc.is_file() else "# Benchmarks\n"
    write_text(args.doc, replace_section(text, GPU_HEADING, section))
    print(section)
    print(f"wrote {raw_dir / stem}.json/.md and the section of {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
