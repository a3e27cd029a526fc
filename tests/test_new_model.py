"""A new model is one file in zoo/models/ and nothing else: it is then trained, evaluated and exported."""

import importlib
import os
import sys

import numpy as np
import pytest
from absl import flags

import evaluate
import export
import train
import zoo
from evaluate import stages
from evaluate.stage_base import Common
from train import cli
from zoo import models, registry

# The file a user would add as zoo/models/half_kl_vae.py: a config field and one `regularizer`.
NEW_MODEL_FILE = """
import dataclasses

import tensorflow as tf

from zoo import base, maths, registry
from zoo.config import NON_NEGATIVE, setting


@dataclasses.dataclass
class HalfKLVAEConfig(base.VAEConfig):
    kl_weight: float = setting(0.5, "Weight of the KL term.", check=NON_NEGATIVE)


@registry.register("half_kl_vae")
class HalfKLVAE(base.BaseVAE):
    config_class = HalfKLVAEConfig

    def regularizer(self, x, posterior, z, reconstruction, training):
        kl = tf.reduce_mean(maths.gaussian_kl(posterior.mean(), posterior.variance()))
        return (self.config.kl_weight - 1.0) * kl, {}
"""


@pytest.fixture
def new_model(tmp_path, monkeypatch):
    """zoo/models/ as if it held the new file (the directory is extended, the source tree is not written)."""
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    (models_dir / "half_kl_vae.py").write_text(NEW_MODEL_FILE)
    monkeypatch.setattr(models, "__path__", [*models.__path__, str(models_dir)])
    importlib.invalidate_caches()
    yield "half_kl_vae"
    registry.MODELS.pop("half_kl_vae", None)
    sys.modules.pop("zoo.models.half_kl_vae", None)


def test_a_new_model_file_is_trained_evaluated_and_exported(new_model, tmp_path):
    assert zoo.get_model_class(new_model).registry_name == new_model
    values = flags.FlagValues()
    cli.define_flags(zoo.get_model_class(new_model).config_class, "test", flag_values=values)
    assert values["kl_weight"].default == 0.5 and values["kl_weight"].help == "Weight of the KL term."
    with pytest.raises(ValueError, match="kl_weight must be non-negative"):
        zoo.get_model_class(new_model)(image_shape=(28, 28, 3), kl_weight=-1.0)

    model_dir = str(tmp_path / "trained")
    result = train.run(
        new_model, model_dir, train_steps=2, latent_dim=8, kl_weight=0.25, eval_examples=0, summary=False, verbose=0
    )
    loaded = zoo.load(model_dir)
    assert type(loaded).__name__ == "HalfKLVAE" and loaded.config.kl_weight == 0.25
    np.testing.assert_array_equal(loaded.get_weights()[0], result.model.get_weights()[0])

    (evaluated,) = evaluate.run(
        [model_dir],
        str(tmp_path / "evaluation"),
        common=Common(num_examples=4, batch_size=4),
        stages=stages.build(["chains"], chain_steps=2, chain_examples=2),
    )
    assert evaluated["model"] == new_model and np.isfinite(evaluated["chain_drift"]["final"])

    version_path = export.run(model_dir, str(tmp_path / "export"), new_model)
    assert os.path.exists(os.path.join(version_path, "saved_model.pb"))
