"""The torch backend's static path on the CPU: the parts a CUDA graph relies on, run here without one.

- adapter slots (runtime.adapter_slots): a person swap copies into fixed tensors and re-activates attachments built
  once; swapping A -> B -> A gives each person's eager image (fp32, within 1e-5 of a fresh attach; the same bits
  each time the person comes back), a slot that
  already holds the person copies nothing, tensors that do not fit are refused naming the file;
- graph keys (runtime.static_graphs): one per (operation, batch, precision, routing), made once, reused by every
  person; a mixed batch of people seen before copies nothing;
- the tri-plane cache is bounded in bytes, with its hit rate in stats.
Exports come from tests/test_export.py's session cache (tiny preset).
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from runtime import AdapterInvalid, Runtime
from runtime.batching import ViewRequest
from runtime.planes import PlaneCache, nbytes
from tests.test_export import G, eager_render, exports  # noqa: F401 - G, exports: fixtures
from tests.test_mixed_batch import N, mixed_export  # noqa: F401 - fixture


@pytest.fixture
def people(tmp_path, exports):
    d = tmp_path / "people"
    shutil.copytree(exports["people"], d)
    return d


def test_person_swaps_copy_into_static_slots_and_match_a_fresh_attach(G, exports, people):
    rt = Runtime(exports["keep"], people, threads=2, backend="torch", plane_cache_size=0)
    tb = rt.backend
    order = ["alice", "bob", "alice", "alice", None, "bob"]
    images = [rt.novel_view(p, latent=np.full(rt.w_dim, 0.1, np.float32), yaw=0.2).image for p in order]
    # each person's image is the eager generator's with their adapter freshly attached (fp32: within 1e-5), and
    # the same bits every time that person comes back after a swap
    ws = torch.full((1, rt.num_ws, rt.w_dim), 0.1)
    c = torch.from_numpy(tb.camera(0.2, 0.0))
    for name, image in zip(order, images):
        ref = eager_render(G, ws, c, None if name is None else people / f"{name}.safetensors")["image"][0]
        assert float(np.abs(image - ref).max()) <= 1e-5, name
        assert np.array_equal(image, images[order.index(name)]), name
    assert float(np.abs(images[0] - images[1]).max()) > 1e-3  # alice and bob differ: the swap took effect
    slots = {k: v for k, v in tb.describe()["adapter_slots"].items()}
    # synthesis and render each: one single-person slot set; copies only when the person changes (a, b, a, b)
    assert set(slots) == {"synthesis/single", "render/single"}
    assert all(s["copies"] == 4 and s["slots"] == 1 and s["bytes"] > 0 for s in slots.values()), slots
    keys = {tuple(k) for k in tb.describe()["graphs"]["keys"]}
    assert keys == {(op, 1, "fp32", routing) for op in ("planes", "render") for routing in ("single", "base")}
    assert tb.describe()["graphs"]["captured"] is False and tb.describe()["graphs"]["eager_runs"] == 2 * len(order)


def test_attachments_are_built_once_and_reactivated(exports, people):
    rt = Runtime(exports["keep"], people, threads=2, backend="torch")
    tb = rt.backend
    rt.novel_view("alice", anchor=0)
    slots = tb._slots[("render", "single")]
    single, buffers = slots.single, [t.data_ptr() for t in slots.buffers[0].values()]
    rt.novel_view("bob", anchor=0)
    rt.novel_view("alice", anchor=1)
    assert tb._slots[("render", "single")] is slots and slots.single is single
    assert [t.data_ptr() for t in slots.buffers[0].values()] == buffers  # the same memory: what a graph reads
    assert slots.holds == [rt.people_store.get("alice").identity] != [rt.people_store.get("bob").identity]


def test_a_slot_refuses_tensors_that_do_not_fit(exports, people):
    rt = Runtime(exports["keep"], people, threads=2, backend="torch")
    rt.novel_view("alice", anchor=0)
    slots = rt.backend._slots[("synthesis", "single")]
    good = {k: torch.zeros(s) for k, s in slots.shapes.items()}
    name = next(iter(good))
    with pytest.raises(AdapterInvalid, match=f"{name} has shape") as info:
        slots.load(0, "someone", {**good, name: torch.zeros(3, 5, 7)}, "carol.safetensors")
    assert info.value.path == "carol.safetensors"
    assert slots.holds[0] is None  # a failed copy never leaves the slot marked as someone
    with pytest.raises(AdapterInvalid, match="missing tensors"):
        slots.load(0, "someone", {k: v for k, v in good.items() if k != name}, "carol.safetensors")
    assert slots.load(0, "zeros", good) and not slots.load(0, "zeros", good)  # a second load copies nothing


def test_mixed_batches_reuse_slots_of_people_seen_before(mixed_export, exports, tmp_path):
    people = tmp_path / "people"
    people.mkdir()
    for name in ("alice", "bob"):
        shutil.copy(exports["people"] / f"{name}.safetensors", people / f"{name}.safetensors")
    rt = Runtime(mixed_export, people, threads=2, backend="torch", plane_cache_size=0)
    ort = Runtime(mixed_export, people, threads=2, backend="onnxruntime", plane_cache_size=0)
    w = np.random.default_rng(5).standard_normal((rt.num_ws, rt.w_dim)).astype(np.float32) * 0.3
    batch = [ViewRequest("bob", latent=w), ViewRequest(None, latent=w, yaw=0.3), ViewRequest("alice", anchor=1),
             ViewRequest("bob", anchor=0, pitch=0.1)][:N]
    first = rt.render_batch(batch)
    slots = rt.backend._slots[("render", "mixed")]
    copies, holds = slots.copies, list(slots.holds)
    again = rt.render_batch(list(reversed(batch)))  # the same people in another order: no copy
    assert slots.copies == copies and slots.holds == holds
    for a, b in zip(first, reversed(again)):
        assert np.array_equal(a.image, b.image)
    ref = ort.render_batch(batch)
    assert max(float(np.abs(a.image - b.image).max()) for a, b in zip(first, ref)) <= 1e-4
    assert ("render", N, "fp32", "mixed") in {tuple(k) for k in rt.backend.describe()["graphs"]["keys"]}


def test_plane_cache_is_bounded_in_bytes_with_its_hit_rate():
    planes = np.zeros((1, 3, 4, 8, 8), np.float32)  # 3072 bytes
    cache = PlaneCache(capacity=100, max_bytes=3 * planes.nbytes)
    for k in range(5):
        cache.put("p", "id", str(k), planes.copy())
    s = cache.stats()
    assert (s["size"], s["bytes"], s["evictions"]) == (3, 3 * planes.nbytes, 2)
    assert cache.get("p", "id", "0") is None and cache.get("p", "id", "4") is not None
    assert cache.stats()["hit_rate"] == 0.5
    cache.put("p", "id", "big", np.zeros(4 * planes.size, np.float32))  # over the whole budget: not stored
    assert cache.get("p", "id", "big") is None and cache.stats()["bytes"] == 3 * planes.nbytes
    cache.forget("p")
    assert cache.stats()["bytes"] == 0
    assert nbytes(torch.zeros(2, 3, dtype=torch.float16)) == 12 and nbytes(planes) == planes.nbytes


def test_runtime_plane_cache_bytes_bound_holds(exports):
    rt = Runtime(exports["keep"], threads=2, backend="torch", plane_cache_bytes=1)
    rt.novel_view(None, latent=np.zeros(rt.w_dim, np.float32))
    rt.novel_view(None, latent=np.zeros(rt.w_dim, np.float32))
    s = rt.stats()["plane_cache"]
    assert (s["size"], s["bytes"], s["hits"], s["max_bytes"]) == (0, 0, 0, 1)  # planes exceed 1 byte: never kept
    rt = Runtime(exports["keep"], threads=2, backend="torch")
    rt.novel_view(None, latent=np.zeros(rt.w_dim, np.float32), yaw=0.1)
    rt.novel_view(None, latent=np.zeros(rt.w_dim, np.float32), yaw=0.2)
    s = rt.stats()["plane_cache"]
    assert s["size"] == 1 and s["bytes"] > 0 and s["hit_rate"] == 0.5
