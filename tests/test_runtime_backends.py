"""Runtime backends (runtime.backend): the torch backend against onnxruntime for every operation and export mode,
bf16, the choice 'auto' makes, refusals (old exports, bf16 without native kernels, replaced weights) and a
replaced adapter file. Exports come from tests/test_export.py's session cache (tiny preset).

Parity: fp32 torch within the export's own TOL of onnxruntime (fp16 exports: TOL_FP16); bf16 within BF16_TOL of fp32
torch. Each test prints the max abs differences it measured (run with -s to see them).
"""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from runtime import ExportInvalid, InvalidRequest, Runtime
from runtime.batching import ViewRequest
from tests.conftest import REPO
from fixtures.people import make_person
from tests.test_export import TOL, TOL_FP16, G, exports  # noqa: F401 - G, exports: fixtures
from tests.test_mixed_batch import mixed_export  # noqa: F401 - fixture

BF16_TOL = 1e-2
KEYS = ("image", "image_raw", "depth")


@pytest.fixture
def people(tmp_path, exports):
    d = tmp_path / "people"
    shutil.copytree(exports["people"], d)
    return d


def both(export, people=None) -> tuple[Runtime, Runtime]:
    return (Runtime(export, people, threads=2, backend="onnxruntime"),
            Runtime(export, people, threads=2, backend="torch"))


def diff(a, b) -> float:
    """Max abs difference of two results (or lists of results) over image, image_raw and depth."""
    a, b = (a, b) if isinstance(a, list) else ([a], [b])
    assert len(a) == len(b)
    return max(float(np.abs(getattr(x, k) - getattr(y, k)).max()) for x, y in zip(a, b) for k in KEYS)


def check(diffs: dict[str, float], tol: float) -> None:
    print({k: f"{v:.2e}" for k, v in diffs.items()})
    bad = {k: v for k, v in diffs.items() if not v <= tol}
    assert not bad, (bad, tol)


def test_keep_lora_every_operation_matches_onnxruntime(exports, people):
    ort, tb = both(exports["keep"], people)
    assert tb.stats()["backend"]["name"] == "torch" and ort.stats()["backend"]["name"] == "onnxruntime"
    w = np.random.default_rng(3).standard_normal((tb.num_ws, tb.w_dim)).astype(np.float32) * 0.3
    batch = [ViewRequest("alice", anchor=k, yaw=0.1 * k) for k in range(3)] + [ViewRequest("bob", anchor=0)]
    ops = {
        "novel_view": lambda rt: rt.novel_view("alice", anchor="photo1", yaw=0.4, pitch=-0.2),
        "novel_view_w_plus": lambda rt: rt.novel_view("bob", latent=w, yaw=-0.5, pitch=0.1),
        "base_model": lambda rt: rt.novel_view(None, latent=w, yaw=0.2),
        "interpolate": lambda rt: rt.interpolate("alice", 0, "photo2", 0.25, yaw=-0.2, pitch=0.1),
        "interpolation_video": lambda rt: rt.interpolation("bob", 0, 2, frames=3),
        "orbit_video": lambda rt: rt.orbit("alice", anchor=1, frames=3),
        "turntable": lambda rt: rt.turntable("bob", 1, frames=3),
        "render_batch": lambda rt: rt.render_batch(batch),
    }
    check({name: diff(op(ort), op(tb)) for name, op in ops.items()}, TOL)
    z = np.random.RandomState(0).randn(tb.z_dim).astype(np.float32)
    assert float(np.abs(ort.map(z) - tb.map(z)).max()) <= 1e-5
    assert tb.stats()["adapter_paths"]["adapter"] > 0 and tb.stats()["adapter_paths"]["base"] > 0


def test_merged_and_base_exports_match_onnxruntime(exports):
    ort, tb = both(exports["merged_alice"])
    assert tb.people() == ["alice"] and tb.manifest.torch_model[1] != tb.manifest.base_fingerprint  # merged weights
    diffs = {"merged_novel_view": diff(ort.novel_view("alice", anchor=2, yaw=0.3), tb.novel_view("alice", anchor=2,
                                                                                                   yaw=0.3)),
             "merged_orbit": diff(ort.orbit("alice", anchor=0, frames=2), tb.orbit("alice", anchor=0, frames=2))}
    check(diffs, TOL)
    ort, tb = both(exports["base_fp16"])  # torch runs the fp32 weights: within the fp16 export's tolerance
    w = np.random.default_rng(4).standard_normal((tb.num_ws, tb.w_dim)).astype(np.float32) * 0.3
    check({"base_fp16_novel_view": diff(ort.novel_view(None, latent=w, yaw=-0.3),
                                        tb.novel_view(None, latent=w, yaw=-0.3))}, TOL_FP16)


