"""Shared model machinery: `train_step`, `test_step`, `call` and the hooks.

`ZooModel` owns everything every model needs: the metric trackers, the
distribution-aware training step and the per-step noise seeds. A model says
what it optimises by implementing one hook:

- `BaseVAE` subclasses (VAE, AVAE, SE, ...) override `regularizer`, which adds
  a penalty to the negative ELBO and names the terms it tracks;
- deterministic autoencoders override `compute_losses` directly.

Every model answers the same interface: `posterior(x)` (a TFP distribution over
codes), `decode(z)` (mean images in [0, 1]) and `prior`; evaluation and export
use only these and `call(x)`, the representation.

Hyper-parameters are the fields of one dataclass config per model
(`config_class`, see `zoo.config`): `__init__` builds `self.config` from them,
which validates each value, and `get_config` and the training flags read the
same fields. `check_hyperparameters` holds only checks that involve the
architecture as well.
"""

import dataclasses

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from zoo import maths, networks, rng
from zoo.config import POSITIVE, ModelConfig, setting

tfd = tfp.distributions

LIKELIHOODS = ("gaussian", "bernoulli")
# How the noise of a posterior sample is scaled: by the standard deviation (the reparameterisation of
# N(mu, sigma^2)) or by the variance, as the public AVAE reference code does (z = mu + sigma^2 eps).
POSTERIOR_NOISE = ("std", "variance")
# How a BatchNorm encoder encodes the batches coupled to the data (`ZooModel.encodes_coupled_jointly`).
COUPLED_PASSES = ("joint", "separate")


def images_of(data):
    """The images of a batch: datasets yield `(images, labels)` or bare images."""
    images, _, _ = keras.utils.unpack_x_y_sample_weight(data)
    return images


def num_replicas():
    return tf.distribute.get_strategy().num_replicas_in_sync


