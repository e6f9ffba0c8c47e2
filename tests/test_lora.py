"""LoRA adapters: the paper's budget, exact no-op init, merge/unmerge, mixed-person batches, adapter files."""
import os

import numpy as np
import pytest
import torch

from generator import TriPlaneGenerator, preset
from generator.adapter_file import AdapterFileError, Anchors, load_adapter, read_adapter_meta, save_adapter
from formats.cameras import lookat_label
from generator.layers import Personalizable, SynthesisLayer, ToRGBLayer
from generator.lora import (AdapterPolicy, PersonAdapter, Role, attach, attach_mixed, attachment_of, count_table,
                            detach, merge, merged_state_dict, module_roles, plan, unmerge)

TOL = 1e-5


@pytest.fixture(scope="module")
def ffhq():
    torch.manual_seed(0)
    return TriPlaneGenerator(preset("ffhq512-128"))


@pytest.mark.parametrize("kw,expected", [
    ({}, 590_096),
    ({"train_decoder": False}, 585_839),
    ({"train_decoder": False, "train_biases": False}, 561_048),
    ({"layout": "flat"}, 393_488),
    ({"layout": "flat", "train_decoder": False, "train_biases": False}, 364_440),
    ({"rank": 1}, 169_310),
    ({"rank": 8}, 1_151_144),
    ({"parts": ("synthesis", "superresolution", "mapping")}, 602_484),
])
def test_trainable_parameter_budget(ffhq, kw, expected):
    targets = plan(ffhq, AdapterPolicy(**kw))
    assert sum(t.numel for t in targets) == expected
    assert PersonAdapter.create(ffhq, AdapterPolicy(**kw)).num_parameters() == expected


def test_full_mode_trains_everything_but_mapping(ffhq):
    n = sum(t.numel for t in plan(ffhq, AdapterPolicy(mode="full")))
    assert n == 30_662_136 - 800_768


def _tiny(seed=0):
    torch.manual_seed(seed)
    return TriPlaneGenerator(preset("tiny")).eval()


def _randomize(adapter, seed, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return adapter


def _inputs(G, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, G.z_dim, generator=g)
    c = torch.from_numpy(np.stack([lookat_label(0.3 * (i - 0.5), 0.1) for i in range(n)]))
    return z, c


def _run(G, z, c, **kw):
    with torch.no_grad():
        return G(z, c, truncation_psi=0.7, **kw)


@pytest.mark.parametrize("layout", ["loralib", "flat"])
def test_untrained_adapter_is_exact_noop(layout):
    G = _tiny()
    z, c = _inputs(G)
    base = _run(G, z, c)
    attach(G, PersonAdapter.create(G, AdapterPolicy(layout=layout)))
    adapted = _run(G, z, c)
    for k in base:
        assert torch.equal(base[k], adapted[k]), k


def _check_merge(G, adapter, z, c, fused):
    attach(G, adapter)
    unmerged = _run(G, z, c, fused_modconv=fused)
    detach(G)
    before = {k: v.clone() for k, v in G.state_dict().items()}
    merge(G, adapter)
    merged = _run(G, z, c, fused_modconv=fused)
    for k in unmerged:
        assert (merged[k] - unmerged[k]).abs().max() < TOL, k
    assert any(not torch.equal(before[k], v) for k, v in G.state_dict().items())
    unmerge(G)
    for k, v in G.state_dict().items():
        assert torch.equal(before[k], v), f"unmerge did not restore {k} bit-exactly"
    return unmerged


@pytest.mark.parametrize("layout", ["loralib", "flat"])
def test_merge_equals_unmerged_and_unmerge_is_bit_exact_tiny(layout):
    G = _tiny()
    adapter = _randomize(PersonAdapter.create(G, AdapterPolicy(layout=layout)), 1)
    z, c = _inputs(G)
    out = _check_merge(G, adapter, z, c, fused=None)
    detach(G)
    assert (out["image"] - _run(G, z, c)["image"]).abs().max() > 1e-3, "adapter had no effect"
    _check_merge(G, adapter, z, c, fused=False)


def test_merge_on_official_fixture_config(official_generator, official_io):
    G = official_generator
    adapter = _randomize(PersonAdapter.create(G), 2, scale=0.02)
    z, c = torch.from_numpy(official_io["z"][:1]), torch.from_numpy(official_io["c"][:1])
    _check_merge(G, adapter, z, c, fused=None)
    detach(G)


def test_merged_state_dict_does_not_touch_G():
    G = _tiny()
    adapter = _randomize(PersonAdapter.create(G), 3)
    before = {k: v.clone() for k, v in G.state_dict().items()}
    sd = merged_state_dict(G, adapter)
    for k, v in G.state_dict().items():
        assert torch.equal(before[k], v)
    H = _tiny()
    H.load_state_dict(sd)
    z, c = _inputs(G)
    attach(G, adapter)
    a, b = _run(G, z, c), _run(H, z, c)
    assert (a["image"] - b["image"]).abs().max() < TOL


def test_mixed_person_batch_matches_separate_runs():
    G = _tiny()
    people = [_randomize(PersonAdapter.create(G), s) for s in (10, 11, 12)]
    z, c = _inputs(G, n=5, seed=4)
    index = torch.tensor([2, 0, -1, 1, 0])
    attach_mixed(G, people, index)
    mixed = _run(G, z, c)
    for n, who in enumerate(index.tolist()):
        attach(G, None if who < 0 else people[who])
        alone = _run(G, z[n:n + 1], c[n:n + 1])
        for k in mixed:
            diff = (mixed[k][n] - alone[k][0]).abs().max()
            assert diff < TOL, f"sample {n} ({k}) differs by {diff}"
    detach(G)


def test_attachment_owns_merge_unmerge_and_detach():
    from generator.adapter_file import base_fingerprint
    G = _tiny()
    z, c = _inputs(G)
    base = _run(G, z, c)
    before = {k: v.clone() for k, v in G.state_dict().items()}
    fingerprint = base_fingerprint(G)
    adapter = _randomize(PersonAdapter.create(G), 7)
    handle = attach(G, adapter)
    assert attachment_of(G) is handle and "decoder.net.0" in handle.layers()
    unmerged = _run(G, z, c)
    handle.merge()
    assert base_fingerprint(G) == fingerprint, "a merged adapter changed the base fingerprint"
    merged = _run(G, z, c)
    assert all((merged[k] - unmerged[k]).abs().max() < TOL for k in merged)
    with pytest.raises(RuntimeError, match="merged into this generator"):
        attach(G, adapter)
    handle.unmerge()
    assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())
    assert torch.equal(_run(G, z, c)["image"], unmerged["image"])  # still attached after unmerge
    handle.detach()
    assert attachment_of(G) is None
    assert all(m.adapter is None for m in G.modules() if isinstance(m, Personalizable))
    assert torch.equal(_run(G, z, c)["image"], base["image"])
    with attach(G, adapter) as handle:  # leaving the block detaches, unmerging first
        handle.merge()
    assert attachment_of(G) is None and all(torch.equal(before[k], v) for k, v in G.state_dict().items())


