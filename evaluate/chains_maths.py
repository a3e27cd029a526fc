"""Encode-decode chains (AVAE paper, Figure 1).

x_0 = x, z_k = f_mu(x_k), x_{k+1} = dec(z_k): the chain uses the encoder mean
and the decoder mean (no sampling), so it is deterministic and its drift
measures only the encoder-decoder inconsistency. The drift after k steps is
mean_x ||z_k - z_0||_2.

The maths only (no settings, data loading or reports): the `chains` stage (`evaluate.stages.chains`) runs
it over the test set.
"""

import numpy as np
import tensorflow as tf


def encode_decode_chain(encode_mean, decode, x, steps):
    """Returns (images [steps + 1, batch, ...], latents [steps + 1, batch, latent]) as numpy.

    images[0] is x itself; images[k] is the k-th decoded image; latents[k] = f_mu(images[k]).
    """
    images = [np.asarray(x)]
    latents = []
    current = tf.convert_to_tensor(x)
    for _ in range(steps):
        z = encode_mean(current)
        latents.append(z.numpy())
        current = decode(z)
        images.append(current.numpy())
    latents.append(encode_mean(current).numpy())
    return np.stack(images), np.stack(latents)


def drift(latents):
    """mean_x ||z_k - z_0||_2 for every k (a list of length steps + 1, starting at 0)."""
    distances = np.linalg.norm(latents - latents[:1], axis=-1)  # [steps + 1, batch]
    return [float(d) for d in distances.mean(axis=1)]
