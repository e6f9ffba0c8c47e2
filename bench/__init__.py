"""Benchmarks: `python -m bench.run` (eager PyTorch vs onnxruntime vs the torch-free runtime)."""