@pytest.mark.slow  # the mixed export: ~30-60 s on 2 busy cores
def test_mixed_people_batch_matches_onnxruntime(mixed_export, exports, tmp_path):
    people = tmp_path / "people"
    people.mkdir()
    for name in ("alice", "bob"):
        shutil.copy(exports["people"] / f"{name}.safetensors", people / f"{name}.safetensors")
    ort, tb = both(mixed_export, people)
    w = np.random.default_rng(3).standard_normal((tb.num_ws, tb.w_dim)).astype(np.float32) * 0.3
    requests = [ViewRequest("alice", anchor=0, yaw=0.2), ViewRequest("bob", anchor=1, yaw=-0.3, pitch=0.1),
                ViewRequest(None, latent=w, yaw=0.1), ViewRequest("alice", anchor=2), ViewRequest("bob", latent=w)]
    a, b = ort.render_batch(requests), tb.render_batch(requests)
    check({"mixed_render_batch": diff(a, b)}, TOL)
    # 5 requests of 3 people: one mixed run of 4 and one one-person run, for synthesis and for render
    paths = tb.stats()["adapter_paths"]
    assert paths["mixed"] == 2 and sum(paths.values()) == 4, paths


def test_bf16_is_close_to_fp32_where_the_cpu_has_it(exports, people):
    from generator.precision import cpu_has_fast_bf16
    if not cpu_has_fast_bf16():
        pytest.skip("this CPU has no native bf16 kernels (AVX512-BF16 / AMX): the torch backend refuses bf16 here")
    fp32 = Runtime(exports["keep"], people, threads=2, backend="torch")
    bf16 = Runtime(exports["keep"], people, threads=2, backend="torch", precision="bf16")
    assert bf16.stats()["backend"]["precision"] == "bf16"
    check({"bf16_novel_view": diff(fp32.novel_view("alice", anchor=1, yaw=0.3),
                                   bf16.novel_view("alice", anchor=1, yaw=0.3)),
           "bf16_render_batch": diff(fp32.render_batch([ViewRequest("bob", anchor=0)]),
                                     bf16.render_batch([ViewRequest("bob", anchor=0)]))}, BF16_TOL)


def test_bf16_is_refused_with_the_reason(exports, monkeypatch):
    import runtime.torch_backend as tb
    monkeypatch.setattr(tb, "cpu_has_fast_bf16", lambda: False)
    for backend in ("torch", "auto"):
        with pytest.raises(InvalidRequest, match="native bf16") as info:
            Runtime(exports["keep"], backend=backend, precision="bf16")
        assert info.value.field == "precision"
    for precision in ("bf16", "fp16"):
        with pytest.raises(InvalidRequest, match="torch backend's.*export --fp16") as info:
            Runtime(exports["keep"], backend="onnxruntime", precision=precision)
        assert info.value.field == "precision"
    with pytest.raises(InvalidRequest, match="fp16' runs on CUDA only") as info:
        Runtime(exports["keep"], backend="torch", precision="fp16", device="cpu")
    assert info.value.field == "precision"
    for kwargs, field in (({"backend": "jax"}, "backend"), ({"precision": "int8"}, "precision"),
                          ({"backend": "torch", "device": "tpu"}, "device"),
                          ({"backend": "onnxruntime", "compile": True}, "compile")):
        with pytest.raises(InvalidRequest) as info:
            Runtime(exports["keep"], **kwargs)
        assert info.value.field == field, kwargs


def test_onnxruntime_options_mean_onnxruntime(exports):
    with pytest.raises(InvalidRequest, match="onnxruntime option") as info:
        Runtime(exports["keep"], providers="cpu", backend="torch")
    assert info.value.field == "providers"
    rt = Runtime(exports["keep"], io_binding=False, backend="auto")
    assert rt.stats()["backend"]["name"] == "onnxruntime" and "io_binding" in rt.stats()["backend"]["why"]


def old_export(exports, tmp_path, edit):
    """A copy of the keep-LoRA export whose manifest `edit` changed."""
    d = tmp_path / "old"
    shutil.copytree(exports["keep"], d)
    m = json.loads((d / "manifest.json").read_text())
    edit(m, d)
    (d / "manifest.json").write_text(json.dumps(m))
    return d


def test_export_without_torch_section_refuses_torch_and_auto_says_why(exports, tmp_path, caplog):
    def drop(m, d):
        del m["torch"]
        shutil.rmtree(d / "model")
    d = old_export(exports, tmp_path, drop)
    with pytest.raises(InvalidRequest, match="re-export") as info:
        Runtime(d, backend="torch")
    assert info.value.field == "backend" and "'torch'" in str(info.value)
    with caplog.at_level(logging.INFO, logger="my3dgen.runtime"):
        rt = Runtime(d, backend="auto")
    assert rt.stats()["backend"]["name"] == "onnxruntime" and "no 'torch' field" in rt.stats()["backend"]["why"]
    assert any("no 'torch' field" in r.getMessage() for r in caplog.records)


