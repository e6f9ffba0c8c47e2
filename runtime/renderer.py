"""The graphs of an export, run: mapping (z -> W+), synthesis (W+ -> tri-planes), render (tri-planes + camera ->
images). Graphs run on onnxruntime or TensorRT engines (runtime.session); cameras come from formats.cameras.

A person's adapter reaches a graph as runtime.native_adapters.GraphFeeds: their native onnxruntime adapter (active in
RunOptions) where the graph takes one; on a graph bound to a CUDA device, their adapter values uploaded once and
kept there as OrtValues (onnxruntime's I/O binding ignores active adapters); else numpy feeds. `adapter_paths`
counts which path each run took. Mixed-
person batches run the export's static-batch `*_mixed` graphs with per-sample adapter arrays. Tri-planes stay on the
device (OrtValues) when synthesis and render both run there through I/O binding.
"""
from __future__ import annotations

import threading
from typing import Any, Sequence

import numpy as np

from formats.export_manifest import ExportManifest
from runtime.backend import Backend
from runtime.errors import AdapterInvalid, ExportInvalid
from runtime.native_adapters import GraphFeeds
from runtime.session import Graph, OrtGraph, choose_providers, open_graph

SERVED = ("synthesis", "render")


class Renderer(Backend):
    """The onnxruntime backend (runtime.backend): opens the synthesis and render graphs at once, the mapping and
    mixed-batch graphs on first use.

    `io_binding`: force onnxruntime's I/O binding on or off (default: on for the CUDA / TensorRT EPs only)."""

    name = "onnxruntime"

    def __init__(self, manifest: ExportManifest, providers: str | Sequence[str] = "auto", threads: int | None = None,
                 io_binding: bool | None = None):
        super().__init__(manifest)
        self.providers = choose_providers(providers, engines_present=bool(manifest.engines))
        self.threads = threads
        self.io_binding = io_binding
        self._graphs: dict[str, Graph] = {g: self._open(g) for g in SERVED}
        self._lazy_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._paths = {"defaults": 0, "native": 0, "device": 0, "numpy": 0}

    def _open(self, name: str) -> Graph:
        return open_graph(self.manifest.directory, name, self.manifest.graph(name), self.providers, self.threads,
                          self.manifest.engines, self.io_binding)

    def _lazy(self, name: str, why: str) -> Graph:
        with self._lazy_lock:
            if name not in self._graphs:
                if self.manifest.graph(name) is None:
                    raise ExportInvalid(str(self.manifest.directory), f"this export has no {name} graph ({why})")
                self._graphs[name] = self._open(name)
            return self._graphs[name]

    def graph(self, name: str) -> Graph:
        """A loaded graph ('synthesis', 'render', or a lazily opened 'mapping' / '*_mixed' graph)."""
        return self._graphs[name] if name in self._graphs else self._lazy(name, "asked for by name")

    @property
    def graph_providers(self) -> dict[str, str]:
        """The provider each loaded graph actually runs on."""
        return {g: s.provider for g, s in self._graphs.items()}

    @property
    def adapter_paths(self) -> dict[str, int]:
        """How many graph runs with adapter inputs ran the base model on the graph's defaults (no feed), got a
        person's adapter natively (RunOptions), as values kept on the device, or as numpy feeds."""
        with self._count_lock:
            return dict(self._paths)

    @property
    def planes_on_device(self) -> bool:
        """Whether synthesis leaves its tri-planes on the device for render (both bound to the same device)."""
        s, r = self._graphs["synthesis"], self._graphs["render"]
        return (isinstance(s, OrtGraph) and isinstance(r, OrtGraph) and s.io_binding and r.io_binding
                and s.device == r.device != "cpu")

    def _run(self, graph: Graph, feeds: dict[str, Any], adapter: GraphFeeds, keep: tuple[str, ...] = ()
             ) -> dict[str, Any]:
        """Run `graph` with the person's adapter: natively where both sides can, as device-resident values on a
        bound device graph, else as numpy feeds."""
        if adapter.graph_defaults and isinstance(graph, OrtGraph):
            path, extra, options = "defaults", {}, None
        elif adapter.native and graph.native_adapters:
            path, extra, options = "native", adapter.rest, adapter.run_options
        elif isinstance(graph, OrtGraph) and graph.io_binding and graph.device != "cpu" and adapter.arrays:
            path, extra, options = "device", adapter.on_device(graph), None
        else:
            path, extra, options = "numpy", adapter.arrays, None
        if adapter.arrays:
            with self._count_lock:
                self._paths[path] += 1
        try:
            return graph.run({**feeds, **extra}, keep_on_device=keep, run_options=options)
        except Exception as e:  # onnxruntime's own error types: a person's native adapter that does not fit the graph
            if path != "native":
                raise
            raise AdapterInvalid(f"native adapter of the {graph.name} graph", f"onnxruntime refused it "
                                 f"({type(e).__name__}: {str(e)[:200]})") from None

    def planes(self, ws: np.ndarray, person) -> Any:
        """Tri-planes of W+ latents [B, num_ws, w_dim]: a numpy array, or an OrtValue left on the device when
        `planes_on_device`."""
        keep = ("planes",) if self.planes_on_device else ()
        return self._run(self._graphs["synthesis"], {"ws": ws}, person.feeds["synthesis"], keep)["planes"]

    def render(self, planes: Any, ws: np.ndarray, c: np.ndarray, person) -> dict[str, np.ndarray]:
        """image, image_raw, depth of tri-planes (array or device OrtValue) seen from cameras c [B, 25]."""
        return self._run(self._graphs["render"], {"planes": planes, "ws": ws, "c": c}, person.feeds["render"])

    def planes_mixed(self, ws: np.ndarray, people: Sequence) -> np.ndarray:
        """Tri-planes of exactly `mixed_batch` samples, sample k with people[k]'s adapter arrays."""
        graph = self._lazy("synthesis_mixed", "export with --mixed-batch N")
        return self._count_mixed(graph.run({"ws": ws, **stacked(people, "synthesis")}))["planes"]

    def render_mixed(self, planes: np.ndarray, ws: np.ndarray, c: np.ndarray, people: Sequence
                     ) -> dict[str, np.ndarray]:
        """image, image_raw, depth of exactly `mixed_batch` samples with per-sample adapter arrays."""
        graph = self._lazy("render_mixed", "export with --mixed-batch N")
        return self._count_mixed(graph.run({"planes": planes, "ws": ws, "c": c, **stacked(people, "render")}))

    def reset_counts(self) -> None:
        with self._count_lock:
            self._paths = dict.fromkeys(self._paths, 0)

    def _count_mixed(self, out: dict[str, Any]) -> dict[str, Any]:
        with self._count_lock:
            self._paths["numpy"] += 1
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "adapter_paths": self.adapter_paths, "planes_on_device": self.planes_on_device}

    def map(self, z: np.ndarray, c: np.ndarray, psi: float) -> np.ndarray:
        """W+ of z [B, z_dim] with conditioning cameras c [B, 25] and truncation psi."""
        graph = self._lazy("mapping", "only given latents can be rendered")
        return graph.run({"z": z, "c": c, "truncation_psi": np.array([psi], np.float32)})["ws"]


def stacked(people: Sequence, graph: str) -> dict[str, np.ndarray]:
    """The adapter arrays of `graph` of each sample's person, stacked: {input: [N, ...]} (a mixed graph's feeds)."""
    return {name: np.stack([p.feeds[graph].arrays[name] for p in people]) for name in people[0].feeds[graph].arrays}
