"""Mean-field inference in a CRF with Gaussian edge potentials, and the dense-CRF refiner ``"crf"``.

Krahenbuhl and Koltun, "Efficient Inference in Fully Connected CRFs with Gaussian Edge Potentials", NIPS 2011,
arXiv 1210.5644 (DeepLab v1/v2's post-processing). One iteration, with ``U`` the unary (the network's logits, or
``log p`` of its probabilities) and ``Q = softmax(logits)``::

    m_s(i) = sum_j k_s(i, j) Q(j) / sum_j k_s(i, j)      spatial:   k_s = exp(-|p_i - p_j|^2 / 2 theta_gamma^2)
    m_b(i) = sum_j k_b(i, j) Q(j) / sum_j k_b(i, j)      bilateral: k_b = exp(-|p_i - p_j|^2 / 2 theta_alpha^2
                                                                          - |I_i - I_j|^2 / 2 theta_beta^2)
    logits = U - mu (w_s * m_s + w_b * m_b)              w_s, w_b: kernel weights; mu: C x C label compatibility

over neighbours ``j != i``, with positions ``p`` in pixels and ``I`` the raw RGB values in [0, 255]. The messages
are normalised by the kernel sum, as in the CRF-as-RNN authors' Caffe layer, so the weights do not depend on the
window size or the image border. ``mean_field`` is the one implementation: the refiner here calls it with fixed
weights and Potts ``mu``; the CRF-as-RNN layer (``kseg.models.crf``) calls it with learned ones.

The approximation (instead of the papers' permutohedral lattice, whose scatter/gather ops do not convert to builtin
TFLite ops): the truncated local window of ConvCRF (Teichmann and Cipolla, "Convolutional CRFs for Semantic
Segmentation", BMVC 2019, arXiv 1805.04777). ``j`` ranges over the ``window x window`` neighbourhood of ``i``,
spaced ``dilation`` pixels apart, each neighbour read by a static shift (one PAD, then a STRIDED_SLICE per
neighbour); with ``downsample = s > 1`` the messages are computed on an ``s``-times average-pooled grid (neighbours
``s * dilation`` pixels apart) and upsampled bilinearly, while the unary stays at full resolution. So the kernels
reach ``(window // 2) * dilation * downsample`` pixels, not the whole image: the long-range part of the appearance
kernel (theta_alpha = 80 px) is cut off there.

Cost per 512x512 image, 5 iterations, window 7, TF graph mode (``benchmarks/crf.py --timing``), on this
project's 2-core CPU while shared with other jobs (load average 8-9, so an idle machine is several times faster):
2 classes 3.4 s at full resolution, 1.4 s with ``downsample=2``, 0.36 s with ``downsample=4``; 21 classes 4.8 s
with ``downsample=2``, 1.3 s with ``downsample=4``. Linear in the classes and iterations and in
``window**2 / downsample**2``.

No maintained package does the exact inference for Python 3.11: pydensecrf, pydensecrf2 and SimpleCRF have no
Python 3.11 wheel on PyPI (checked with ``pip download --only-binary=:all:``).

Example:
    >>> import numpy as np
    >>> from kseg.postprocess import get_refiner
    >>> image = np.zeros((32, 32, 3), np.uint8)
    >>> probabilities = np.full((32, 32, 2), 0.5, np.float32)
    >>> refined = get_refiner("crf")(image, probabilities)
    >>> refined.shape, bool(np.allclose(refined.sum(-1), 1.0, atol=1e-5))
    ((32, 32, 2), True)
"""

import functools

import numpy as np

from kseg.postprocess import register_refiner

# Krahenbuhl and Koltun's kernel widths (their MSRC / VOC settings, also ConvCRF's): positions in pixels, colours in
# [0, 255] RGB units.
THETA_ALPHA, THETA_BETA, THETA_GAMMA = 80.0, 13.0, 3.0


def neighbour_offsets(window, dilation=1):
    """The ``(dy, dx)`` offsets of the ``window x window`` neighbourhood at spacing ``dilation``, centre excluded."""
    r = window // 2
    return [(dy * dilation, dx * dilation) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy or dx]


def _shifts(x, offsets):
    """For each ``(dy, dx)``, the map whose pixel ``(i, j)`` is ``x[i + dy, j + dx]``, zero outside the image.

    One PAD and one static slice per offset: no gather, so it converts to builtin TFLite ops.
    """
    import tensorflow as tf

    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    height, width = int(x.shape[1]), int(x.shape[2])
    padded = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    for dy, dx in offsets:
        yield padded[:, pad + dy:pad + dy + height, pad + dx:pad + dx + width, :]


