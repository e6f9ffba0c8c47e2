"""EG3D camera labels for the generator side: the definitions are formats.cameras (numpy, shared with the runtime).

Kept as an import path for generator code and its users; `generator.views.camera_batch` makes torch batches.
"""
from formats.cameras import (FFHQ_FOCAL, FFHQ_PIVOT, FFHQ_RADIUS, camera_label, intrinsics, lookat_cam2world,
                             lookat_label, mirror_label, yaw_pitch_of)

__all__ = ["FFHQ_FOCAL", "FFHQ_PIVOT", "FFHQ_RADIUS", "camera_label", "intrinsics", "lookat_cam2world",
           "lookat_label", "mirror_label", "yaw_pitch_of"]
