"""Multi-view captures and NeRF: readers, models, training and rendering.

Data side (plain modules; the Ray Data glue is in ``ray_reader`` and ``ray_rays``):

* ``cameras``: :class:`Intrinsics`, ``look_at``, :class:`SceneTransform` (conventions: OpenGL c2w).
* ``frames``: :class:`Frame` and the frame row schema; ``rays``: frames -> rays.
* ``scene``: the embedded procedural scene, :func:`generate_scene` and the exact :func:`render_gt`.
* ``readers`` (``capture``, ``nerfstudio``, ``colmap``, ``undistort``): :func:`read_frames`.
* ``writer``: :func:`write_transforms` (nerfstudio-compatible), ``write_blender``; ``colmap.write_colmap``.
"""

from raylens_domains.multiview.cameras import Intrinsics, SceneTransform, look_at
from raylens_domains.multiview.capture import CaptureInfo, ReadOptions
from raylens_domains.multiview.frames import Frame
from raylens_domains.multiview.readers import read_frames
from raylens_domains.multiview.scene import generate_scene, render_gt
from raylens_domains.multiview.writer import write_transforms

__all__ = [
    "Intrinsics",
    "SceneTransform",
    "look_at",
    "CaptureInfo",
    "ReadOptions",
    "Frame",
    "read_frames",
    "generate_scene",
    "render_gt",
    "write_transforms",
]
