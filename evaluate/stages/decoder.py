"""Decoder quality: test MSE, FID of prior samples and of reconstructions (`evaluate.fid`)."""

import dataclasses
from typing import Optional

import numpy as np
import tensorflow as tf

from evaluate import fid
from evaluate.stage_base import EvaluationError, Stage, batches
from zoo.config import AT_LEAST_ONE, setting


@dataclasses.dataclass(frozen=True)
class Decoder(Stage):
    name = "decoder"
    results = ("mse", "fid", "fid_reconstructions", "fid_features")

    fid_features: str = setting("auto", "FID feature extractor.", choices=fid.FEATURE_KINDS)
    fid_cache_dir: Optional[str] = setting(
        None, "Cache of FID classifiers; default ~/.cache/robust_zoo/fid_classifiers."
    )
    fid_classifier_train_examples: int = setting(10000, "Training examples of the FID classifier.", check=AT_LEAST_ONE)
    fid_classifier_epochs: int = setting(3, "Epochs of the FID classifier.", check=AT_LEAST_ONE)

    def run(self, context):
        common, model, images, log = context.common, context.model, context.images, context.log
        try:
            extractor = fid.make_extractor(
                self.fid_features,
                context.dataset,
                context.data_dir,
                self.fid_cache_dir or fid.default_cache_dir(),
                self.fid_classifier_train_examples,
                self.fid_classifier_epochs,
                common.seed,
                common.download,
                log,
            )
        except ValueError as error:
            raise EvaluationError(str(error)) from None
        encode_decode = tf.function(lambda x: model.decode(model.encode_mean(x)))
        reconstructions = np.concatenate(
            [encode_decode(tf.constant(images[lo:hi])).numpy() for lo, hi in batches(len(images), common.batch_size)]
        )
        squared = np.square(reconstructions.astype(np.float64) - images)
        mse = {
            "per_pixel": float(squared.mean()),
            "per_image_sum": float(squared.reshape(len(images), -1).sum(axis=1).mean()),
            "examples": len(images),
        }
        log(f"[decoder] test MSE per pixel {mse['per_pixel']:.5f}, per image (sum) {mse['per_image_sum']:.2f}")
        fid_reconstructions = fid.fid(extractor, images, reconstructions)
        fid_samples = None
        if model.sample_prior is None:
            log("[decoder] no FID of prior samples: the model does not carry its prior (an exported encoder)")
        else:
            decode = tf.function(model.decode)
            samples = np.concatenate(
                [
                    decode(model.sample_prior(hi - lo, context.seed(77, lo))).numpy()
                    for lo, hi in batches(len(images), common.batch_size)
                ]
            )
            fid_samples = fid.fid(extractor, images, samples)
        log(
            f"[decoder] FID samples {'none' if fid_samples is None else f'{fid_samples:.3f}'}, reconstructions "
            f"{fid_reconstructions:.3f} ({len(images)} images)"
        )
        return {
            "mse": mse,
            "fid": fid_samples,
            "fid_reconstructions": fid_reconstructions,
            "fid_features": dict(extractor.description, examples=len(images)),
        }
