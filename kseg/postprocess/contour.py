"""Active-contour refinement of a network's masks: morphological Chan-Vese or geodesic active contours (numpy +
scikit-image, no TensorFlow), registered as refiner ``"acm"``."""

import numpy as np

from kseg.postprocess import register_refiner

__all__ = ["refine_active_contour"]

_METHODS = ("chan_vese", "geodesic")


def _morphological_snakes():
    try:
        from skimage import segmentation
    except ImportError:
        raise ImportError("refiner 'acm' needs scikit-image: pip install 'kseg[train]' (or scikit-image)") from None
    return segmentation


@register_refiner("acm")
def refine_active_contour(image, probabilities, method="chan_vese", iterations=10, smoothing=1, lambda1=1.0,
                          lambda2=1.0, balloon=0.0, sigma=2.0, alpha=100.0, vote=0.5):
    """Evolves each class's mask (the argmax of ``probabilities``) as a morphological active contour on the image.

    Marquez-Neila, Baumela, Alvarez, "A Morphological Approach to Curvature-based Evolution of Curves and Surfaces",
    IEEE TPAMI 2014 (the scikit-image implementations). ``"chan_vese"`` is the morphological Chan-Vese model (Chan
    and Vese, "Active Contours Without Edges", IEEE TIP 2001): the contour moves so that the mean grey level inside
    and outside fit the image. ``"geodesic"`` is the morphological geodesic active contour (Caselles, Kimmel, Sapiro,
    IJCV 1997): the contour settles on strong edges of the image (inverse Gaussian gradient, ``sigma``, ``alpha``).
    Each iteration moves the contour by at most one pixel, so ``iterations`` bounds how far the refinement can move
    the network's contour.

    Binary (two classes): class 1's mask is evolved and class 0 is its complement. More classes: each class present
    in the argmax is evolved one-vs-rest. The refined masks ``m`` are put back as probabilities
    ``(1 - vote) * p + vote * m``, renormalised per pixel: with ``vote >= 0.5`` a pixel claimed by exactly one
    refined mask goes to that class, a pixel claimed by none or several keeps the network's ranking among them.

    Args:
        image: ``(H, W, 3)`` uint8 RGB (or ``(H, W)`` grey) input image; the contour evolves on its grey level.
        probabilities: ``(H, W, C)`` float class probabilities summing to one per pixel, ``C >= 2``.
        method: ``"chan_vese"`` or ``"geodesic"``.
        iterations: contour evolution steps.
        smoothing: curvature smoothing passes per step (the length regulariser).
        lambda1: Chan-Vese weight of the inside fit.
        lambda2: Chan-Vese weight of the outside fit.
        balloon: geodesic balloon force (> 0 inflates, < 0 deflates, 0 none).
        sigma: geodesic edge map's Gaussian smoothing, in pixels.
        alpha: geodesic edge map's steepness.
        vote: weight in [0, 1] of the refined masks against the network's probabilities.

    Returns:
        ``(H, W, C)`` float32 probabilities summing to one per pixel.

    Raises:
        ValueError: bad shapes or options (the message names the argument).

    Example:
        >>> from kseg.postprocess import get_refiner
        >>> refined = get_refiner("acm")(image, probabilities, iterations=5)   # doctest: +SKIP
        >>> labels = refined.argmax(-1)                                          # doctest: +SKIP
    """
    probs = np.asarray(probabilities, np.float32)
    image = np.asarray(image)
    if probs.ndim != 3 or probs.shape[-1] < 2:
        raise ValueError(f"probabilities must be (H, W, C) with C >= 2, got shape {probs.shape}")
    if image.shape[:2] != probs.shape[:2] or image.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W, 3) or (H, W) with the probabilities' H, W {probs.shape[:2]}, "
                         f"got shape {image.shape}")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {', '.join(_METHODS)}, got {method!r}")
    if not 0 <= vote <= 1:
        raise ValueError(f"vote must lie in [0, 1], got {vote}")
    if int(iterations) < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    snakes = _morphological_snakes()
    grey = (image.mean(axis=-1) if image.ndim == 3 else image).astype(np.float32) / 255.0
    if method == "geodesic":
        grey = snakes.inverse_gaussian_gradient(grey, alpha=alpha, sigma=sigma)

    def evolve(mask):
        if not mask.any() or mask.all():  # no contour to move
            return mask.astype(np.float32)
        if method == "chan_vese":
            out = snakes.morphological_chan_vese(grey, int(iterations), init_level_set=mask, smoothing=smoothing,
                                                 lambda1=lambda1, lambda2=lambda2)
        else:
            out = snakes.morphological_geodesic_active_contour(grey, int(iterations), init_level_set=mask,
                                                               smoothing=smoothing, balloon=balloon)
        return out.astype(np.float32)

    labels = probs.argmax(-1)
    num_classes = probs.shape[-1]
    if num_classes == 2:
        fg = evolve(labels == 1)
        masks = np.stack([1.0 - fg, fg], axis=-1)
    else:
        masks = np.stack([evolve(labels == c) for c in range(num_classes)], axis=-1)
    refined = (1.0 - vote) * probs + vote * masks
    total = refined.sum(-1, keepdims=True)
    # Only with vote = 1 can a pixel be claimed by no refined mask (total 0): it keeps the network's probabilities.
    return np.where(total > 0, refined / np.maximum(total, 1e-12), probs).astype(np.float32)