def pairwise_kernels(image, window=7, dilation=1, spacing=1, theta_alpha=THETA_ALPHA, theta_beta=THETA_BETA,
                     theta_gamma=THETA_GAMMA):
    """Normalised spatial and bilateral kernel values of every neighbour offset (the part of mean-field inference
    that does not change between iterations).

    Args:
        image: ``(B, H, W, 3)`` float32 RGB in [0, 255] (any number of channels works: all are appearance).
        window, dilation: the neighbourhood (see ``neighbour_offsets``).
        spacing: pixels of the original image per pixel of ``image`` (the ``downsample`` factor), which scales
            the positional distances.
        theta_alpha, theta_beta, theta_gamma: kernel widths (bilateral position, bilateral colour, spatial).

    Returns:
        ``(offsets, spatial, bilateral)``: ``spatial[k]`` and ``bilateral[k]`` are ``(B, H, W, 1)`` weights of the
        neighbour at ``offsets[k]``, zero outside the image, and each list sums to one over ``k`` at every pixel.
    """
    import tensorflow as tf

    offsets = neighbour_offsets(window, dilation)
    features = image / theta_beta
    # Neighbours outside the image: shifting a ones map pads them with zeros. A runtime tensor, not a constant,
    # so the converter does not fold the masks into the flatbuffer.
    valid = list(_shifts(tf.ones_like(features[..., :1]), offsets))
    spatial, bilateral = [], []
    for (dy, dx), inside, neighbour in zip(offsets, valid, _shifts(features, offsets)):
        dist2 = float((dy * dy + dx * dx) * spacing * spacing)
        spatial.append(inside * float(np.exp(-dist2 / (2.0 * theta_gamma**2))))
        colour2 = tf.reduce_sum(tf.square(features - neighbour), axis=-1, keepdims=True)
        bilateral.append(inside * tf.exp(-0.5 * colour2 - dist2 / (2.0 * theta_alpha**2)))
    return offsets, _normalise(spatial), _normalise(bilateral)


def _normalise(weights):
    import tensorflow as tf

    # the floor only matters where every neighbour's weight underflowed (the message is then zero)
    total = tf.maximum(tf.add_n(weights), 1e-30)
    return [w / total for w in weights]


def messages(q, offsets, spatial, bilateral):
    """Spatial and bilateral messages ``(m_s, m_b)``: the kernel-weighted mean of the neighbours' ``q``."""
    m_s = m_b = 0.0
    for s, b, neighbour in zip(spatial, bilateral, _shifts(q, offsets)):
        m_s += s * neighbour
        m_b += b * neighbour
    return m_s, m_b


def mean_field(unary, image, spatial_weight, bilateral_weight, compatibility=None, iterations=5, window=7,
               dilation=1, downsample=1, theta_alpha=THETA_ALPHA, theta_beta=THETA_BETA, theta_gamma=THETA_GAMMA,
               compiled=False):
    """Unrolled mean-field inference; returns the refined logits (their softmax is the marginal ``Q``).

    Args:
        unary: ``(B, H, W, C)`` float32 logits (the CRF's unary is ``-unary``, up to a constant).
        image: ``(B, H, W, 3)`` float32 RGB in [0, 255].
        spatial_weight, bilateral_weight: scalars or ``(C,)`` kernel weights.
        compatibility: ``(C, C)`` label compatibility ``mu(l, l')``; ``None`` is Potts (``1 - identity``).
        iterations: mean-field iterations (5 in CRF-as-RNN training).
        window, dilation, downsample: the truncated neighbourhood (see the module docstring); H and W must be
            divisible by ``downsample``.
        theta_alpha, theta_beta, theta_gamma: kernel widths in pixels and RGB units.
        compiled: run each iteration as one cached ``tf.function`` (for eager callers such as the refiner: a
            512x512 image runs about 2x faster than op by op, after a trace of a few seconds per image size).

    Returns:
        ``(B, H, W, C)`` float32 logits.
    """
    import tensorflow as tf

    num_classes = int(unary.shape[-1])
    if compatibility is None:
        compatibility = 1.0 - np.eye(num_classes, dtype=np.float32)
    # mu (w m) as a 1x1 convolution (CONV_2D in TFLite): kernel[k, l] = mu[l, k]
    compat_kernel = tf.reshape(tf.transpose(compatibility), (1, 1, num_classes, num_classes))
    if downsample > 1:
        image = tf.nn.avg_pool2d(image, downsample, downsample, "VALID")
    offsets, spatial, bilateral = pairwise_kernels(image, window, dilation, downsample, theta_alpha, theta_beta,
                                                   theta_gamma)
    step = _compiled_step() if compiled else mean_field_step
    logits = unary
    for _ in range(iterations):
        logits = step(logits, unary, offsets, spatial, bilateral, spatial_weight, bilateral_weight, compat_kernel,
                      downsample)
    return logits