def test_attach_errors_say_what_is_wrong(ffhq):
    G = _tiny()
    people = [PersonAdapter.create(G) for _ in range(2)]
    with pytest.raises(ValueError, match="mixed-person attachment cannot be merged"):
        attach_mixed(G, people, torch.tensor([0, 1])).merge()
    with pytest.raises(ValueError, match="adapter index out of range"):
        attach_mixed(G, people, torch.tensor([0, 2]))
    detach(G)
    with pytest.raises(ValueError, match=r"adapter targets layer 'backbone\.synthesis\.b\d+\.conv0', but this "
                                         r"generator has no such module"):
        attach(G, PersonAdapter.create(ffhq))
    assert attachment_of(G) is None
    with pytest.raises(RuntimeError, match="no adapter is merged"):
        unmerge(G)


def test_layer_roles_come_from_the_module_tree():
    G = _tiny()
    roles = module_roles(G)
    for name, m in G.named_modules():
        if isinstance(m, (SynthesisLayer, ToRGBLayer)):
            kind = "conv" if isinstance(m, SynthesisLayer) else "torgb"
            part = "synthesis" if name.startswith("backbone.") else "superresolution"
            assert roles[name] == Role(part, kind) and roles[f"{name}.affine"] == Role(part, "affine")
    assert roles["backbone.mapping.fc0"] == Role("mapping", "fc") and roles["decoder.net.2"] == Role("decoder", "fc")
    assert roles["backbone.synthesis.b4"] == Role("synthesis", "block")
    table = {label: (n, size) for label, n, size in
             count_table(plan(G, AdapterPolicy(parts=("synthesis", "superresolution", "mapping"))))}
    assert {"LoRA synthesis conv", "LoRA synthesis torgb", "LoRA synthesis affine", "LoRA superresolution conv",
            "LoRA mapping fc", "decoder (full)", "synthesis const (full)"} <= set(table)
    assert table["LoRA mapping fc"][0] == 3 and table["decoder (full)"][0] == 4


