"""The built-in synthetic dataset: textured shapes on textured, noisy backgrounds.

Class 0 is the background; class k is a shape kind (disc, rectangle, triangle, ...). Every kind has
its own texture family but random colours, so a model has to learn shape and texture, not a colour.
Shapes overlap (the mask shows the top one), images are blurred and noisy. Deterministic by seed.

Example:
    >>> from kseg.data import synthetic
    >>> root = synthetic.generate("/tmp/shapes", num_images=200, image_size=(128, 128), num_classes=4)
    >>> masks = synthetic.write_video("/tmp/shapes.avi", num_frames=60, size=(240, 320))
"""

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np

from kseg.errors import ConfigError

SHAPES = ("disc", "rectangle", "triangle", "ring", "cross", "ellipse", "star")
_TEXTURES = ("stripes", "checker", "dots", "concentric", "grid", "gradient", "waves")
_META = "synthetic.json"


def class_names(num_classes):
    """``("background", "disc", ...)`` for ``num_classes`` classes (2 to 8)."""
    return ("background",) + SHAPES[:num_classes - 1]


def generate(out_dir, num_images, image_size=(128, 128), num_classes=4, seed=0):
    """Writes ``images/NNNNN.png`` (RGB) and ``masks/NNNNN.png`` (class-index) under ``out_dir``.

    Args:
        out_dir: folder to write (created).
        num_images: number of image/mask pairs.
        image_size: (H, W).
        num_classes: 2 to 8 (background + up to 7 shape kinds).
        seed: image i depends only on (seed, i).

    Returns:
        Path of ``out_dir``.
    """
    if not 2 <= num_classes <= len(SHAPES) + 1:
        raise ValueError(f"num_classes must be in 2-{len(SHAPES) + 1}, got {num_classes}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    height, width = image_size
    for i in range(num_images):
        rng = np.random.default_rng([seed, i])
        shapes = [random_shape(rng, num_classes, height, width) for _ in range(rng.integers(2, 7))]
        image, mask = _render(random_background(rng, height, width), shapes, rng)
        cv2.imwrite(str(out / "images" / f"{i:05d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(out / "masks" / f"{i:05d}.png"), mask)
    return out


def write_video(path, num_frames, size=(240, 320), seed=0, num_classes=4, fps=15):
    """Writes an MJPG .avi of shapes moving over a background (for the edge runtime demo).

    Args:
        path: output .avi file.
        num_frames: number of frames.
        size: (H, W).
        seed: random seed.
        num_classes: as in `generate`.
        fps: frames per second stored in the file.

    Returns:
        uint8 array (num_frames, H, W): the ground-truth class mask of every frame.
    """
    height, width = size
    rng = np.random.default_rng(seed)
    background = random_background(rng, height, width)
    shapes = [random_shape(rng, num_classes, height, width) for _ in range(rng.integers(3, 6))]
    for shape in shapes:
        shape["velocity"] = rng.uniform(-0.02, 0.02, 2) * (width, height)
        shape["spin"] = rng.uniform(-0.05, 0.05)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f"{path}: OpenCV cannot open an MJPG video writer here")
    masks = np.empty((num_frames, height, width), np.uint8)
    try:
        for t in range(num_frames):
            image, masks[t] = _render(background, shapes, rng)
            writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            for shape in shapes:
                _move(shape, height, width)
    finally:
        writer.release()
    return masks


def ensure_generated(cfg):
    """Generates the synthetic dataset of a validated config into its root unless it is there.

    Raises:
        ConfigError: root holds other files, or synthetic data made with other parameters.
    """
    root = Path(cfg["root"])
    meta = dict(cfg["synthetic"], num_classes=cfg["num_classes"])
    marker = root / _META
    if marker.is_file():
        found = json.loads(marker.read_text())
        if found != meta:
            raise ConfigError(f"{root}: holds synthetic data generated with {found}, but the config asks for {meta}; "
                              f"delete the folder or choose another data.root")
        return
    if root.exists() and any(root.iterdir()):
        raise ConfigError(f"{root}: data.root of the synthetic format must be empty or absent (it is where the "
                          f"dataset is generated); choose another folder")
    # Generate beside the root and rename, so a concurrent or interrupted run never sees half a dataset.
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    generate(tmp, meta["num_images"], tuple(meta["size"]), meta["num_classes"], meta["seed"])
    (tmp / _META).write_text(json.dumps(meta))
    try:
        os.replace(tmp, root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not marker.is_file():
            raise


def random_shape(rng, num_classes, height, width):
    """A random shape of a random kind 1..num_classes-1 (its kind, pose, colours and texture parameters)."""
    kind = int(rng.integers(1, num_classes))
    c1 = rng.integers(0, 256, 3)
    c2 = (c1 + rng.integers(70, 186, 3)) % 256  # a second colour far enough to show the texture
    return {"kind": kind,
            "centre": rng.uniform(0, 1, 2) * (width, height),
            "radius": rng.uniform(0.08, 0.22) * min(height, width),
            "angle": rng.uniform(0, 2 * np.pi),
            "colours": (c1.astype(np.float32), c2.astype(np.float32)),
            "period": rng.uniform(3, 9),
            "phase": rng.uniform(0, 2 * np.pi)}


def _move(shape, height, width):
    shape["centre"] = shape["centre"] + shape["velocity"]
    for axis, limit in enumerate((width, height)):
        if not 0 <= shape["centre"][axis] <= limit:
            shape["velocity"][axis] *= -1
    shape["angle"] += shape["spin"]


def _outline(kind, r):
    """Polygons in shape-local coordinates, each with the value it paints (0 cuts a hole)."""
    circle = np.stack([np.cos(np.linspace(0, 2 * np.pi, 48, endpoint=False)),
                       np.sin(np.linspace(0, 2 * np.pi, 48, endpoint=False))], 1)
    name = SHAPES[kind - 1]
    if name == "disc":
        return [(circle * r, 1)]
    if name == "rectangle":
        return [(np.array([[-1, -0.6], [1, -0.6], [1, 0.6], [-1, 0.6]]) * r, 1)]
    if name == "triangle":
        return [(circle[::16] * r, 1)]
    if name == "ring":
        return [(circle * r, 1), (circle * 0.55 * r, 0)]
    if name == "cross":
        bar = np.array([[-1, -0.28], [1, -0.28], [1, 0.28], [-1, 0.28]]) * r
        return [(bar, 1), (bar[:, ::-1], 1)]
    if name == "ellipse":
        return [(circle * (r, 0.5 * r), 1)]
    spikes = np.repeat([[1.0], [0.42]], 5, axis=1).T.reshape(-1, 1)  # star: alternating outer/inner radius
    return [(circle[::4][:10] * spikes * r, 1)]


def _render(background, shapes, rng):
    image, regions = render_layers(background, shapes, rng)
    mask = np.zeros(background.shape[:2], np.uint8)
    for shape, region in zip(shapes, regions):
        mask[region] = shape["kind"]
    return image, mask


def render_layers(background, shapes, rng):
    """Paints shapes over a background, later shapes on top, then blurs and adds noise.

    Args:
        background: float32 (H, W, 3), e.g. from `random_background`.
        shapes: dicts from `random_shape`.
        rng: numpy Generator (blur and noise).

    Returns:
        (image uint8 (H, W, 3), list of bool (H, W): the full region of each shape, before occlusion).
    """
    height, width = background.shape[:2]
    image = background.copy()
    regions = []
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    for shape in shapes:
        cos, sin = np.cos(shape["angle"]), np.sin(shape["angle"])
        region = np.zeros((height, width), np.uint8)
        for polygon, value in _outline(shape["kind"], shape["radius"]):
            points = polygon @ np.array([[cos, sin], [-sin, cos]]) + shape["centre"]
            # Sub-pixel vertices (shift=4) keep slow motion in the video smooth.
            cv2.fillPoly(region, [np.round(points * 16).astype(np.int32)], value, cv2.LINE_8, 4)
        inside = region.astype(bool)
        dx, dy = xs - shape["centre"][0], ys - shape["centre"][1]
        u, v = cos * dx + sin * dy, -sin * dx + cos * dy
        t = _texture(_TEXTURES[shape["kind"] - 1], u, v, shape)[inside][:, None]
        c1, c2 = shape["colours"]
        image[inside] = c1 * (1 - t) + c2 * t
        regions.append(inside)
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.2))
    image = image + rng.normal(0, rng.uniform(2, 10), image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), regions


def _texture(name, u, v, shape):
    """Pattern in [0, 1] over shape-local coordinates, so it moves and turns with the shape."""
    p, phase = shape["period"], shape["phase"]
    if name == "stripes":
        return 0.5 + 0.5 * np.sin(2 * np.pi * u / p + phase)
    if name == "checker":
        return ((np.floor(u / p) + np.floor(v / p)) % 2).astype(np.float32)
    if name == "dots":
        return (np.sin(2 * np.pi * u / p) * np.sin(2 * np.pi * v / p) > 0.35).astype(np.float32)
    if name == "concentric":
        return 0.5 + 0.5 * np.sin(2 * np.pi * np.hypot(u, v) / p + phase)
    if name == "grid":
        return (np.maximum(np.abs(np.sin(np.pi * u / p)), np.abs(np.sin(np.pi * v / p))) > 0.92).astype(np.float32)
    if name == "gradient":
        return np.clip(0.5 + 0.5 * u / shape["radius"], 0, 1)
    return 0.5 + 0.5 * np.sin(2 * np.pi * (u + 2 * np.sin(v / p)) / p)


def random_background(rng, height, width):
    """Two random colours mixed by low-frequency noise, plus fine grain."""
    c1, c2 = rng.integers(0, 256, (2, 3)).astype(np.float32)
    coarse = rng.uniform(0, 1, (height // 16 + 2, width // 16 + 2)).astype(np.float32)
    t = np.clip(cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC), 0, 1)[..., None]
    grain = rng.normal(0, 12, (height, width, 1)).astype(np.float32)
    return c1 * (1 - t) + c2 * t + grain