def test_replaced_model_weights_are_refused(exports, tmp_path):
    def other(m, d):
        m["torch"]["weights_fingerprint"] = "sha256:" + "0" * 64
    with pytest.raises(ExportInvalid, match="re-export"):
        Runtime(old_export(exports, tmp_path, other), backend="torch")


def test_manifest_torch_field_is_checked(exports, tmp_path):
    from formats.errors import ManifestError
    from formats.export_manifest import ExportManifest
    assert ExportManifest.read(exports["keep"]).torch_model[0] == exports["keep"] / "model"

    def outside(m, d):
        m["torch"]["model_dir"] = "../elsewhere"
    with pytest.raises(ManifestError, match="torch.model_dir"):
        ExportManifest.read(old_export(exports, tmp_path, outside))


def test_auto_picks_a_backend_and_logs_why(exports, people, caplog):
    with caplog.at_level(logging.INFO, logger="my3dgen.runtime"):
        rt = Runtime(exports["keep"], people, threads=2, backend="auto")
    b = rt.stats()["backend"]
    assert b["name"] in ("onnxruntime", "torch") and "one cached-plane render" in b["why"], b
    assert any("backend='auto'" in r.getMessage() and b["why"] in r.getMessage() for r in caplog.records)
    assert rt.novel_view("alice", anchor=0).image.shape == (3, 128, 128)
    assert sum(rt.stats()["adapter_paths"].values()) == 2  # the request's synthesis + render, not auto's timing


def test_a_replaced_adapter_file_is_rebuilt(G, exports, people, tmp_path):
    ort, tb = both(exports["keep"], people)
    old = tb.novel_view("alice", anchor=0, yaw=0.1)
    for rt in (ort, tb):
        rt.add_person("alice", make_person(G, tmp_path / "alice2.safetensors", seed=21))
    new = tb.novel_view("alice", anchor=0, yaw=0.1)
    assert diff(old, new) > 1e-2
    check({"replaced_adapter": diff(new, ort.novel_view("alice", anchor=0, yaw=0.1))}, TOL)


def test_command_line_backend_and_precision_options():
    from runtime.__main__ import UsageError, parse_args
    args = parse_args(["e", "a.safetensors", "--out", "x.png", "--backend", "torch", "--precision", "bf16",
                       "--device", "cpu", "--compile"])
    assert (args.backend, args.precision, args.device, args.compile) == ("torch", "bf16", "cpu", True)
    default = parse_args(["e", "a", "--out", "x.png"])
    assert (default.backend, default.precision, default.device, default.compile) == ("auto", "fp32", None, False)
    for bad in (["--backend", "jax"], ["--precision", "int8"]):
        with pytest.raises(UsageError, match="invalid choice"):
            parse_args(["e", "a", "--out", "x.png", *bad])


def test_the_default_backend_is_onnxruntime_without_timing(exports):
    """A Runtime made without a backend (a library call) is onnxruntime's, with no start-up timing; the entry
    points choose 'auto' themselves."""
    rt = Runtime(exports["keep"])
    assert rt.stats()["backend"]["name"] == "onnxruntime"


def test_a_library_user_gets_the_passive_wait_or_is_told_why_not(caplog, monkeypatch):
    """Before torch loads, opening the torch backend sets OMP_WAIT_POLICY=PASSIVE (launch/threads.py); after,
    it cannot (libgomp read it at load) and says so once; a user's own setting is kept."""
    import subprocess
    import sys

    from runtime import choose_backend
    code = ("import os, sys; os.environ.pop('OMP_WAIT_POLICY', None); os.environ.pop('GOMP_SPINCOUNT', None)\n"
            "from runtime.choose_backend import _passive_wait_before_torch as f\n"
            "f(); print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)\n"
            "os.environ['OMP_WAIT_POLICY'] = 'ACTIVE'; f(); print(os.environ['OMP_WAIT_POLICY'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.stdout.split() == ["PASSIVE", "False", "ACTIVE"], out.stderr
    import torch  # noqa: F401 - loaded in this process: too late for the policy
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.setattr(choose_backend, "_WARNED_WAIT", [])
    with caplog.at_level(logging.WARNING, logger="my3dgen.runtime"):
        choose_backend._passive_wait_before_torch()
        choose_backend._passive_wait_before_torch()
    assert sum("OMP_WAIT_POLICY=PASSIVE before importing torch" in r.message for r in caplog.records) == 1
