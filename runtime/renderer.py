"""The graphs of an export, run: mapping (z -> W+), synthesis (W+ -> tri-planes), render (tri-planes + camera ->
images). Graphs run on onnxruntime or TensorRT engines (runtime.session); cameras come from formats.cameras."""
from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

from formats.cameras import lookat_label
from formats.export_manifest import ExportManifest
from runtime.errors import ExportInvalid
from runtime.session import Graph, choose_providers, open_graph


class Renderer:
    """Opens the synthesis and render graphs at once and the mapping graph on first use."""

    def __init__(self, manifest: ExportManifest, providers: str | Sequence[str] = "auto", threads: int | None = None):
        self.manifest = manifest
        self.providers = choose_providers(providers, engines_present=bool(manifest.engines))
        self.threads = threads
        self._graphs: dict[str, Graph] = {g: self._open(g) for g in ("synthesis", "render")}
        self._mapping_lock = threading.Lock()

    def _open(self, name: str) -> Graph:
        return open_graph(self.manifest.directory, name, self.manifest.graph(name), self.providers, self.threads,
                          self.manifest.engines)

    @property
    def graph_providers(self) -> dict[str, str]:
        """The provider each loaded graph actually runs on."""
        return {g: s.provider for g, s in self._graphs.items()}

    def camera(self, yaw: float, pitch: float) -> np.ndarray:
        """[1, 25] label of the export's look-at camera at (yaw, pitch)."""
        radius, pivot, focal = self.manifest.camera
        return lookat_label(yaw, pitch, radius=radius, focal=focal, pivot=pivot)[None]

    def planes(self, ws: np.ndarray, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Tri-planes of W+ latents [B, num_ws, w_dim] (feeds: the person's synthesis adapter inputs)."""
        return self._graphs["synthesis"].run({"ws": ws, **feeds})["planes"]

    def render(self, planes: np.ndarray, ws: np.ndarray, c: np.ndarray, feeds: dict[str, np.ndarray]
               ) -> dict[str, np.ndarray]:
        """image, image_raw, depth of tri-planes seen from cameras c [B, 25]."""
        return self._graphs["render"].run({"planes": planes, "ws": ws, "c": c, **feeds})

    def map(self, z: np.ndarray, c: np.ndarray, psi: float) -> np.ndarray:
        """W+ of z [B, z_dim] with conditioning cameras c [B, 25] and truncation psi."""
        with self._mapping_lock:
            if "mapping" not in self._graphs:
                if self.manifest.graph("mapping") is None:
                    raise ExportInvalid(str(self.manifest.directory), "this export has no mapping graph")
                self._graphs["mapping"] = self._open("mapping")
        return self._graphs["mapping"].run({"z": z, "c": c, "truncation_psi": np.array([psi], np.float32)})["ws"]