def test_gradients_reach_only_the_adapter():
    G = _tiny()
    G.requires_grad_(False)
    adapter = PersonAdapter.create(G)
    _randomize(adapter, 5)
    attach(G, adapter)
    z, c = _inputs(G, n=1)
    out = G(z, c)
    (out["image"].square().mean() + out["image_raw"].square().mean()).backward()
    grads = {n: p.grad for n, p in adapter.named_parameters()}
    # EG3D's SR runs with noise_mode 'none', so its noise strengths (counted in the paper's budget) get no gradient
    unused = {n for n in grads if n.startswith("full.superresolution") and n.endswith("noise_strength")}
    assert {n for n, g in grads.items() if g is None} == unused and len(unused) == 4
    grads = {n: g for n, g in grads.items() if n not in unused}
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert sum(float(g.abs().sum()) > 0 for g in grads.values()) > 0.9 * len(grads)
    assert all(p.grad is None for p in G.parameters())


def test_adapter_file_round_trip_fp32_and_fp16(tmp_path):
    G = _tiny()
    adapter = _randomize(PersonAdapter.create(G), 6)
    anchors = Anchors(torch.randn(3, G.w_dim), torch.from_numpy(np.stack([lookat_label(0, 0)] * 3)),
                      ["a.png", "b.png", "c.png"])
    z, c = _inputs(G)
    attach(G, adapter)
    ref = _run(G, z, c)
    for dtype, tol in ((torch.float32, 0.0), (torch.float16, 5e-2)):
        path = save_adapter(tmp_path / f"p_{dtype}.safetensors", adapter, G, anchors, dtype=dtype)
        loaded, anch, meta = load_adapter(path, G)
        assert meta["rank"] == 4 and meta["layout"] == "loralib" and meta["alpha"] == 4.0
        assert anch.names == anchors.names and torch.allclose(anch.ws, anchors.ws, atol=1e-3)
        attach(G, loaded)
        out = _run(G, z, c)
        assert (out["image"] - ref["image"]).abs().max() <= tol
    detach(G)


def test_adapter_for_another_base_is_refused(tmp_path):
    G, other = _tiny(0), _tiny(1)
    path = save_adapter(tmp_path / "p.safetensors", PersonAdapter.create(G), G)
    with pytest.raises(AdapterFileError, match="different base model"):
        load_adapter(path, other)


def test_corrupt_and_mismatched_adapter_files_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file
    G = _tiny()
    path = save_adapter(tmp_path / "p.safetensors", PersonAdapter.create(G), G)
    meta = {"my3dgen_adapter": __import__("json").dumps(read_adapter_meta(path))}
    tensors = load_file(str(path))
    key = next(k for k in tensors if k.endswith("lora_A"))
    bad = dict(tensors)
    bad.pop(key)
    save_file(bad, str(tmp_path / "missing.safetensors"), metadata=meta)
    with pytest.raises(AdapterFileError, match=f"missing tensors: {key}"):
        load_adapter(tmp_path / "missing.safetensors", G)
    bad = dict(tensors)
    bad[key] = torch.zeros(1, 2)
    save_file(bad, str(tmp_path / "shape.safetensors"), metadata=meta)
    with pytest.raises(AdapterFileError, match="mis-shaped"):
        load_adapter(tmp_path / "shape.safetensors", G)
    bad = dict(tensors)
    bad[key] = torch.full_like(tensors[key], float("nan"))
    save_file(bad, str(tmp_path / "nan.safetensors"), metadata=meta)
    with pytest.raises(AdapterFileError, match="non-finite"):
        load_adapter(tmp_path / "nan.safetensors", G)
    (tmp_path / "junk.safetensors").write_bytes(os.urandom(64))
    with pytest.raises(AdapterFileError, match="not a readable safetensors"):
        load_adapter(tmp_path / "junk.safetensors", G)
    save_file(tensors, str(tmp_path / "nometa.safetensors"))
    with pytest.raises(AdapterFileError, match="no 'my3dgen_adapter' metadata"):
        load_adapter(tmp_path / "nometa.safetensors", G)


def test_rank4_ffhq_adapter_file_sizes(ffhq, tmp_path):
    """README numbers: rank-4 loralib person with 10 W anchors is <= 2.5 MB fp32 and <= 1.3 MB fp16."""
    adapter = PersonAdapter.create(ffhq)
    anchors = Anchors(torch.randn(10, 512), torch.randn(10, 25))
    p32 = save_adapter(tmp_path / "p32.safetensors", adapter, ffhq, anchors)
    p16 = save_adapter(tmp_path / "p16.safetensors", adapter, ffhq, anchors, dtype=torch.float16)
    assert os.path.getsize(p32) <= 2_500_000
    assert os.path.getsize(p16) <= 1_300_000
