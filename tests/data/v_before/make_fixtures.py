"""Write the compatibility fixtures of tests/test_compat.py with the version BEFORE issue 10 (commit f4bd311).

Run from a checkout of that commit (the fixtures must be written by the old code, not the current one):

    git worktree add /tmp/base f4bd311
    cd /tmp/base && PYTHONPATH=/tmp/base /path/to/.venv/bin/python /path/to/tests/data/v_before/make_fixtures.py OUT

OUT receives:
    model/                      tiny preset, seed 0, written by generator.model_dir.save_model_dir
    person_fp32.safetensors     an adapter (loralib, rank 4; LoRA B and personal tensors perturbed; 3 W anchors)
    person_fp16.safetensors     the same adapter saved with dtype=float16
    export_keep/                keep-LoRA ONNX export of model/ (fp16 weights and tri-planes: half the bytes of fp32)
    renders.npz                 reference outputs (float32): eager renders of anchor 1 (base model: image_raw and
                                depth; fp32 and fp16 adapter: all three), runtime renders of export_keep (the fp32
                                person: all three; the base model: image_raw and depth; another anchor: image_raw)
    provenance.json             the commit, the library versions and what each array is
"""
from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

VIEW = (0.25, -0.1)
"""(yaw, pitch) of the eager renders (of anchor 1)."""
RUNTIME_VIEW = (0.3, 0.1)


def make_person(G, seed: int):
    from generator.adapter_file import Anchors
    from generator.lora import AdapterPolicy, PersonAdapter
    from generator.views import camera_batch
    g = torch.Generator().manual_seed(seed)
    ad = PersonAdapter.create(G, AdapterPolicy())
    with torch.no_grad():
        for pair in ad.lora.values():
            pair.lora_B.normal_(0, 0.03, generator=g)
        for p in ad.full.values():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
        c = camera_batch(G, [(0.2 * (i - 1), 0.05 * i) for i in range(3)])
        ws = G.mapping(torch.randn(3, G.z_dim, generator=g), c, truncation_psi=0.7)
    return ad, Anchors(ws[:, 0], c, ["photo0", "photo1", "photo2"])


@torch.no_grad()
def eager(G, adapter, anchors) -> dict[str, np.ndarray]:
    from generator.lora import attach
    from generator.views import camera_batch
    attach(G, adapter)
    try:
        ws = anchors.ws_plus(G.num_ws)[1:2]
        out = G.synthesis(ws, camera_batch(G, [VIEW]), noise_mode="const", sampling="deterministic")
    finally:
        attach(G, None)
    return {k: out[k].numpy() for k in ("image", "image_raw", "image_depth")}


def main(out: Path) -> None:
    from generator.adapter_file import load_adapter, save_adapter
    from generator.model_dir import build_generator, load_model_dir, save_model_dir
    from export.exporter import ExportOptions, export_generator
    from runtime import Runtime

    torch.set_num_threads(2)
    out.mkdir(parents=True, exist_ok=True)
    save_model_dir(build_generator(preset_name="tiny", seed=0), out / "model", source={"preset": "tiny", "seed": 0},
                   overwrite=True)
    G = load_model_dir(out / "model")
    adapter, anchors = make_person(G, seed=7)
    save_adapter(out / "person_fp32.safetensors", adapter, G, anchors)
    save_adapter(out / "person_fp16.safetensors", adapter, G, anchors, dtype=torch.float16)

    arrays: dict[str, np.ndarray] = {}
    base = eager(G, None, anchors)
    arrays.update({f"eager_base.{k}": base[k] for k in ("image_raw", "image_depth")})
    for tag in ("fp32", "fp16"):
        ad, an, _ = load_adapter(out / f"person_{tag}.safetensors", G)
        arrays.update({f"eager_{tag}.{k}": v for k, v in eager(G, ad, an).items()})

    shutil.rmtree(out / "export_keep", ignore_errors=True)
    export_generator(G, out / "export_keep", adapter_path=out / "person_fp32.safetensors",
                     options=ExportOptions(mode="keep", fp16=True), source={"model_dir": "model"})
    with tempfile.TemporaryDirectory() as people:
        shutil.copyfile(out / "person_fp32.safetensors", Path(people) / "person.safetensors")
        rt = Runtime(out / "export_keep", people, threads=2)
        for who, name in (("base", None), ("person", "person")):
            res = rt.novel_view(name, latent=anchors.ws[0].numpy(), yaw=RUNTIME_VIEW[0], pitch=RUNTIME_VIEW[1])
            if who == "person":
                arrays[f"runtime_{who}.image"] = res.image
            arrays.update({f"runtime_{who}.image_raw": res.image_raw, f"runtime_{who}.depth": res.depth})
        res = rt.novel_view("person", anchor="photo2", yaw=-0.2, pitch=0.0)
        arrays["runtime_person_anchor2.image_raw"] = res.image_raw
    np.savez_compressed(out / "renders.npz", **arrays)

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    (out / "provenance.json").write_text(json.dumps({
        "commit": commit, "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
        "view": VIEW, "runtime_view": RUNTIME_VIEW, "adapter_seed": 7,
        "arrays": {
            "eager_base.*": "G.synthesis(anchors.ws_plus[1:2], VIEW), const noise, deterministic sampling",
            "eager_fp32.* / eager_fp16.*": "the same with the adapter file attached",
            "runtime_base.* / runtime_person.*": "Runtime(export_keep).novel_view(None / 'person', "
                                                 "latent=anchors.ws[0], RUNTIME_VIEW)",
            "runtime_person_anchor2.image_raw": "novel_view('person', anchor='photo2', yaw=-0.2, pitch=0)",
        }}, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
