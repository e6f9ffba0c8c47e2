"""Per-key static runs of the torch backend's stages: a CUDA graph captured once per key on a GPU, the same
function run eagerly on the CPU.

A key is (operation, batch size, precision, routing) with routing 'base' (no adapter), 'single' (one person's
adapter slot) or 'mixed' (one slot per sample): runtime.torch_backend makes them. On CUDA the first run of a key
copies its inputs into static tensors, warms the function up on a side stream, captures it into a
torch.cuda.CUDAGraph and keeps the graph with its static inputs and outputs; every later run copies the new inputs
into those tensors and replays (no Python per kernel: the H100 measured a full forward at 241 ms eager, 43.6 ms as a
graph, docs/gpu). Graphs read adapters from runtime.adapter_slots' static buffers, so a person swap is a copy
into them, never a re-capture. On the CPU nothing is captured (there is no CPU graph to replay): a key keeps only
its (optionally compiled) function, so the keys, the routing and the slot swaps that the GPU path depends on are
the ones the CPU tests run.

`compile=True` passes each key's function through torch.compile (inductor, static shapes) before its first run;
the compile time is counted in `stats()['compile_s']`. Graphs are kept in an LRU of `max_graphs` keys and share
one memory pool: replays are serial (the backend's lock) and each graph's static outputs stay allocated, so one
graph's temporaries may reuse another's without touching anything live; the pool costs about the largest graph's
activations, not their sum.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

Key = tuple[str, int, str, str]
"""(operation 'planes' | 'render', batch size, precision, routing 'base' | 'single' | 'mixed')."""
MAX_GRAPHS = 32
WARMUP_RUNS = 2
"""Eager runs on a side stream before a capture (cuDNN/cuBLAS pick their kernels and workspaces there)."""


@dataclass
class _Entry:
    fn: Callable[..., dict[str, torch.Tensor]]
    graph: Any = None
    """torch.cuda.CUDAGraph, or None (CPU: the function runs eagerly)."""
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    runs: int = 0


class StaticGraphs:
    """See the module docstring. Not thread-safe: the torch backend calls it under its lock."""

    def __init__(self, device: torch.device, compile: bool = False, max_graphs: int = MAX_GRAPHS):
        self.device = device
        self.capture = device.type == "cuda"
        self.compile = compile
        self.max_graphs = max_graphs
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        self._pool = None
        """The CUDA graphs' shared memory pool (made at the first capture)."""
        self.captures = self.replays = self.eager_runs = self.evictions = 0
        self.capture_s = self.compile_s = 0.0

    def keys(self) -> list[Key]:
        """The keys made so far, least recently used first."""
        return list(self._entries)

    def run(self, key: Key, fn: Callable[..., dict[str, torch.Tensor]], inputs: dict[str, torch.Tensor],
            activate: Callable[[], None]) -> dict[str, torch.Tensor]:
        """fn(**inputs) for `key`: replayed from its graph on CUDA (captured on the key's first run), run eagerly
        on the CPU. `activate` routes the generator as the key needs (an attachment); it is called before every
        eager run and before a capture (a replay needs nothing: the graph reads the slots directly). Outputs are
        fresh tensors the caller may keep."""
        entry = self._entries.get(key)
        if entry is None:
            entry = self._make(key, fn)
        else:
            self._entries.move_to_end(key)
        entry.runs += 1
        if not self.capture:
            activate()
            self.eager_runs += 1
            return self._first_call(entry, inputs) if entry.runs == 1 else entry.fn(**inputs)
        if entry.graph is None:
            self._capture(entry, inputs, activate)
        else:
            for name, t in inputs.items():
                entry.inputs[name].copy_(t, non_blocking=True)
        entry.graph.replay()
        self.replays += 1
        return {k: v.clone() for k, v in entry.outputs.items()}

    def _make(self, key: Key, fn: Callable) -> _Entry:
        if self.compile:
            fn = torch.compile(fn, dynamic=False)
        entry = self._entries[key] = _Entry(fn)
        while len(self._entries) > self.max_graphs:
            self._entries.popitem(last=False)
            self.evictions += 1
        return entry

    def _first_call(self, entry: _Entry, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The key's first eager run, timed as compile time when compiling."""
        t0 = time.perf_counter()
        out = entry.fn(**inputs)
        if self.compile:
            self.compile_s += time.perf_counter() - t0
        return out

    def _capture(self, entry: _Entry, inputs: dict[str, torch.Tensor], activate: Callable[[], None]) -> None:
        """Static inputs, warm-up on a side stream, then the capture (TorchServe-style: once per key)."""
        entry.inputs = {k: v.detach().clone() for k, v in inputs.items()}
        activate()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        t0 = time.perf_counter()
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                entry.fn(**entry.inputs)
        torch.cuda.current_stream(self.device).wait_stream(side)
        torch.cuda.synchronize(self.device)
        if self.compile:
            self.compile_s += time.perf_counter() - t0
        t1 = time.perf_counter()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            entry.outputs = entry.fn(**entry.inputs)
        entry.graph = graph
        self.captures += 1
        self.capture_s += time.perf_counter() - t1

    def clear(self) -> None:
        self._entries.clear()

    def stats(self) -> dict[str, Any]:
        return {"graphs": len(self._entries), "captured": self.capture, "captures": self.captures,
                "replays": self.replays, "eager_runs": self.eager_runs, "evictions": self.evictions,
                "capture_s": round(self.capture_s, 3), "compile_s": round(self.compile_s, 3),
                "keys": [list(k) for k in self._entries]}
