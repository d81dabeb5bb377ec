"""Depth as extra input channels (2.5D, RGB-D): raw depth and the HHA encoding.

The image contract keeps every channel on the [0, 255] scale of RGB, so a model's first layer sees comparable
ranges and int8 export calibrates one input scale:

* ``data.depth: raw`` (4 channels): depth in metres times ``255 / data.max_depth`` (10 m -> 255), clipped;
  missing depth (0) stays 0.
* ``data.depth: hha`` (6 channels), after Gupta et al., "Learning Rich Features from RGB-D Images for Object
  Detection and Segmentation", ECCV 2014 (arXiv 1407.5736): horizontal disparity, height above ground, angle of
  the surface normal with gravity. kseg computes a **simplified estimate**, not the authors' algorithm: gravity is
  taken as the camera's down axis (a level camera, as in NYU-Depth v2 and most indoor captures) instead of being
  estimated iteratively from the normals, the floor is the lowest observed point (not a percentile of the
  height), and normals come from the cross product of the back-projected point map's image gradients (not a
  local plane fit). Scales: disparity ``127.5 / z`` (z in metres: 0.5 m -> 255), height ``85`` per metre
  (3 m -> 255), angle ``255 / 180`` per degree; each clipped to [0, 255], missing depth -> 0.

Example:
    >>> import numpy as np
    >>> from kseg.data.depth import depth_channels_image
    >>> rgb = np.zeros((4, 4, 3), np.uint8); depth = np.full((4, 4), 2.0, np.float32)
    >>> depth_channels_image(rgb, depth, "raw", max_depth=10.0)[0, 0].tolist()
    [0.0, 0.0, 0.0, 51.0]
"""

import numpy as np

# Kinect v1 colour camera of NYU-Depth v2 (the dataset's toolbox, camera_params.m) at 640x480: the default
# intrinsics where a dataset gives none; scaled to other image sizes.
KINECT_INTRINSICS = np.array([[518.857901, 0.0, 325.582449], [0.0, 519.469611, 253.736166], [0.0, 0.0, 1.0]])


def default_intrinsics(height, width):
    """The Kinect v1 intrinsics scaled to an image of ``height`` x ``width``."""
    k = KINECT_INTRINSICS.copy()
    k[0] *= width / 640.0
    k[1] *= height / 480.0
    return k


def hha(depth, intrinsics):
    """The simplified HHA encoding of a depth map (see the module doc for what is simplified).

    Args:
        depth: (H, W) float32 depth in metres, 0 where missing.
        intrinsics: 3x3 camera matrix of the depth map.

    Returns:
        (H, W, 3) float32 in [0, 255]: disparity, height above the lowest point, angle with gravity.
    """
    depth = np.asarray(depth, np.float32)
    valid = depth > 0
    h, w = depth.shape
    fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    x = (u - cx) * depth / fx
    y = (v - cy) * depth / fy  # camera y points down: gravity
    points = np.stack([x, y, depth], axis=-1)
    disparity = np.where(valid, 127.5 / np.maximum(depth, 1e-6), 0.0)
    height = np.where(valid, (y[valid].max() if valid.any() else 0.0) - y, 0.0) * 85.0
    du = np.gradient(points, axis=1)
    dv = np.gradient(points, axis=0)
    normal = np.cross(dv, du)
    normal /= np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-9)
    # up is -y; the normals of a depth map face the camera (negative z), whatever the orientation of the surface
    angle = np.degrees(np.arccos(np.clip(-normal[..., 1], -1.0, 1.0)))
    angle = np.where(valid, angle * (255.0 / 180.0), 0.0)
    return np.clip(np.stack([disparity, height, angle], axis=-1), 0, 255).astype(np.float32)


def depth_channels_image(rgb, depth, mode, max_depth=10.0, intrinsics=None):
    """Stacks RGB and the depth channels of ``mode``.

    Args:
        rgb: (H, W, 3) uint8.
        depth: (H, W) float32 depth in metres (0 = missing), same size as ``rgb``.
        mode: ``"none"`` (RGB only, uint8), ``"raw"`` (4 channels) or ``"hha"`` (6 channels).
        max_depth: metres mapped to 255 by ``raw``.
        intrinsics: 3x3 camera matrix for ``hha``; default `default_intrinsics`.

    Returns:
        (H, W, 3) uint8 for ``none``, else (H, W, 4 or 6) float32 on the [0, 255] scale.
    """
    if mode == "none":
        return rgb
    if mode == "raw":
        extra = np.clip(depth * (255.0 / max_depth), 0, 255)[..., None]
    else:
        extra = hha(depth, default_intrinsics(*depth.shape) if intrinsics is None else intrinsics)
    return np.concatenate([rgb.astype(np.float32), extra.astype(np.float32)], axis=-1)