class ZooModel(keras.Model):
    """Base of every model: trackers, train/test steps and noise seeds.

    Subclasses implement `compute_losses(x, training)`, returning a dict of
    scalars with the key "loss" (minimised) and one key per name in
    `tracked_terms()`.
    """

    config_class = ModelConfig
    # Names of the scalars `compute_losses` returns besides "loss".
    base_terms = ()
    extra_terms = ()
    # False for models that train from their own samples and read no dataset (AVAE-SS).
    needs_data = True

    def __init__(self, image_shape=(28, 28, 1), arch="mlp", latent_dim=64, seed=0, **kwargs):
        hyperparameters, keras_kwargs = self.config_class.split(kwargs)
        super().__init__(**keras_kwargs)  # name, trainable, dtype
        self.image_shape = tuple(int(d) for d in image_shape)
        self.arch = arch
        self.latent_dim = int(latent_dim)
        self.seed = int(seed)
        self.config = self.config_class(**hyperparameters)
        self.check_hyperparameters()
        self.trackers = {name: keras.metrics.Mean(name=name) for name in self.tracked_terms()}

    @classmethod
    def tracked_terms(cls):
        return ("loss",) + cls.base_terms + cls.extra_terms

    def check_hyperparameters(self):
        """Raises ValueError with one clear sentence for a setting that does not fit the architecture."""

    @property
    def metrics(self):
        return list(self.trackers.values())

    def get_config(self):
        return {
            "name": self.name,
            "image_shape": list(self.image_shape),
            "arch": self.arch,
            "latent_dim": self.latent_dim,
            "seed": self.seed,
            **self.config.to_dict(),
        }

    # The interface evaluation and export use.
    def posterior(self, x, training=False):
        """q(z|x) as a TFP distribution with event shape [latent_dim]."""
        raise NotImplementedError

    def decode(self, z, training=False):
        """Mean image of p(x|z), in [0, 1]."""
        raise NotImplementedError

    @property
    def prior(self):
        """p(z), a TFP distribution with event shape [latent_dim]."""
        raise NotImplementedError

    def encodes_coupled_jointly(self):
        """Whether the data and the batches coupled to it go through one encoder pass: a BatchNorm encoder
        with `coupled_pass` joint (see `BaseVAE.coupled_posteriors`)."""
        return self.encoder_has_batch_norm and self.config.coupled_pass == "joint"

    def training_step(self):
        """The optimizer steps applied so far (restored on resume); 0 before the model is compiled."""
        return self.optimizer.iterations if self.optimizer is not None else tf.constant(0, tf.int64)

    def noise_seed(self, salt):
        """A stateless seed for one random draw of one training step.

        It depends on `--seed`, on `salt` (one per draw inside a step), on the
        step counter (restored on resume, so a resumed run draws what the
        uninterrupted run would have) and on the replica, so that replicas of a
        distributed step draw different noise.
        """
        replica = tf.distribute.get_replica_context()
        replica_id = replica.replica_id_in_sync_group if replica is not None else 0
        step = tf.cast(self.training_step(), tf.int32)
        return tf.stack(
            [tf.constant(self.seed * 1009 + salt, tf.int32), step * num_replicas() + tf.cast(replica_id, tf.int32)]
        )

    def compute_losses(self, x, training):
        raise NotImplementedError

    def train_step(self, data):
        x = images_of(data)
        with tf.GradientTape() as tape:
            terms = self.compute_losses(x, training=True)
            # Gradients are summed over replicas, so each replica contributes
            # its share of the global-batch mean.
            loss = terms["loss"] / num_replicas()
            if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
                loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        return self.update_trackers(terms)

    def test_step(self, data):
        x = images_of(data)
        # Each batch weighs by its examples, so a short last batch counts for what it holds, and an empty
        # one (a worker out of validation data under MultiWorkerMirroredStrategy, kept in step with the
        # others) for nothing: its means are 0 / 0.
        examples = tf.cast(tf.shape(x)[0], tf.float32)
        return self.update_trackers(self.compute_losses(x, training=False), weight=examples)

    def update_trackers(self, terms, weight=None):
        for name, tracker in self.trackers.items():
            if weight is None:
                tracker.update_state(terms[name])
            else:
                value = tf.where(weight > 0, terms[name], tf.zeros_like(terms[name]))
                tracker.update_state(value, sample_weight=weight)
        return {name: tracker.result() for name, tracker in self.trackers.items()}


@dataclasses.dataclass
class CoupledConfig(ModelConfig):
    """The setting of every model that couples the data's codes to those of other batches (AVAE delusions, SE
    and SE-AVAE PGD inputs, augmented GMM-DAE adversarial inputs)."""

    # separate: with joint passes the conv AVAE lost its robustness (results/coupled_pass.md).
    coupled_pass: str = setting(
        "separate",
        "With a BatchNorm encoder (conv): encode each batch coupled to the data in its own pass, as the "
        "papers' code does (separate), or together with the data in one pass, with the same batch statistics (joint).",
        choices=COUPLED_PASSES,
    )


@dataclasses.dataclass
class VAEConfig(ModelConfig):
    # obs_var 0.5 is the public AVAE reference implementation's default.
    obs_var: float = setting(
        0.5, "Observation variance of the Gaussian likelihood (the public AVAE code's default: 0.5).", check=POSITIVE
    )
    likelihood: str = setting("gaussian", "Decoder likelihood.", choices=LIKELIHOODS)
    posterior_noise: str = setting(
        "std",
        "Scale of a posterior sample's noise: std (z = mu + sigma eps, the VAE's reparameterisation) or "
        "variance (z = mu + sigma^2 eps, as the public AVAE reference code samples).",
        choices=POSTERIOR_NOISE,
    )