def mean_field_step(logits, unary, offsets, spatial, bilateral, spatial_weight, bilateral_weight, compat_kernel,
                    downsample):
    """One iteration: ``unary - mu (w_s m_s + w_b m_b)`` with the messages of ``softmax(logits)``; the kernels
    come from ``pairwise_kernels`` (on the ``downsample``-times pooled image) and ``compat_kernel`` is ``mu`` as a
    1x1 convolution kernel (``kernel[0, 0, k, l] = mu[l, k]``)."""
    import tensorflow as tf

    q = tf.nn.softmax(logits, axis=-1)
    if downsample > 1:
        q = tf.nn.avg_pool2d(q, downsample, downsample, "VALID")
    m_s, m_b = messages(q, offsets, spatial, bilateral)
    pairwise = spatial_weight * m_s + bilateral_weight * m_b
    if downsample > 1:
        pairwise = tf.image.resize(pairwise, (int(unary.shape[1]), int(unary.shape[2])), method="bilinear")
    return unary - tf.nn.conv2d(pairwise, compat_kernel, 1, "VALID")


@functools.lru_cache(maxsize=None)
def _compiled_step():
    import tensorflow as tf

    return tf.function(mean_field_step)


def check_crf_arguments(iterations, window, dilation, downsample):
    """ValueErrors naming the argument for a bad neighbourhood or iteration count."""
    if not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be a non-negative integer, got {iterations!r}")
    if not isinstance(window, int) or window < 3 or window % 2 == 0:
        raise ValueError(f"window must be an odd integer >= 3 (the neighbourhood side), got {window!r}")
    for arg, value in (("dilation", dilation), ("downsample", downsample)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive integer, got {value!r}")


# The smallest probability the unary sees: log(0) would make a class impossible whatever the image says.
_MIN_PROBABILITY = 1e-6


@register_refiner("crf")
def dense_crf(image, probabilities, iterations=5, spatial_weight=3.0, bilateral_weight=5.0, window=7, dilation=1,
              downsample=1, theta_alpha=THETA_ALPHA, theta_beta=THETA_BETA, theta_gamma=THETA_GAMMA):
    """Refine per-pixel class probabilities with a dense CRF on the image (mean-field inference).

    Args:
        image: ``(H, W, 3)`` uint8 RGB (or float in [0, 255]).
        probabilities: ``(H, W, C)`` float, summing to one per pixel.
        iterations: mean-field iterations.
        spatial_weight, bilateral_weight: Potts weights of the spatial (smoothness) and bilateral (appearance)
            kernels; 0 and 0 return ``probabilities`` unchanged.
        window, dilation, downsample: the truncated neighbourhood (module docstring); H and W must be divisible
            by ``downsample``.
        theta_alpha, theta_beta, theta_gamma: kernel widths in pixels (bilateral, spatial) and RGB units.

    Returns:
        ``(H, W, C)`` float32 probabilities summing to one per pixel.

    Raises:
        ValueError: shapes that do not match, or a bad neighbourhood argument (the message names it).
    """
    import tensorflow as tf

    image, probabilities = np.asarray(image), np.asarray(probabilities, np.float32)
    if probabilities.ndim != 3 or image.shape[:2] != probabilities.shape[:2]:
        raise ValueError(f"expected image (H, W, 3) and probabilities (H, W, C) of the same height and width, got "
                         f"{image.shape} and {probabilities.shape}")
    check_crf_arguments(iterations, window, dilation, downsample)
    if probabilities.shape[0] % downsample or probabilities.shape[1] % downsample:
        raise ValueError(f"downsample={downsample} must divide the image size {probabilities.shape[:2]}")
    unary = tf.constant(np.log(np.maximum(probabilities, _MIN_PROBABILITY))[None])
    # weights as tensors: Python floats would make the compiled step retrace for every new value
    weights = [tf.constant(w, tf.float32) for w in (spatial_weight, bilateral_weight)]
    logits = mean_field(unary, tf.constant(image[None], tf.float32), *weights, None, iterations, window, dilation,
                        downsample, theta_alpha, theta_beta, theta_gamma, compiled=True)
    return tf.nn.softmax(logits, axis=-1).numpy()[0]
