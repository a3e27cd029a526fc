"""SE, the Smooth Encoder: Algorithm 2 and eqs. (25)-(32) of Cemgil et al., NeurIPS 2020 (appendix C.2-C.3).

Selection (eqs. 25-27): x~ = stop_gradient(PGD(x)), an L-inf PGD attack of radius `se_epsilon` and
`pgd_steps` steps that maximises the change of representation under the current (eval-mode) encoder,

    -<log p_rho(z'|z)>_{q(z|x) q(z'|x~)} - H[q(z'|x~)].

Two settings make the selection cheaper or gentler, as adversarial training does for classifiers:
`selection_step_scale` sets the step (scale x se_epsilon / pgd_steps), so one step of 1.25 x se_epsilon from
the random start is the single-step selection of "fast" adversarial training (Wong et al., ICLR 2020); and
`se_epsilon_ramp_steps` grows the radius linearly from 0 to se_epsilon over the first training steps.

Maximisation (eq. 32), with the tighter pairwise bound of appendix C.3.1: z and z' are jointly Gaussian
with the encoder's marginals q(z|x), q(z'|x~) and per-dimension cross-covariance
psi_i = (sqrt(1 + 4 gamma^2 s_i s~_i) - 1) / (2 gamma), gamma = rho / (1 - rho^2). The bound is

    <log p(x|z)> + <log p(z)> + <log p_rho(z'|z)>_q~ + H[q~(z, z')],

i.e. the ELBO plus <log p_rho(z'|z)>_q~ + H[q~(z, z')] - H[q(z|x)]: the coupling expectation (31) with
cross-covariance psi and the joint entropy, less the entropy the ELBO already holds. As x~ is stopped,
the extra terms train the encoder only, never the decoder.
"""

import dataclasses

import tensorflow as tf

from zoo import attacks, base, maths, registry
from zoo.config import AT_LEAST_ONE, COUPLING, NON_NEGATIVE, POSITIVE, setting

_SELECTION_SALT = 1  # noise_seed salt of the PGD random start (0 is the posterior sample)


@dataclasses.dataclass
class SelectionConfig(base.CoupledConfig):
    """Hyper-parameters of the PGD selection step, shared with SE-AVAE."""

    se_epsilon: float = setting(
        0.1, "L-inf radius of the PGD selection (the paper's SE_0.1, SE_0.2).", check=NON_NEGATIVE
    )
    pgd_steps: int = setting(5, "PGD steps of the selection (the paper's SE^5, SE^20).", check=AT_LEAST_ONE)
    selection_step_scale: float = setting(
        2.5,
        "PGD step size of the selection, as a multiple of se_epsilon / pgd_steps (2.5, as Madry et al.; 1.25 "
        "with pgd_steps 1 is fast adversarial training's single step from a random start).",
        check=POSITIVE,
    )
    se_epsilon_ramp_steps: int = setting(
        0,
        "Training steps over which the selection radius grows linearly from 0 to se_epsilon (0: full radius from "
        "the start).",
        check=NON_NEGATIVE,
    )


@dataclasses.dataclass
class SEConfig(base.VAEConfig, SelectionConfig):
    # rho 0.95 is the paper's rho_SE; SE^5 (5 PGD steps) at radius 0.1 is its SE_0.1 on CelebA.
    rho: float = setting(0.95, "Coupling strength between a code and its PGD-selected input's code.", check=COUPLING)


def selection_radius(config, step):
    """The selection radius at training step `step`: se_epsilon, reached linearly over se_epsilon_ramp_steps."""
    epsilon = tf.constant(config.se_epsilon, tf.float32)
    if not config.se_epsilon_ramp_steps:
        return epsilon
    progress = tf.cast(step, tf.float32) / float(config.se_epsilon_ramp_steps)
    return epsilon * tf.minimum(1.0, progress)


def select(model, x, rho):
    """x~ = stop_gradient(PGD(x)) maximising eqs. (25)-(26) under `model`'s eval-mode encoder.

    The objective per example is -<log p_rho(z'|z)> - H[q(z'|x~)] for the factorised pair
    q(z|x) q(z'|x~); H[q(z|x)] of eq. (26) does not depend on x~ and is left out.
    """
    reference = model.posterior(x, training=False)
    z_mean, z_var = reference.mean(), reference.variance()

    def change_of_representation(x_adv):
        adversarial = model.posterior(x_adv, training=False)
        z_prime_var = adversarial.variance()
        coupling = maths.coupling_log_prob(z_mean, z_var, adversarial.mean(), z_prime_var, rho)
        return -coupling - maths.gaussian_entropy(z_prime_var)

    config = model.config
    epsilon = selection_radius(config, model.training_step())
    return attacks.pgd(
        change_of_representation,
        x,
        epsilon,
        config.pgd_steps,
        step_size=config.selection_step_scale * epsilon / config.pgd_steps,
        seed=model.noise_seed(_SELECTION_SALT),
    )


@registry.register("se")
class SE(base.BaseVAE):
    config_class = SEConfig
    extra_terms = ("coupling_log_prob", "joint_entropy")

    def regularizer(self, x, posterior, z, reconstruction, training):
        rho = self.config.rho
        posterior, (adversarial,) = self.coupled_posteriors(x, posterior, [select(self, x, rho)], training)
        z_var, z_prime_var = posterior.variance(), adversarial.variance()
        psi = maths.coupling_cross_cov(z_var, z_prime_var, rho)
        coupling = tf.reduce_mean(
            maths.coupling_log_prob(posterior.mean(), z_var, adversarial.mean(), z_prime_var, rho, psi)
        )
        joint_entropy = tf.reduce_mean(maths.joint_gaussian_entropy(z_var, z_prime_var, psi))
        entropy = tf.reduce_mean(maths.gaussian_entropy(z_var))
        return -(coupling + joint_entropy - entropy), {"coupling_log_prob": coupling, "joint_entropy": joint_entropy}