class BaseVAE(ZooModel):
    """Gaussian-posterior VAE; variants override `regularizer`.

    q(z|x) = N(z_mean(x), exp(z_log_var(x))) as a TFP `MultivariateNormalDiag`
    (scaled by the standard deviation), prior p(z) = N(0, I), likelihood
    p(x|z) Gaussian with variance `obs_var` around sigmoid(decoder logits), or
    Bernoulli on the logits. `call(x)` returns the posterior mean: the
    representation downstream tasks use.
    """

    config_class = VAEConfig
    base_terms = ("log_likelihood", "kl", "elbo")

    def __init__(self, image_shape=(28, 28, 1), arch="mlp", latent_dim=64, seed=0, **kwargs):
        super().__init__(image_shape=image_shape, arch=arch, latent_dim=latent_dim, seed=seed, **kwargs)
        self.encoder = networks.build_encoder(arch, self.image_shape, self.latent_dim)
        self.decoder = networks.build_decoder(arch, self.latent_dim, self.image_shape)
        self.built = True  # the functional networks own every weight already
        self.encoder_has_batch_norm = networks.has_batch_norm(self.encoder)

    @property
    def prior(self):
        return tfd.MultivariateNormalDiag(loc=tf.zeros([self.latent_dim]))

    def posterior(self, x, training=False):
        z_mean, z_log_var = self.encoder(x, training=training)
        return tfd.MultivariateNormalDiag(loc=z_mean, scale_diag=tf.exp(0.5 * z_log_var))

    def coupled_posteriors(self, x, posterior, auxiliaries, training):
        """(posterior of the data x, [posterior of each auxiliary batch]) for the couplings (AVAE, SE).

        An encoder with BatchNorm in training mode normalises each pass with its own batch's statistics.
        By default (`coupled_pass` separate, as the papers' code does) each auxiliary batch (delusions, PGD
        inputs) has its own pass and the data's `posterior` is reused. A shift shared by the whole auxiliary
        batch then vanishes from its codes, which the coupling cannot penalise. `coupled_pass` joint
        encodes the data and the auxiliaries in one pass over their concatenation instead, so every coupled
        code is the same function of its input. Measured on the conv AVAE, joint passes cost the encoder
        its robustness (results/coupled_pass.md), so they are not the default. Without BatchNorm the two
        are the same.
        """
        if not self.encodes_coupled_jointly():
            return posterior, [self.posterior(a, training=training) for a in auxiliaries]
        means, log_vars = encode_together(self.encoder, [x, *auxiliaries], training)
        posteriors = [tfd.MultivariateNormalDiag(loc=m, scale_diag=tf.exp(0.5 * v)) for m, v in zip(means, log_vars)]
        return posteriors[0], posteriors[1:]

    def decode(self, z, training=False):
        """Mean image of p(x|z), in [0, 1]."""
        return tf.sigmoid(self.decoder(z, training=training))

    def call(self, x, training=False):
        return self.encoder(x, training=training)[0]

    def log_likelihood(self, x, logits):
        if self.config.likelihood == "bernoulli":
            return maths.bernoulli_log_likelihood(x, logits)
        return maths.gaussian_log_likelihood(x, tf.sigmoid(logits), self.config.obs_var)

    def sample_likelihood(self, mean, seed):
        """A sample of p(x|z) given its mean image: mean + sqrt(obs_var) noise (Gaussian), or 0/1 pixels (Bernoulli)."""
        if self.config.likelihood == "bernoulli":
            return tf.cast(rng.uniform(tf.shape(mean), seed, dtype=mean.dtype) < mean, mean.dtype)
        noise = rng.normal(tf.shape(mean), seed, dtype=mean.dtype)
        return mean + tf.sqrt(tf.cast(self.config.obs_var, mean.dtype)) * noise

    def sample_posterior(self, posterior, seed):
        """A training sample z ~ q(z|x), its noise scaled as `posterior_noise` says."""
        # The noise is drawn here rather than by `posterior.sample`: TFP's sampler divides by the batch size,
        # and an empty batch (a worker out of validation data under MultiWorkerMirroredStrategy) must work.
        noise = rng.normal(tf.shape(posterior.mean()), seed, dtype=posterior.mean().dtype)
        scale = posterior.stddev() if self.config.posterior_noise == "std" else posterior.variance()
        return posterior.mean() + scale * noise

    def compute_losses(self, x, training):
        posterior = self.posterior(x, training=training)
        z = self.sample_posterior(posterior, self.noise_seed(0))
        logits = self.decoder(z, training=training)
        log_likelihood = tf.reduce_mean(self.log_likelihood(x, logits))
        kl = tf.reduce_mean(maths.gaussian_kl(posterior.mean(), posterior.variance()))
        penalty, extra = self.regularizer(x, posterior, z, tf.sigmoid(logits), training)
        elbo = log_likelihood - kl
        return {"loss": penalty - elbo, "log_likelihood": log_likelihood, "kl": kl, "elbo": elbo, **extra}

    def regularizer(self, x, posterior, z, reconstruction, training):
        """Returns (penalty added to -ELBO, {name: tracked scalar}).

        `z` is the posterior sample of this step and `reconstruction` its
        decoded mean image, so variants reuse them instead of decoding again.
        The plain VAE adds nothing.
        """
        return tf.constant(0.0), {}


