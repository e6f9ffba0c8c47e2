"""The PyTorch EG3D generator (clean-room port), its LoRA adapters and checkpoint I/O, shared by train/ and export/."""
from generator.config import GeneratorConfig, RenderingConfig, SuperResolutionConfig
from generator.presets import PRESETS, preset
from generator.triplane import TriPlaneGenerator

__all__ = ["GeneratorConfig", "RenderingConfig", "SuperResolutionConfig", "PRESETS", "preset", "TriPlaneGenerator"]
