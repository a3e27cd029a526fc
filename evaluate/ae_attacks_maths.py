"""Attacks on the autoencoder itself (robust GMM-DAE paper, section 4, eqs. 12-13, Table 1).

Both are L2 PGD (`zoo.attacks.pgd`) with ||delta||_2 <= lambda, pixels in [0, 1]:

- latent-space attack (eq. 12): min ||z(x + delta) - z(x_t)||_2, x_t an image of
  another class; the reference image is the target, x_r = x_t;
- maximum-damage attack (eq. 13): max ||dec(z(x + delta)) - dec(z(x))||_2; the
  reference image is the input, x_r = x.

z is the encoder mean f_mu. Per attacked example the functions return the
attack loss (the achieved value of the eq. 12 / 13 objective) and, as in
Table 1, MS-SSIM(x_r, x~_a), MS-SSIM(x, x_a) and MS-SSIM(x~_r, x~_a), where
x_a = x + delta, x~_a = dec(z(x_a)) and x~_r = dec(z(x_r)).

The maths only (no settings, data loading or reports): the `ae_attacks` stage (`evaluate.stages.ae_attacks`) runs
it over the test set.
"""

import tensorflow as tf

from evaluate import msssim
from evaluate.tensors import l2_distance
from zoo import attacks

ATTACKS = ("latent", "max_damage")
METRICS = ("loss", "ms_ssim_ref_vs_adv_recon", "ms_ssim_input_vs_adv_input", "ms_ssim_ref_recon_vs_adv_recon")
# Per-example classes predicted from the clean and the attacked code, when a classifier is given.
PREDICTIONS = ("clean_prediction", "adversarial_prediction")


def make_attack(kind, encode_mean, decode, steps, restarts, classify=None):
    """A tf.function (x, x_target, lam, seed) -> {metric: [batch]} for `kind` in ATTACKS.

    `x_target` is ignored by the maximum-damage attack. With `classify` (codes -> logits), the result also
    holds the PREDICTIONS of a downstream classifier on the clean and the attacked codes.
    """
    if kind not in ATTACKS:
        raise ValueError(f"unknown autoencoder attack {kind!r}; choose one of: {', '.join(ATTACKS)}")

    @tf.function(reduce_retracing=True)
    def run(x, x_target, lam, seed):
        if kind == "latent":
            z_target = tf.stop_gradient(encode_mean(x_target))
            reference = x_target

            def objective(x_adv):
                return -l2_distance(encode_mean(x_adv), z_target)

        else:
            clean_reconstruction = tf.stop_gradient(decode(encode_mean(x)))
            reference = x

            def objective(x_adv):
                return l2_distance(decode(encode_mean(x_adv)), clean_reconstruction)

        x_adv = attacks.pgd(objective, x, lam, steps, norm="l2", restarts=restarts, random_start=True, seed=seed)
        z_adv = encode_mean(x_adv)
        adv_reconstruction = decode(z_adv)
        reference_reconstruction = decode(encode_mean(reference))
        if kind == "latent":
            loss = l2_distance(z_adv, encode_mean(x_target))
        else:
            loss = l2_distance(adv_reconstruction, reference_reconstruction)
        predictions = {}
        if classify is not None:
            predictions = {
                "clean_prediction": tf.argmax(classify(encode_mean(x)), axis=-1, output_type=tf.int32),
                "adversarial_prediction": tf.argmax(classify(z_adv), axis=-1, output_type=tf.int32),
            }
        return {
            **predictions,
            "loss": loss,
            "ms_ssim_ref_vs_adv_recon": msssim.ms_ssim(reference, adv_reconstruction),
            "ms_ssim_input_vs_adv_input": msssim.ms_ssim(x, x_adv),
            "ms_ssim_ref_recon_vs_adv_recon": msssim.ms_ssim(reference_reconstruction, adv_reconstruction),
            "perturbation_l2": l2_distance(x_adv, x),
        }

    return run
