"""MS-SSIM for the zoo's small images: a wrapper around `tf.image.ssim_multiscale`.

The standard MS-SSIM (Wang et al. 2003; TF's defaults) uses 5 scales and an
11x11 Gaussian window (sigma 1.5). Every scale must still be at least as large
as the window, so it needs images of at least 11 * 2^4 = 176 pixels a side;
28x28 MNIST would fail TF's shape assertion at the third scale.

Choice for images smaller than that (the paper does not say what it used):
- a 7x7 window with sigma 1.0 (the standard 11 / 1.5 ratio, scaled down);
- as many scales as keep the coarsest one at least 7 pixels a side, at most 5:
  28x28 and 32x32 -> 3 scales (28-14-7, 32-16-8), 64x64 CelebA -> 4 scales;
- the first k of the standard scale weights (0.0448, 0.2856, 0.3001, 0.2363,
  0.1333), renormalised to sum to 1 (k = 3: 0.0711, 0.4530, 0.4760).

TF clips each scale's contrast-structure term at 0 (relu), so values lie in [0, 1].
Colour images: SSIM is computed per channel and averaged over channels (TF).
"""

import math

import tensorflow as tf

STANDARD_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
STANDARD_FILTER = (11, 1.5)
SMALL_FILTER = (7, 1.0)


def settings(height, width):
    """(power_factors, filter_size, filter_sigma) for images of this size."""
    side = min(int(height), int(width))
    if side >= STANDARD_FILTER[0] * 2 ** (len(STANDARD_WEIGHTS) - 1):
        return STANDARD_WEIGHTS, STANDARD_FILTER[0], STANDARD_FILTER[1]
    filter_size, filter_sigma = SMALL_FILTER
    if side < filter_size:
        raise ValueError(f"MS-SSIM needs images of at least {filter_size}x{filter_size}, got {height}x{width}")
    scales = min(len(STANDARD_WEIGHTS), 1 + int(math.floor(math.log2(side / filter_size))))
    weights = STANDARD_WEIGHTS[:scales]
    total = sum(weights)
    return tuple(w / total for w in weights), filter_size, filter_sigma


def ms_ssim(images_1, images_2, max_val=1.0):
    """Per-image MS-SSIM [batch] of two batches [batch, H, W, C] with values in [0, max_val]."""
    images_1 = tf.convert_to_tensor(images_1, tf.float32)
    images_2 = tf.convert_to_tensor(images_2, tf.float32)
    power_factors, filter_size, filter_sigma = settings(images_1.shape[-3], images_1.shape[-2])
    return tf.image.ssim_multiscale(
        images_1,
        images_2,
        max_val,
        power_factors=power_factors,
        filter_size=filter_size,
        filter_sigma=filter_sigma,
    )


def describe(height, width):
    """The settings as a JSON-able dict, for the report."""
    power_factors, filter_size, filter_sigma = settings(height, width)
    return {
        "scales": len(power_factors),
        "power_factors": [round(w, 4) for w in power_factors],
        "filter_size": filter_size,
        "filter_sigma": filter_sigma,
    }
