"""Deployment benchmarks of issue 15 on CPU: native onnxruntime LoRA adapters, mixed-person batches, fp16 graphs.

    python -m bench.deploy --preset tiny --reps 20     # prints the rows (bench/run.py adds them to its swap table)

`measure` exports the model keep-LoRA with mixed-person graphs of batch 8 (no verification: tests check parity),
adds 8 synthetic people with `Runtime.add_person` (which writes their `.onnx_adapter` files) and times, as medians
of calls alternated in pairs so machine-load drift hits both sides alike:
  * native-adapter overhead: one call of the synthesis graph and one of the render graph with a person's adapter fed
    as numpy arrays vs activated natively (RunOptions.add_active_adapter), same inputs otherwise;
  * mixed-person vs same-person batch of 8: `Runtime.render_batch` of 8 new latents (tri-plane cache disabled, so
    each request runs synthesis and render) of 8 different people (mixed graphs) vs of one person (dynamic-batch
    graphs); throughput = 8 / median seconds per batch. The issue's target is mixed >= 0.9x same.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from bench.timing import paired_ms
from fixtures.people import make_person

BATCH = 8


def _people(G, folder: Path, n: int) -> list[Path]:
    """n synthetic people's adapter files (fixtures.people)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"p{k}.safetensors" for k in range(n)]
    for k, path in enumerate(paths):
        make_person(G, path, 100 + k)
    return paths


def native_adapter_overhead(rt, person: str, reps: int) -> dict[str, float]:
    """Median ms of synthesis + render per call with `person`'s adapter as numpy feeds vs native (RunOptions)."""
    p = rt.people_store.get(person)
    if not all(f.native for f in p.feeds.values()):
        raise RuntimeError(f"{person}: no native adapter files (add the person with Runtime.add_person)")
    ws = p.anchor_latent(0)[None]
    syn, ren = rt.renderer.graph("synthesis"), rt.renderer.graph("render")
    planes = syn.run({"ws": ws, **p.feeds["synthesis"].arrays})["planes"]
    c = rt.renderer.camera(0.2, 0.0)

    def numpy_feeds():
        syn.run({"ws": ws, **p.feeds["synthesis"].arrays})
        ren.run({"planes": planes, "ws": ws, "c": c, **p.feeds["render"].arrays})

    def native():
        syn.run({"ws": ws, **p.feeds["synthesis"].rest}, run_options=p.feeds["synthesis"].run_options)
        ren.run({"planes": planes, "ws": ws, "c": c, **p.feeds["render"].rest},
                run_options=p.feeds["render"].run_options)
    numpy_ms, native_ms = paired_ms(numpy_feeds, native, reps)
    return {"synthesis + render, adapter as numpy feeds (ms)": numpy_ms,
            "synthesis + render, native adapter (ms)": native_ms,
            "native adapter overhead per call (ms)": native_ms - numpy_ms}


def mixed_vs_same_batch(rt, people: list[str], reps: int) -> dict[str, float]:
    """Requests per second of render_batch on BATCH new latents of BATCH people vs of one person."""
    from runtime.batching import ViewRequest
    rng = np.random.default_rng(0)
    counter = iter(range(1 << 30))

    def batch(mixed: bool):
        k = next(counter)  # fresh latents every call: synthesis always runs (and the cache is off anyway)
        ws = rng.standard_normal((BATCH, rt.num_ws, rt.w_dim)).astype(np.float32) * 0.3
        reqs = [ViewRequest(people[i] if mixed else people[0], latent=ws[i], yaw=0.05 * ((i + k) % 5))
                for i in range(BATCH)]
        out = rt.render_batch(reqs)
        bad = [r for r in out if isinstance(r, Exception)]
        if bad:
            raise bad[0]
    same_ms, mixed_ms = paired_ms(lambda: batch(False), lambda: batch(True), reps)
    return {f"same-person batch of {BATCH} (requests/s)": BATCH * 1000 / same_ms,
            f"mixed-person batch of {BATCH} (requests/s)": BATCH * 1000 / mixed_ms,
            f"mixed / same-person batch-{BATCH} throughput (%)": 100 * same_ms / mixed_ms}


def fp16_vs_fp32(G, work: Path, adapter: Path, reps: int, threads: int, log=print) -> dict[str, float]:
    """Merged exports of one person in fp32 and in mixed-precision fp16 (export/fp16_graph.py): max |image diff| of
    the same view from the same latent, and the median ms of a full view (synthesis + render) of each."""
    from export.exporter import export_generator
    from export.options import ExportOptions
    from runtime import Runtime
    runtimes = {}
    for precision in ("fp32", "fp16"):
        log(f"[deploy] exporting the merged person in {precision} ...")
        out = export_generator(G, work / f"merged_{precision}", adapter,
                               ExportOptions(mode="merge", fp16=precision == "fp16", verify=False, overwrite=True))
        runtimes[precision] = Runtime(out, threads=threads, plane_cache_size=0, backend="onnxruntime")
    latent = np.random.default_rng(1).standard_normal(G.w_dim).astype(np.float32) * 0.3
    view = {p: rt.novel_view(rt.people()[0], latent=latent, yaw=0.3, pitch=0.1) for p, rt in runtimes.items()}
    diff = float(np.abs(view["fp16"].image - view["fp32"].image).max())
    fp32_ms, fp16_ms = paired_ms(lambda: runtimes["fp32"].novel_view(runtimes["fp32"].people()[0], latent=latent),
                                  lambda: runtimes["fp16"].novel_view(runtimes["fp16"].people()[0], latent=latent),
                                  reps)
    return {"fp16 vs fp32 graph: max |image difference|": diff, "full view, fp32 graphs (ms)": fp32_ms,
            "full view, fp16 mixed-precision graphs (ms)": fp16_ms}


def measure(G, work: Path, reps: int, threads: int, log=print) -> dict[str, float]:
    """The deployment rows for generator G (bench/run.py's swap table), with synthetic people."""
    from export.exporter import export_generator
    from export.options import ExportOptions
    from runtime import Runtime
    work = Path(work)
    files = _people(G, work / "deploy_people_src", BATCH)
    log(f"[deploy] exporting keep-LoRA graphs with mixed-person batch {BATCH} ...")
    export = export_generator(G, work / "keep_mixed", files[0], ExportOptions(mode="keep", mixed_batch=BATCH,
                                                                            verify=False, overwrite=True))
    people_dir = work / "deploy_people"
    people_dir.mkdir(parents=True, exist_ok=True)
    rt = Runtime(export, people_dir, threads=threads, plane_cache_size=0, backend="onnxruntime")
    names = [f"p{k}" for k in range(BATCH)]
    for name, f in zip(names, files):
        rt.add_person(name, f)
    log(f"[deploy] timing ({reps} reps each, {threads} threads) ...")
    rows = native_adapter_overhead(rt, names[0], reps)
    rows.update(mixed_vs_same_batch(rt, names, max(3, reps // 2)))
    rows.update(fp16_vs_fp32(G, work, files[0], max(3, reps // 2), threads, log))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, required=True, help="folder for the export and the people")
    args = ap.parse_args(argv)
    import torch
    from generator.model_dir import build_generator
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = measure(build_generator(preset_name=args.preset), args.work, args.reps, args.threads,
                   lambda m: print(m, file=sys.stderr, flush=True))
    for k, v in rows.items():
        print(f"| {args.preset} | {k} | {v:.4g} |")
    print(f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
