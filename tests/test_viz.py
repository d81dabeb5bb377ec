"""kseg.viz: palette values, colour order, ignore pixels, contours, chart files, grid layout."""

import cv2
import numpy as np
import pytest

from kseg import viz


def test_palette_matches_pascal_voc():
    p = viz.palette(21)
    assert p.shape == (21, 3) and p.dtype == np.uint8
    assert p[0].tolist() == [0, 0, 0]
    assert p[1].tolist() == [128, 0, 0]  # aeroplane
    assert p[15].tolist() == [192, 128, 128]  # person
    assert p[20].tolist() == [0, 64, 128]  # tvmonitor
    assert len({tuple(c) for c in p}) == 21


def test_colorize_uses_palette_order_and_blacks_out_ignore():
    mask = np.array([[0, 1, 2], [255, 1, 300]], np.int32)
    out = viz.colorize(mask, viz.palette(3))
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    assert out[0, 1].tolist() == [128, 0, 0] and out[0, 2].tolist() == [0, 128, 0]
    assert out[1, 0].tolist() == [0, 0, 0]
    assert out[1, 2].tolist() == viz.palette(3)[300 % 256 % 3].tolist()  # ids past the palette wrap around


def test_overlay_colour_order_ignore_and_contours():
    image = np.full((20, 20, 3), 100, np.uint8)
    mask = np.zeros((20, 20), np.uint8)
    mask[5:15, 5:15] = 1
    mask[:, :2] = 255
    bgr = viz.overlay(image, mask, alpha=0.5, palette=viz.palette(2), contours=False)
    assert bgr[10, 10].tolist() == [50, 50, 114]  # red class 1 lands in the R channel of a BGR frame
    rgb = viz.overlay(image, mask, alpha=0.5, palette=viz.palette(2), contours=False, order="rgb")
    assert rgb[10, 10].tolist() == [114, 50, 50]
    assert (bgr[:, :2] == 100).all() and (rgb[:, :2] == 100).all()  # ignore pixels keep the image
    assert bgr[0, 10].tolist() == [50, 50, 50]  # class 0 is black, blended

    edged = viz.overlay(image, mask, alpha=0.5, palette=viz.palette(2))
    assert edged[5, 10].tolist() == [0, 0, 128]  # boundary in full class colour
    assert edged[10, 10].tolist() == [50, 50, 114]  # interior still blended
    assert (edged[:, :2] == 100).all()  # no contour drawn over ignore pixels
    changed = np.any(edged != bgr, axis=-1)
    assert changed.any() and not changed[8:12, 8:12].any()


def test_overlay_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="mask"):
        viz.overlay(np.zeros((10, 10, 3), np.uint8), np.zeros((10, 11), np.uint8))


def test_charts_write_png(tmp_path):
    names = ["background", "cat", "dog"]
    cm = np.array([[50, 2, 0], [3, 20, 1], [0, 0, 0]])
    viz.confusion_matrix_figure(cm, names, tmp_path / "cm.png")
    viz.per_class_iou_chart([0.9, 0.6, np.nan], names, tmp_path / "iou.png")
    for name in ("cm.png", "iou.png"):
        image = cv2.imread(str(tmp_path / name))
        assert image is not None and image.shape[0] > 100 and image.shape[1] > 100
        assert image.std() > 10  # something drawn, not a blank canvas
    with pytest.raises(ValueError):
        viz.confusion_matrix_figure(cm, names[:2], tmp_path / "bad.png")
    with pytest.raises(ValueError):
        viz.per_class_iou_chart([0.5], names, tmp_path / "bad.png")


def test_image_grid_layout_and_legend(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(3)]
    masks = [np.full((24, 32), i, np.uint8) for i in range(3)]
    names = ["background", "road", "car"]
    grid = viz.image_grid(images, masks, names, predictions=masks, cols=2, path=tmp_path / "grid.png")
    legend_h = grid.shape[0] - 2 * 24
    assert grid.shape[1] == 2 * 2 * 32 and 0 < legend_h < 100  # 2 samples a row, each label + prediction
    assert grid[24:48, 64:].min() == 255  # the missing fourth sample is blank
    assert np.array_equal(grid[:24, 64:96], viz.overlay(images[1], masks[1], order="rgb", palette=viz.palette(3)))
    legend = grid[48:]
    for color in viz.palette(3)[1:]:
        assert np.all(legend == color, axis=-1).any(), f"no swatch of {color} in the legend"
    written = cv2.imread(str(tmp_path / "grid.png"))
    assert np.array_equal(written[..., ::-1], grid)  # the PNG is the RGB grid, stored the OpenCV way
