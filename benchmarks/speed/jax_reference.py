"""An equivalent JAX/Haiku MLP VAE and AVAE, timed beside the project's as a reference (`pip install -e '.[jax]'`)."""

import importlib.util
import time

import numpy as np

import zoo
from benchmarks.speed.runners import Runner

JAX_LABEL = " (JAX/Haiku)"


class JaxReference(Runner):
    """The AVAE (or, with `coupling=False`, the VAE) of zoo/models/avae.py in JAX/Haiku/optax, mlp only.

    Same networks (4 x 200 ReLU encoder with mean and log-variance heads, 4 x 200 ReLU decoder to logits),
    Gaussian likelihood with the model's obs_var around sigmoid(logits), z = mu + sigma eps, the closed-form
    coupling <log p_rho(z'|z)> and H[q(z'|x~)] of the delusion x~ drawn as the AVAE's default `delusion` says
    (a sample sigmoid(decoder(z)) + sqrt(obs_var) eps', or the mean image), gradient stopped; Adam; one
    `jax.jit` update per step on batches of the same pipeline, timed like `StepTimer`.
    """

    def __init__(self, label, coupling, image_shape, dataset, flops, latent_dim):
        import haiku as hk
        import jax
        import jax.numpy as jnp
        import optax

        super().__init__()
        self.label, self.arch, self.precision, self.xla = label + JAX_LABEL, "mlp", "float32", "jax.jit"
        self.flops = flops  # the same matmuls as the project's model
        config = zoo.get_model_class("avae").config_class()
        if config.posterior_noise != "std" or config.likelihood != "gaussian":
            raise ValueError("the JAX reference implements the AVAE's Gaussian likelihood and std posterior noise")
        rho, obs_var = config.rho, config.obs_var
        sampled_delusion = config.delusion == "sample"
        pixels = int(np.prod(image_shape))
        log_2pi = float(np.log(2.0 * np.pi))

        def loss(x, key):
            trunk = hk.nets.MLP([200] * 4, activate_final=True, name="encoder")
            heads = hk.Linear(latent_dim, name="z_mean"), hk.Linear(latent_dim, name="z_log_var")

            def encode(images):  # the same module instances, so both calls share the encoder's weights
                h = trunk(hk.Flatten()(images))
                return heads[0](h), heads[1](h)

            mean, log_var = encode(x)
            var = jnp.exp(log_var)
            posterior_key, delusion_key = jax.random.split(key)
            z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(posterior_key, mean.shape)
            logits = hk.nets.MLP([200] * 4 + [pixels], name="decoder")(z).reshape(x.shape)
            reconstruction = jax.nn.sigmoid(logits)
            log_likelihood = jnp.sum(
                -0.5 * (log_2pi + np.log(obs_var) + (x - reconstruction) ** 2 / obs_var), axis=(1, 2, 3)
            )
            kl = 0.5 * jnp.sum(var + mean**2 - 1.0 - log_var, axis=-1)
            objective = log_likelihood - kl
            if coupling:
                delusion = reconstruction
                if sampled_delusion:
                    delusion = delusion + np.sqrt(obs_var) * jax.random.normal(delusion_key, x.shape)
                d_mean, d_log_var = encode(jax.lax.stop_gradient(delusion))
                cond_var = 1.0 - rho**2
                square = jnp.exp(d_log_var) + d_mean**2 - 2.0 * rho * mean * d_mean + rho**2 * (var + mean**2)
                objective += jnp.sum(-0.5 * (log_2pi + np.log(cond_var)) - 0.5 * square / cond_var, axis=-1)
                objective += jnp.sum(0.5 * (log_2pi + 1.0 + d_log_var), axis=-1)
            return -jnp.mean(objective)

        network = hk.without_apply_rng(hk.transform(loss))
        optimizer = optax.adam(1e-4)  # build_model's default, which the project's runners use
        base_key = jax.random.PRNGKey(0)

        @jax.jit
        def update(params, opt_state, x, step):
            value, grads = jax.value_and_grad(network.apply)(params, x, jax.random.fold_in(base_key, step))
            updates, opt_state = optimizer.update(grads, opt_state)
            return optax.apply_updates(params, updates), opt_state, value

        self._iterator = dataset.map(lambda images, labels: images).as_numpy_iterator()
        x = next(self._iterator)
        self._params = network.init(jax.random.PRNGKey(1), x, base_key)
        self._opt_state = optimizer.init(self._params)
        self._update, self._step = update, 0

    def run(self, steps):
        seconds = []
        for _ in range(max(1, steps)):
            start = time.perf_counter()
            x = next(self._iterator)
            self._params, self._opt_state, value = self._update(self._params, self._opt_state, x, self._step)
            value.block_until_ready()
            seconds.append(time.perf_counter() - start)
            self._step += 1
        return seconds[1:] or seconds  # as `KerasRunner.run` (the first call compiles)


def jax_missing():
    """Why the JAX reference cannot run here, or None."""
    missing = [name for name in ("jax", "haiku", "optax") if importlib.util.find_spec(name) is None]
    return f"skipped: {', '.join(missing)} not installed (pip install -e '.[jax]')" if missing else None