def encode_together(encoder, batches, training):
    """The encoder's outputs for each of `batches`, from one pass over their concatenation.

    With BatchNorm in training mode, one pass normalises every batch with the same statistics; each output
    of the encoder comes back as a list with one tensor per batch.
    """
    outputs = encoder(tf.concat(batches, axis=0), training=training)
    sizes = [tf.shape(b)[0] for b in batches]
    return tf.nest.map_structure(lambda t: tf.split(t, sizes), outputs)


class BaseDAE(ZooModel):
    """Deterministic autoencoder; variants implement `compute_losses`.

    The code z = E(x) is the z_mean output of the `--arch` encoder (its z_log_var head is left out,
    so it has no weights here); the decoder's mean image is sigmoid(logits). `call(x)` returns the
    code, and `posterior(x)` is a point mass at it (mean: the code, stddev: zeros), so evaluation and
    export treat a deterministic model like a VAE's posterior mean.
    """

    base_terms = ("reconstruction",)

    def __init__(self, image_shape=(28, 28, 1), arch="mlp", latent_dim=64, seed=0, **kwargs):
        super().__init__(image_shape=image_shape, arch=arch, latent_dim=latent_dim, seed=seed, **kwargs)
        encoder = networks.build_encoder(arch, self.image_shape, self.latent_dim)
        self.encoder = keras.Model(encoder.input, encoder.outputs[0], name="encoder")
        self.decoder = networks.build_decoder(arch, self.latent_dim, self.image_shape)
        self.built = True
        self.encoder_has_batch_norm = networks.has_batch_norm(self.encoder)

    def coupled_codes(self, x, z, auxiliaries, training):
        """(codes of x, [codes of each auxiliary batch]): `BaseVAE.coupled_posteriors` for point codes."""
        if not self.encodes_coupled_jointly():
            return z, [self.encoder(a, training=training) for a in auxiliaries]
        codes = encode_together(self.encoder, [x, *auxiliaries], training)
        return codes[0], codes[1:]

    def posterior(self, x, training=False):
        return tfd.Independent(tfd.Deterministic(loc=self.encoder(x, training=training)), reinterpreted_batch_ndims=1)

    def decode(self, z, training=False):
        """Mean image in [0, 1]."""
        return tf.sigmoid(self.decoder(z, training=training))

    def call(self, x, training=False):
        return self.encoder(x, training=training)

    def reconstruction_error(self, x, z, training=False):
        """Squared error of decode(z) against x, summed over pixels, averaged over the batch."""
        error = tf.square(x - self.decode(z, training=training))
        return tf.reduce_mean(tf.reduce_sum(tf.reshape(error, [tf.shape(x)[0], -1]), axis=-1))
