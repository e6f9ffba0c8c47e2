"""Perceptual networks in pure PyTorch (no torchvision): LPIPS and DISTS, loaded from offline weights.

Names are resolved lazily (PEP 562) so that `import perception` stays cheap and other perception modules can be
added without importing every network.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "LPIPS": "perception.lpips",
    "lpips_weights_available": "perception.weights",
    "DISTS": "perception.dists",
    "dists_weights_available": "perception.weights",
    "WeightsUnavailableError": "perception.weights",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'perception' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
